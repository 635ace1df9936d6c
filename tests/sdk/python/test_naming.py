"""Conformance tests: official nacos-sdk-python 3.x (v2.nacos, gRPC naming) against the server.

Each test uses its own service name, so tests are independent of each other and of
leftovers from earlier runs.
"""
import asyncio

from v2.nacos import (
    BatchRegisterInstanceParam,
    DeregisterInstanceParam,
    GetServiceParam,
    ListInstanceParam,
    ListServiceParam,
    RegisterInstanceParam,
    SubscribeServiceParam,
)

from conftest import (
    DISCONNECT_TIMEOUT,
    PUSH_TIMEOUT,
    addrs,
    async_test,
    close_clients,
    new_client,
    query_direct,
    rnacos_deviation,
    unique_service,
    wait_until,
)

GROUP = "DEFAULT_GROUP"


_close = close_clients


@async_test
async def test_connect_and_server_health():
    c = await new_client()
    try:
        assert await c.server_health() is True
    finally:
        await _close(c)


@async_test
async def test_register_one_instance_visible_to_other_client():
    svc = unique_service("reg")
    a, b = await new_client("reg-a"), await new_client("reg-b")
    try:
        ok = await a.register_instance(
            RegisterInstanceParam(service_name=svc, group_name=GROUP, ip="10.1.0.1", port=8080,
                                  weight=2.5, metadata={"zone": "z1", "version": "v1"})
        )
        assert ok is True

        async def got():
            s = await b.get_service(GetServiceParam(service_name=svc, group_name=GROUP))
            return s if s.hosts else None

        info = await wait_until(got, PUSH_TIMEOUT, what="instance visible via get_service (subscribe)")
        assert info.name == svc, f"gRPC ServiceInfo.name must be the bare service name, got {info.name!r}"
        assert info.groupName == GROUP
        assert len(info.hosts) == 1
        h = info.hosts[0]
        assert (h.ip, h.port) == ("10.1.0.1", 8080)
        assert h.weight == 2.5
        assert h.healthy is True and h.enabled is True and h.ephemeral is True
        assert h.clusterName == "DEFAULT"
        assert h.metadata.get("zone") == "z1" and h.metadata.get("version") == "v1"
        assert info.lastRefTime > 0

        # list_instances goes through SubscribeServiceRequest.
        insts = await b.list_instances(ListInstanceParam(service_name=svc, group_name=GROUP, healthy_only=None))
        assert addrs(insts) == [("10.1.0.1", 8080)]
    finally:
        await _close(a, b)


async def _nonempty(coro):
    info = await coro
    return info if info is not None and info.hosts else None


async def hosts_via(client, svc, group=GROUP):
    """Instances as seen by `client` through the SDK's subscribe path.

    The first call sends SubscribeServiceRequest; later calls read the SDK cache, which the
    server keeps current with NotifySubscriberRequest pushes."""
    return await client.list_instances(ListInstanceParam(service_name=svc, group_name=group, healthy_only=None))


async def fresh_hosts(svc, group=GROUP):
    """Instances as seen by a brand-new client (fresh SubscribeServiceRequest, no cache)."""
    c = await new_client("fresh")
    try:
        return await hosts_via(c, svc, group)
    finally:
        await _close(c)


async def _len_is(coro, n):
    v = await coro
    return v if len(v) == n else None


@rnacos_deviation("QueryServiceResponse carries \"message\": null, which the SDK's pydantic model rejects")
@async_test
async def test_service_query_request():
    """ServiceQueryRequest (used by the SDK's cache updater) answers with the bare name."""
    svc = unique_service("query")
    a = await new_client()
    try:
        await a.batch_register_instances(BatchRegisterInstanceParam(service_name=svc, instances=[
            RegisterInstanceParam(service_name=svc, ip="10.9.0.1", port=1, healthy=True),
            RegisterInstanceParam(service_name=svc, ip="10.9.0.2", port=2, healthy=False),
        ]))
        info = await wait_until(lambda: _nonempty(query_direct(a, svc)), PUSH_TIMEOUT, what="ServiceQuery result")
        assert info.name == svc and info.groupName == GROUP
        assert addrs(info.hosts) == [("10.9.0.1", 1), ("10.9.0.2", 2)]
        assert info.lastRefTime > 0 and info.cacheMillis > 0
        # nacos-sdk-python sends the flag misspelt as "healthOnly", so a Nacos server sees
        # healthyOnly=false; accept both lists, but never a wrong one.
        h = await query_direct(a, svc, healthy_only=True)
        assert addrs(h.hosts) in ([("10.9.0.1", 1)], [("10.9.0.1", 1), ("10.9.0.2", 2)])
    finally:
        await _close(a)


@rnacos_deviation("instanceId format differs from Nacos' ip#port#cluster#group@@service")
@async_test
async def test_default_instance_id_format():
    svc = unique_service("iid")
    a = await new_client()
    try:
        await a.register_instance(RegisterInstanceParam(service_name=svc, ip="10.1.0.9", port=9000))
        hosts = await wait_until(lambda: hosts_via(a, svc), PUSH_TIMEOUT, what="instance")
        assert hosts[0].instanceId == f"10.1.0.9#9000#DEFAULT#{GROUP}@@{svc}"
    finally:
        await _close(a)


