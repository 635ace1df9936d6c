"""The official Python SDK (gRPC) against a 3-node Nacelle cluster.

Writes go through one node, reads and pushes come from the others: what an application sees
when its instances and its consumers are connected to different members. Runs only under
`tests/sdk/run.sh nacelle-cluster`, which starts the cluster and sets NACOS_CLUSTER_HOSTS.
"""
import os

import pytest
from v2.nacos import (
    BatchRegisterInstanceParam,
    DeregisterInstanceParam,
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
    unique_service,
    wait_until,
)

NODES = [h for h in os.environ.get("NACOS_CLUSTER_HOSTS", "").split(",") if h]
pytestmark = pytest.mark.skipif(
    len(NODES) < 3, reason="needs a 3-node cluster (tests/sdk/run.sh nacelle-cluster)"
)


_close = close_clients


class Watch:
    """A subscription on one node that records every pushed instance list."""

    def __init__(self):
        self.seen = []

    async def on_change(self, instances):
        self.seen.append(addrs(instances))

    def last(self):
        return self.seen[-1] if self.seen else None


async def _watch(client, svc):
    w = Watch()
    await client.subscribe(SubscribeServiceParam(service_name=svc, subscribe_callback=w.on_change))
    return w


@async_test
async def test_register_on_node1_is_pushed_to_subscribers_on_nodes_2_and_3():
    svc = unique_service("cl-push")
    writer = await new_client("cl-writer", NODES[0])
    r2, r3 = await new_client("cl-r2", NODES[1]), await new_client("cl-r3", NODES[2])
    clients = [writer, r2, r3]
    try:
        w2, w3 = await _watch(r2, svc), await _watch(r3, svc)
        assert await writer.register_instance(
            RegisterInstanceParam(service_name=svc, ip="10.20.0.1", port=8080, weight=3.0,
                                  metadata={"zone": "z9"})
        )
        one = [("10.20.0.1", 8080)]
        for name, w in (("node 2", w2), ("node 3", w3)):
            await wait_until(lambda w=w: w.last() == one, PUSH_TIMEOUT, what=f"push on {name}")

        # The replica carries the whole instance, not just its address.
        for reader in (r2, r3):
            info = await query_direct(reader, svc)
            assert len(info.hosts) == 1, info
            h = info.hosts[0]
            assert h.weight == 3.0 and h.metadata.get("zone") == "z9" and h.healthy and h.ephemeral

        # A second instance from another connection on node 1 (a connection publishes one
        # instance per service, as in Nacos 2.x), then a deregistration.
        second = await new_client("cl-writer2", NODES[0])
        clients.append(second)
        assert await second.register_instance(RegisterInstanceParam(service_name=svc, ip="10.20.0.2", port=8080))
        two = [("10.20.0.1", 8080), ("10.20.0.2", 8080)]
        for w in (w2, w3):
            await wait_until(lambda w=w: w.last() == two, PUSH_TIMEOUT, what="push of the second instance")
        assert await writer.deregister_instance(
            DeregisterInstanceParam(service_name=svc, ip="10.20.0.1", port=8080))
        for w in (w2, w3):
            await wait_until(lambda w=w: w.last() == [("10.20.0.2", 8080)], PUSH_TIMEOUT,
                             what="push after the deregistration")
    finally:
        await _close(*clients)


@async_test
async def test_instances_of_one_service_registered_through_every_node_merge_everywhere():
    svc = unique_service("cl-merge")
    writers = [await new_client(f"cl-w{i}", host) for i, host in enumerate(NODES)]
    readers = [await new_client(f"cl-r{i}", host) for i, host in enumerate(NODES)]
    try:
        watches = [await _watch(r, svc) for r in readers]
        for i, w in enumerate(writers):
            await w.batch_register_instances(BatchRegisterInstanceParam(service_name=svc, instances=[
                RegisterInstanceParam(service_name=svc, ip=f"10.21.{i}.1", port=1),
                RegisterInstanceParam(service_name=svc, ip=f"10.21.{i}.2", port=2),
            ]))
        want = sorted((f"10.21.{i}.{j}", j) for i in range(len(NODES)) for j in (1, 2))
        for host, w in zip(NODES, watches):
            await wait_until(lambda w=w: w.last() == want, PUSH_TIMEOUT, what=f"all six instances on {host}")
        for r in readers:
            assert addrs((await query_direct(r, svc)).hosts) == want

        # A batch replaces that connection's earlier batch on every node.
        await writers[1].batch_register_instances(BatchRegisterInstanceParam(service_name=svc, instances=[
            RegisterInstanceParam(service_name=svc, ip="10.21.1.9", port=9),
        ]))
        want = sorted([a for a in want if not a[0].startswith("10.21.1.")] + [("10.21.1.9", 9)])
        for host, w in zip(NODES, watches):
            await wait_until(lambda w=w: w.last() == want, PUSH_TIMEOUT, what=f"replaced batch on {host}")
    finally:
        await _close(*writers, *readers)


@async_test
async def test_a_closed_connection_on_node1_removes_its_instances_from_nodes_2_and_3():
    svc = unique_service("cl-close")
    doomed = await new_client("cl-doomed", NODES[0])
    survivor = await new_client("cl-survivor", NODES[2])
    r2, r3 = await new_client("cl-r2", NODES[1]), await new_client("cl-r3", NODES[2])
    try:
        w2, w3 = await _watch(r2, svc), await _watch(r3, svc)
        await doomed.register_instance(RegisterInstanceParam(service_name=svc, ip="10.22.0.1", port=1))
        await survivor.register_instance(RegisterInstanceParam(service_name=svc, ip="10.22.0.2", port=2))
        both = [("10.22.0.1", 1), ("10.22.0.2", 2)]
        for w in (w2, w3):
            await wait_until(lambda w=w: w.last() == both, PUSH_TIMEOUT, what="both instances")

        await doomed.shutdown()
        for name, w in (("node 2", w2), ("node 3", w3)):
            await wait_until(lambda w=w: w.last() == [("10.22.0.2", 2)], DISCONNECT_TIMEOUT,
                             what=f"the closed connection's instance gone on {name}")
        fresh = await new_client("cl-fresh", NODES[0])
        try:
            assert addrs((await query_direct(fresh, svc)).hosts) == [("10.22.0.2", 2)]
        finally:
            await _close(fresh)
    finally:
        await _close(survivor, r2, r3)
