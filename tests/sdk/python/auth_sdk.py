"""nacos-sdk-python 3.x (v2.nacos, gRPC) against a nacelle started with --auth by
tests/sdk/auth.sh (run explicitly: `python3 -m pytest auth_sdk.py`; not collected by the
plain suite, whose server has auth off).

Users made by auth.sh: `nacos` (administrator, password $NACOS_ADMIN_PASSWORD), `writer`
(rw on `:*:naming/auth-*`), `reader` (r on `:*:naming/auth-*`); passwords = user name + "-pw".
"""
import logging
import os
import time
import uuid

import pytest

from v2.nacos import (
    ClientConfigBuilder,
    GRPCConfig,
    ListInstanceParam,
    NacosNamingService,
    RegisterInstanceParam,
    SubscribeServiceParam,
)
from v2.nacos.common.nacos_exception import NacosException

from conftest import GRPC_PORT, HOST, HTTP_PORT, PUSH_TIMEOUT, _TMP, async_test, close_clients, wait_until

GROUP = "DEFAULT_GROUP"
ADMIN_PW = os.environ.get("NACOS_ADMIN_PASSWORD", "")
FORGED = os.environ.get("NACOS_FORGED_TOKEN", "")
EXPIRED = os.environ.get("NACOS_EXPIRED_TOKEN", "")


def svc(tag):
    return f"auth-py-{tag}-{uuid.uuid4().hex[:8]}"


async def client(username=None, password=None):
    b = (
        ClientConfigBuilder()
        .server_address(f"{HOST}:{HTTP_PORT}")
        .log_level(logging.INFO)
        .log_dir(os.path.join(_TMP, "logs"))
        .cache_dir(os.path.join(_TMP, "cache", uuid.uuid4().hex[:8]))
        .load_cache_at_start(False)
        .grpc_config(GRPCConfig(grpc_timeout=3000, port_offset=GRPC_PORT - HTTP_PORT))
    )
    if username is not None:
        b = b.username(username).password(password)
    return await NacosNamingService.create_naming_service(b.build())


def with_token(c, token):
    """Makes the SDK send `token` (as if its login had returned it) without logging in."""
    auth = c.grpc_client_proxy.nacos_server_connector.auth_client
    auth.access_token = token
    auth.token_expired_time = time.time() + 3600
    return c


def register(c, service, port):
    return c.register_instance(
        RegisterInstanceParam(service_name=service, group_name=GROUP, ip="10.9.0.1", port=port)
    )


async def refused(coro, code=403):
    with pytest.raises(NacosException) as e:
        await coro
    assert e.value.error_code == code or "403" in str(e.value) or "access token" in str(e.value), e.value


@async_test
async def test_good_credentials_register_list_and_subscribe():
    service = svc("ok")
    w, r = await client("writer", "writer-pw"), await client("reader", "reader-pw")
    try:
        assert await register(w, service, 8080) is True
        pushed = []

        async def on_change(info):
            pushed.append(info)

        await r.subscribe(SubscribeServiceParam(service_name=service, group_name=GROUP, subscribe_callback=on_change))
        hosts = await r.list_instances(ListInstanceParam(service_name=service, group_name=GROUP, healthy_only=None))
        assert [(h.ip, h.port) for h in hosts] == [("10.9.0.1", 8080)]
        # One gRPC client holds one instance per service (Nacos 2.x): this replaces it.
        assert await register(w, service, 8081) is True
        await wait_until(lambda: any([h.port for h in p] == [8081] for p in pushed), PUSH_TIMEOUT,
                         what="a push with the re-registered instance")
        # The administrator passes everything, any service.
        a = await client("nacos", ADMIN_PW)
        try:
            assert await register(a, svc("admin").replace("auth-", "other-"), 9000) is True
        finally:
            await close_clients(a)
    finally:
        await close_clients(w, r)


@async_test
async def test_refused_without_credentials_or_with_a_wrong_password():
    service = svc("no")
    anon, wrong = await client(), await client("writer", "wrong-pw")
    try:
        await refused(register(anon, service, 1))
        await refused(anon.list_instances(ListInstanceParam(service_name=service, group_name=GROUP, healthy_only=None)))
        await refused(register(wrong, service, 1), code=None)
    finally:
        await close_clients(anon, wrong)


@async_test
async def test_refused_with_a_forged_or_expired_token():
    service = svc("tok")
    for token in (FORGED, EXPIRED):
        assert token
        c = with_token(await client("writer", "writer-pw"), token)
        try:
            await refused(register(c, service, 1))
            await refused(c.list_instances(ListInstanceParam(service_name=service, group_name=GROUP, healthy_only=None)))
        finally:
            await close_clients(c)


@async_test
async def test_refused_outside_permissions():
    r, w = await client("reader", "reader-pw"), await client("writer", "writer-pw")
    try:
        await refused(register(r, svc("ro"), 1))
        other = "other-" + uuid.uuid4().hex[:8]
        await refused(register(w, other, 1))
        await refused(w.list_instances(ListInstanceParam(service_name=other, group_name=GROUP, healthy_only=None)))
    finally:
        await close_clients(r, w)