@async_test
async def test_batch_register():
    svc = unique_service("batch")
    a, b = await new_client("batch-a"), await new_client("batch-b")
    try:
        three = [RegisterInstanceParam(service_name=svc, ip=f"10.2.0.{i}", port=7000 + i,
                                       metadata={"idx": str(i)}) for i in (1, 2, 3)]
        assert await a.batch_register_instances(
            BatchRegisterInstanceParam(service_name=svc, group_name=GROUP, instances=three)) is True
        hosts = await wait_until(lambda: _len_is(hosts_via(b, svc), 3), PUSH_TIMEOUT, what="batch instances")
        assert addrs(hosts) == [("10.2.0.1", 7001), ("10.2.0.2", 7002), ("10.2.0.3", 7003)]
        # Batch instances are sent with clusterName "": they must come back in the DEFAULT cluster.
        assert {h.clusterName for h in hosts} == {"DEFAULT"}
        assert {h.metadata.get("idx") for h in hosts} == {"1", "2", "3"}
    finally:
        await _close(a, b)


@rnacos_deviation("a second batch register adds to the first instead of replacing it")
@async_test
async def test_batch_register_replaces_previous_batch():
    """Nacos keeps one publish per (connection, service): a new batch replaces the old one.
    nacos-sdk-python's batch_deregister_instances relies on this (it re-sends the remainder)."""
    svc = unique_service("batchrep")
    a, b = await new_client("batchrep-a"), await new_client("batchrep-b")
    try:
        three = [RegisterInstanceParam(service_name=svc, ip=f"10.2.1.{i}", port=7000 + i) for i in (1, 2, 3)]
        await a.batch_register_instances(BatchRegisterInstanceParam(service_name=svc, instances=three))
        await wait_until(lambda: _len_is(hosts_via(b, svc), 3), PUSH_TIMEOUT, what="batch instances")
        assert await a.batch_deregister_instances(BatchRegisterInstanceParam(service_name=svc, instances=[
            RegisterInstanceParam(service_name=svc, ip="10.2.1.3", port=7003)])) is True
        hosts = await wait_until(lambda: _len_is(hosts_via(b, svc), 2), PUSH_TIMEOUT,
                                 what="push of the batch replacement (2 instances)")
        assert addrs(hosts) == [("10.2.1.1", 7001), ("10.2.1.2", 7002)]
        assert addrs(await fresh_hosts(svc)) == [("10.2.1.1", 7001), ("10.2.1.2", 7002)]
    finally:
        await _close(a, b)


@rnacos_deviation("instances registered with healthy=false are not returned at all")
@async_test
async def test_list_healthy_only_and_all():
    svc = unique_service("health")
    a, b = await new_client("h-a"), await new_client("h-b")
    try:
        await a.batch_register_instances(BatchRegisterInstanceParam(service_name=svc, instances=[
            RegisterInstanceParam(service_name=svc, ip="10.3.0.1", port=80, healthy=True),
            RegisterInstanceParam(service_name=svc, ip="10.3.0.2", port=80, healthy=True),
            RegisterInstanceParam(service_name=svc, ip="10.3.0.3", port=80, healthy=False),
        ]))

        hosts = await wait_until(lambda: _len_is(hosts_via(b, svc), 3), PUSH_TIMEOUT, what="3 instances")
        health = {h.ip: h.healthy for h in hosts}
        assert health == {"10.3.0.1": True, "10.3.0.2": True, "10.3.0.3": False}

        all_insts = await b.list_instances(ListInstanceParam(service_name=svc, healthy_only=None))
        assert addrs(all_insts) == [("10.3.0.1", 80), ("10.3.0.2", 80), ("10.3.0.3", 80)]
        healthy = await b.list_instances(ListInstanceParam(service_name=svc, healthy_only=True))
        assert addrs(healthy) == [("10.3.0.1", 80), ("10.3.0.2", 80)]
        unhealthy = await b.list_instances(ListInstanceParam(service_name=svc, healthy_only=False))
        assert addrs(unhealthy) == [("10.3.0.3", 80)]
    finally:
        await _close(a, b)


@async_test
async def test_subscribe_receives_push_on_register_and_deregister():
    svc = unique_service("sub")
    owner, other, watcher = await new_client("sub-owner"), await new_client("sub-other"), await new_client("sub-w")
    seen = []

    async def on_change(instances):
        seen.append(addrs(instances))

    try:
        await owner.register_instance(RegisterInstanceParam(service_name=svc, ip="10.4.0.1", port=1000))
        await watcher.subscribe(SubscribeServiceParam(service_name=svc, group_name=GROUP,
                                                      subscribe_callback=on_change))
        await wait_until(lambda: [("10.4.0.1", 1000)] in seen, PUSH_TIMEOUT,
                         what="initial subscription callback with the first instance")

        # Another client registers: the watcher must get a NotifySubscriberRequest push.
        await other.register_instance(RegisterInstanceParam(service_name=svc, ip="10.4.0.2", port=2000))
        await wait_until(lambda: [("10.4.0.1", 1000), ("10.4.0.2", 2000)] in seen, PUSH_TIMEOUT,
                         what="push after second instance registered")

        # ... and deregisters: push with the remaining instance only.
        assert await other.deregister_instance(
            DeregisterInstanceParam(service_name=svc, group_name=GROUP, ip="10.4.0.2", port=2000)) is True
        n = len(seen)
        await wait_until(lambda: len(seen) > n and seen[-1] == [("10.4.0.1", 1000)], PUSH_TIMEOUT,
                         what="push after deregister")

        # Last instance gone -> empty push (client configured with update_cache_when_empty).
        await owner.deregister_instance(DeregisterInstanceParam(service_name=svc, ip="10.4.0.1", port=1000))
        await wait_until(lambda: seen[-1] == [], PUSH_TIMEOUT, what="empty push after last deregister")
    finally:
        await _close(owner, other, watcher)


@async_test
async def test_deregister_removes_instance():
    svc = unique_service("dereg")
    a, b = await new_client("d-a"), await new_client("d-b")
    try:
        await a.register_instance(RegisterInstanceParam(service_name=svc, ip="10.5.0.1", port=5000))
        await wait_until(lambda: hosts_via(b, svc), PUSH_TIMEOUT, what="instance registered")
        # Deregister with default (empty) cluster name, exactly as the SDK sends it.
        assert await a.deregister_instance(DeregisterInstanceParam(service_name=svc, ip="10.5.0.1", port=5000))

        async def gone():
            return len(await hosts_via(b, svc)) == 0

        await wait_until(gone, PUSH_TIMEOUT, what="empty push after deregister")
        assert await fresh_hosts(svc) == []
    finally:
        await _close(a, b)


@async_test
async def test_shutdown_client_removes_its_instances():
    svc = unique_service("close")
    doomed, survivor, watcher = await new_client("doomed"), await new_client("survivor"), await new_client("w")
    seen = []

    async def on_change(instances):
        seen.append(addrs(instances))

    try:
        await doomed.register_instance(RegisterInstanceParam(service_name=svc, ip="10.6.0.1", port=6001))
        await survivor.register_instance(RegisterInstanceParam(service_name=svc, ip="10.6.0.2", port=6002))
        await watcher.subscribe(SubscribeServiceParam(service_name=svc, subscribe_callback=on_change))
        both = [("10.6.0.1", 6001), ("10.6.0.2", 6002)]
        await wait_until(lambda: both in seen, PUSH_TIMEOUT, what="both instances visible")

        # Close the client without deregistering: the server must drop its instances
        # when the gRPC connection goes away, and push the change.
        await doomed.shutdown()
        await wait_until(lambda: seen[-1] == [("10.6.0.2", 6002)], DISCONNECT_TIMEOUT,
                         what="push without the closed client's instance")

        assert addrs(await fresh_hosts(svc)) == [("10.6.0.2", 6002)]
    finally:
        await _close(survivor, watcher)


@async_test
async def test_service_list():
    svc1, svc2 = unique_service("list1"), unique_service("list2")
    group = "PYGRP_" + svc1[-6:]
    a = await new_client("list")
    try:
        await a.register_instance(RegisterInstanceParam(service_name=svc1, group_name=group, ip="10.7.0.1", port=1))
        await a.register_instance(RegisterInstanceParam(service_name=svc2, group_name=group, ip="10.7.0.2", port=2))

        async def listed():
            sl = await a.list_services(ListServiceParam(group_name=group, page_no=1, page_size=50))
            return sl if sl.count >= 2 else None

        sl = await wait_until(listed, PUSH_TIMEOUT, what="services listed")
        assert sl.count == 2, sl
        # Nacos builds serviceNames with Service.getGroupedServiceName() in the handler,
        # but the bare name is what the Java unit tests assert; accept either form.
        names = {n.split("@@")[-1] for n in sl.services}
        assert names == {svc1, svc2}, sl.services

        # Paging: page size 1 returns one name but the full count.
        p1 = await a.list_services(ListServiceParam(group_name=group, page_no=1, page_size=1))
        assert p1.count == 2 and len(p1.services) == 1
    finally:
        await _close(a)


@async_test
async def test_get_service_uses_bare_name_and_group():
    svc = unique_service("getsvc")
    group = "PYG2"
    a = await new_client()
    try:
        await a.register_instance(RegisterInstanceParam(service_name=svc, group_name=group, ip="10.8.0.1", port=80))

        async def got():
            s = await a.get_service(GetServiceParam(service_name=svc, group_name=group))
            return s if s.hosts else None

        # get_service subscribes; with a grouped 'name' the SDK cache key would be wrong
        # and the subscription would never be filled.
        s = await wait_until(got, PUSH_TIMEOUT, what="get_service result")
        assert s.name == svc and s.groupName == group
        assert addrs(s.hosts) == [("10.8.0.1", 80)]
    finally:
        await _close(a)
