//! Authentication against the real binary (`--auth`): every naming API, HTTP v1/v2 and gRPC,
//! refused without credentials, with a wrong password, an expired, forged or foreign token,
//! and outside a user's permissions; granted with a token (each way Nacos accepts it) or a
//! user name and password; the user, role and permission API; the login rate limit; a bad
//! `--auth-token-secret` refused at start; a token from one node of a 3-node cluster valid on
//! the others (the secret generated once, in the Raft store).

// Each cluster test holds the serialising guard for its whole run, awaits included.
#![allow(clippy::await_holding_lock)]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::cluster::{serial, TestCluster};
use common::{
    enc, instance, naming_body, open, payload, try_http_at, wait_until, Conn, HttpResp, Server,
};
use serde_json::{json, Value};

const SECRET: &[u8] = b"nacelle-test-secret-of-32-bytes!";
const ADMIN_PW: &str = "admin-pw-1";

fn secret_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(SECRET)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn auth_server() -> Server {
    let secret = secret_b64();
    Server::start(&[
        "--auth",
        "--auth-token-secret",
        &secret,
        "--admin-password",
        ADMIN_PW,
    ])
}

/// A request with extra headers.
fn request(s: &Server, method: &str, path: &str, headers: &[(&str, &str)], form: &str) -> HttpResp {
    use std::io::Write;
    let mut t = std::net::TcpStream::connect((s.ip.as_str(), s.http)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    ));
    t.write_all(req.as_bytes()).unwrap();
    common::read_response(&mut t).unwrap()
}

fn login_at(s: &Server, user: &str, pw: &str) -> HttpResp {
    s.http_form(
        "POST",
        "/nacos/v1/auth/login",
        &format!("username={}&password={}", enc(user), enc(pw)),
    )
}

/// Logs in (waiting for the bootstrap of `--admin-password` at start).
fn token(s: &Server, user: &str, pw: &str) -> String {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        let r = login_at(s, user, pw);
        last = format!("{} {}", r.status, r.text());
        r.status == 200
    });
    assert!(ok, "login {user}: {last}");
    let v = login_at(s, user, pw).json();
    assert_eq!(v["tokenTtl"], 18_000);
    assert_eq!(v["username"], user);
    v["accessToken"].as_str().unwrap().to_owned()
}

fn list(s: &Server, service: &str, cred: &str) -> HttpResp {
    s.http(
        "GET",
        &format!("/nacos/v1/ns/instance/list?serviceName={service}{cred}"),
    )
}

fn register(s: &Server, service: &str, port: u16, cred: &str) -> HttpResp {
    s.http(
        "POST",
        &format!("/nacos/v1/ns/instance?serviceName={service}&ip=127.0.0.1&port={port}{cred}"),
    )
}

fn refused(r: &HttpResp, message: &str) {
    assert_eq!((r.status, r.text().as_str()), (403, message));
}

fn admin_call(s: &Server, method: &str, path: &str, form: &str, t: &str) -> Value {
    let r = request(s, method, path, &[("accessToken", t)], form);
    assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    r.json()
}

#[test]
fn http_naming_needs_valid_credentials_and_permissions() {
    let s = auth_server();
    let admin = token(&s, "nacos", ADMIN_PW);
    // No credentials: reads and writes refused, v1 text and v2 JSON.
    refused(&list(&s, "orders", ""), "user not found!");
    refused(&register(&s, "orders", 1, ""), "user not found!");
    let r = s.http("GET", "/nacos/v2/ns/instance/list?serviceName=orders");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], 403);
    refused(
        &s.http("GET", "/nacos/v1/ns/service/list?pageNo=1&pageSize=10"),
        "user not found!",
    );
    refused(
        &s.http("GET", "/nacos/v1/ns/operator/metrics"),
        "user not found!",
    );
    refused(
        &s.http("GET", "/nacos/v1/core/cluster/nodes"),
        "user not found!",
    );
    // Wrong password, as a login and as parameters.
    refused(&login_at(&s, "nacos", "wrong"), "user not found!");
    refused(&login_at(&s, "ghost", "wrong"), "user not found!");
    refused(
        &list(&s, "orders", "&username=nacos&password=wrong"),
        "user not found!",
    );
    // Expired, forged (another secret), tampered and junk tokens.
    let expired = engine::auth::token::issue(SECRET, "nacos", now_s() - 100, 10);
    refused(
        &list(&s, "orders", &format!("&accessToken={expired}")),
        "token expired!",
    );
    let forged =
        engine::auth::token::issue(b"another-secret-another-secret-xx", "nacos", now_s(), 600);
    refused(
        &list(&s, "orders", &format!("&accessToken={forged}")),
        "token invalid!",
    );
    let mut tampered = admin.clone();
    tampered.push('x');
    refused(
        &list(&s, "orders", &format!("&accessToken={tampered}")),
        "token invalid!",
    );
    refused(&list(&s, "orders", "&accessToken=junk"), "token invalid!");
    // Every way Nacos accepts a token, and a user name with its password.
    assert_eq!(
        register(&s, "orders", 1, &format!("&accessToken={admin}")).text(),
        "ok"
    );
    let bearer = format!("Bearer {admin}");
    let path = "/nacos/v1/ns/instance/list?serviceName=orders";
    for h in [
        ("Authorization", bearer.as_str()),
        ("accessToken", admin.as_str()),
    ] {
        let r = request(&s, "GET", path, &[h], "");
        assert_eq!(r.status, 200, "{h:?}: {}", r.text());
        assert_eq!(r.json()["hosts"].as_array().unwrap().len(), 1);
    }
    let r = request(&s, "GET", path, &[], &format!("accessToken={admin}"));
    assert_eq!(r.status, 200, "form accessToken: {}", r.text());
    let pw = format!("&username=nacos&password={ADMIN_PW}");
    assert_eq!(list(&s, "orders", &pw).status, 200);
    assert_eq!(register(&s, "orders", 2, &pw).text(), "ok");
    // Open: health probes and Prometheus.
    assert_eq!(
        s.http("GET", "/nacos/v1/console/health/liveness").status,
        200
    );
    assert_eq!(
        s.http("GET", "/nacos/v1/console/health/readiness").status,
        200
    );
    assert_eq!(s.http("GET", "/metrics").status, 200);

    // A user who may read `orders*` in public and nothing else.
    let v = admin_call(
        &s,
        "POST",
        "/nacos/v1/auth/users",
        "username=alice&password=alice-pw",
        &admin,
    );
    assert_eq!(v["data"], "create user ok!");
    admin_call(
        &s,
        "POST",
        "/nacos/v1/auth/roles",
        "role=reader&username=alice",
        &admin,
    );
    let res = enc(":*:naming/orders*");
    admin_call(
        &s,
        "POST",
        "/nacos/v1/auth/permissions",
        &format!("role=reader&resource={res}&action=r"),
        &admin,
    );
    let alice = token(&s, "alice", "alice-pw");
    let a = format!("&accessToken={alice}");
    assert_eq!(list(&s, "orders", &a).status, 200);
    assert_eq!(list(&s, "orders-v2", &a).status, 200);
    refused(&list(&s, "payments", &a), "authorization failed!");
    refused(&register(&s, "orders", 3, &a), "authorization failed!");
    let other_ns = s.http(
        "GET",
        &format!("/nacos/v1/ns/instance/list?serviceName=orders&namespaceId=dev{a}"),
    );
    refused(&other_ns, "authorization failed!");
    // Not an administrator: the user API is closed to alice, but her own password is hers.
    let r = request(
        &s,
        "GET",
        "/nacos/v1/auth/users?pageNo=1&pageSize=10",
        &[("accessToken", &alice)],
        "",
    );
    refused(&r, "authorization failed!");
    let r = request(
        &s,
        "PUT",
        "/nacos/v1/auth/users",
        &[("accessToken", &alice)],
        "username=nacos&newPassword=x",
    );
    refused(&r, "authorization failed!");
    let r = request(
        &s,
        "PUT",
        "/nacos/v1/auth/users",
        &[("accessToken", &alice)],
        "username=alice&newPassword=alice-pw2",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    refused(
        &list(&s, "orders", "&username=alice&password=alice-pw"),
        "user not found!",
    );
    assert_eq!(
        list(&s, "orders", "&username=alice&password=alice-pw2").status,
        200
    );
    // Granting write, then deleting alice: her token no longer works.
    admin_call(
        &s,
        "POST",
        "/nacos/v1/auth/permissions",
        &format!("role=reader&resource={res}&action=rw"),
        &admin,
    );
    assert_eq!(register(&s, "orders", 3, &a).text(), "ok");
    let users = admin_call(
        &s,
        "GET",
        "/nacos/v1/auth/users?pageNo=1&pageSize=10",
        "",
        &admin,
    );
    assert_eq!(users["totalCount"], 2);
    let perms = admin_call(
        &s,
        "GET",
        "/nacos/v1/auth/permissions?pageNo=1&pageSize=10&role=reader",
        "",
        &admin,
    );
    assert_eq!(perms["totalCount"], 2);
    let r = request(
        &s,
        "DELETE",
        "/nacos/v1/auth/users?username=nacos",
        &[("accessToken", &admin)],
        "",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("cannot delete admin: nacos"));
    admin_call(
        &s,
        "DELETE",
        "/nacos/v1/auth/users?username=alice",
        "",
        &admin,
    );
    refused(&list(&s, "orders", &a), "unknown user!");
    // The first administrator exists: a second is refused.
    let r = s.http_form("POST", "/nacos/v1/auth/users/admin", "password=other");
    assert_eq!(r.status, 409, "{}", r.text());
}

#[test]
fn first_admin_via_the_api_and_login_attempts_limited_per_source() {
    let secret = secret_b64();
    let s = Server::start(&["--auth", "--auth-token-secret", &secret]);
    // The console asks, without credentials, whether to show its login page first.
    let state = s.http("GET", "/nacos/v1/console/server/state");
    assert_eq!(state.status, 200, "{}", state.text());
    assert_eq!(state.json()["auth_enabled"], "true", "{}", state.text());
    refused(&login_at(&s, "nacos", "anything"), "user not found!");
    let r = s.http_form("POST", "/nacos/v1/auth/users/admin", "password=first-pw");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"username": "nacos", "password": "first-pw"})
    );
    assert_eq!(
        s.http_form("POST", "/nacos/v1/auth/users/admin", "").status,
        409
    );
    let t = token(&s, "nacos", "first-pw");
    assert!(!t.is_empty());
    // Wrong passwords from one address: after the burst (10 per core) they are refused
    // unchecked; a token still works.
    let mut limited = 0;
    for _ in 0..40 {
        let r = login_at(&s, "nacos", "wrong");
        match r.status {
            403 => {}
            429 => limited += 1,
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert!(
        limited >= 10,
        "only {limited} of 40 wrong logins were rate-limited"
    );
    assert_eq!(list(&s, "x", &format!("&accessToken={t}")).status, 200);
}

#[test]
fn a_bad_token_secret_is_refused_at_start() {
    for bad in [
        "not base64!",
        &base64::engine::general_purpose::STANDARD.encode([7u8; 31]),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nacelle"))
            .args([
                "--auth",
                "--bind",
                "127.0.0.1",
                "--http-port",
                "1",
                "--auth-token-secret",
                bad,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--auth-token-secret"), "{err}");
    }
}

fn with_token(mut p: wire::proto::Payload, token: &str) -> wire::proto::Payload {
    if let Some(m) = p.metadata.as_mut() {
        m.headers.insert("accessToken".into(), token.into());
    }
    p
}

async fn call(c: &mut Conn, kind: &str, body: &Value, token: Option<&str>) -> (String, Value) {
    let mut p = payload(kind, body);
    if let Some(t) = token {
        p = with_token(p, t);
    }
    open(&c.call_raw(p).await.unwrap())
}

fn register_body(service: &str, port: u16) -> Value {
    naming_body(
        service,
        json!({"type": "registerInstance", "instance": instance("127.0.0.1", port)}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_naming_needs_a_token_with_the_permission() {
    let s = auth_server();
    let admin = token(&s, "nacos", ADMIN_PW);
    let mut c = Conn::open(s.grpc).await;
    let sub = naming_body("orders", json!({"subscribe": true, "clusters": ""}));
    let query = naming_body(
        "orders",
        json!({"cluster": "", "healthyOnly": false, "udpPort": 0}),
    );
    let list = json!({"namespace": "public", "groupName": "DEFAULT_GROUP", "pageNo": 1, "pageSize": 10, "module": "naming", "headers": {}});
    let expired = engine::auth::token::issue(SECRET, "nacos", now_s() - 100, 10);
    let forged =
        engine::auth::token::issue(b"another-secret-another-secret-xx", "nacos", now_s(), 600);
    for (token, message) in [
        (None, "user not found!"),
        (Some(expired.as_str()), "token expired!"),
        (Some(forged.as_str()), "token invalid!"),
    ] {
        for (kind, body, response) in [
            (
                "InstanceRequest",
                &register_body("orders", 1),
                "InstanceResponse",
            ),
            ("SubscribeServiceRequest", &sub, "SubscribeServiceResponse"),
            ("ServiceQueryRequest", &query, "QueryServiceResponse"),
            ("ServiceListRequest", &list, "ServiceListResponse"),
        ] {
            let (k, v) = call(&mut c, kind, body, token).await;
            assert_eq!(k, response, "{kind}: {v}");
            assert_eq!(
                (v["errorCode"].as_i64(), v["message"].as_str()),
                (Some(403), Some(message)),
                "{kind}: {v}"
            );
        }
    }
    let (k, v) = call(
        &mut c,
        "InstanceRequest",
        &register_body("orders", 1),
        Some(&admin),
    )
    .await;
    assert_eq!(
        (k.as_str(), v["resultCode"].as_i64()),
        ("InstanceResponse", Some(200)),
        "{v}"
    );
    let (_, v) = call(&mut c, "SubscribeServiceRequest", &sub, Some(&admin)).await;
    assert_eq!(v["resultCode"], 200, "{v}");
    assert_eq!(
        v["serviceInfo"]["hosts"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    // Health checks stay open.
    let (k, _) = call(&mut c, "HealthCheckRequest", &json!({"headers": {}}), None).await;
    assert_eq!(k, "HealthCheckResponse");

    // A reader of `orders` only.
    let _ = request(
        &s,
        "POST",
        "/nacos/v1/auth/users",
        &[("accessToken", &admin)],
        "username=bob&password=bob-pw",
    );
    let _ = request(
        &s,
        "POST",
        "/nacos/v1/auth/roles",
        &[("accessToken", &admin)],
        "role=r&username=bob",
    );
    let r = request(
        &s,
        "POST",
        "/nacos/v1/auth/permissions",
        &[("accessToken", &admin)],
        "role=r&resource=%3A*%3Anaming%2Forders&action=r",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let bob = token(&s, "bob", "bob-pw");
    let (_, v) = call(&mut c, "SubscribeServiceRequest", &sub, Some(&bob)).await;
    assert_eq!(v["resultCode"], 200, "{v}");
    let (_, v) = call(
        &mut c,
        "InstanceRequest",
        &register_body("orders", 2),
        Some(&bob),
    )
    .await;
    assert_eq!(
        (v["errorCode"].as_i64(), v["message"].as_str()),
        (Some(403), Some("authorization failed!")),
        "{v}"
    );
    let other = naming_body("payments", json!({"subscribe": true, "clusters": ""}));
    let (_, v) = call(&mut c, "SubscribeServiceRequest", &other, Some(&bob)).await;
    assert_eq!(v["errorCode"], 403, "{v}");
    // User name and password in the metadata, as Nacos's GrpcIdentityContextBuilder reads them.
    let mut p = payload("SubscribeServiceRequest", &sub);
    if let Some(m) = p.metadata.as_mut() {
        m.headers.insert("username".into(), "bob".into());
        m.headers.insert("password".into(), "bob-pw".into());
    }
    let (_, v) = open(&c.call_raw(p).await.unwrap());
    assert_eq!(v["resultCode"], 200, "{v}");
}

#[test]
fn a_token_from_one_node_is_valid_on_every_node() {
    let _guard = serial();
    // No --auth-token-secret: the cluster generates one and keeps it in its Raft store.
    let c = TestCluster::start(
        3,
        3,
        &["--insecure", "--auth", "--admin-password", ADMIN_PW],
    );
    let first = c.node(0);
    let t = token(first, "nacos", ADMIN_PW);
    let cred = format!("&accessToken={t}");
    for i in 1..3 {
        let n = c.node(i);
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(15), || {
            match try_http_at(
                &n.ip,
                n.http,
                "GET",
                &format!("/nacos/v1/ns/instance/list?serviceName=x{cred}"),
                None,
            ) {
                Ok(r) => {
                    last = format!("{} {}", r.status, r.text());
                    r.status == 200
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        });
        assert!(ok, "node {i} refused node 0's token: {last}");
        // A user created through this node can log in on node 0.
        let r = request(
            n,
            "POST",
            "/nacos/v1/auth/users",
            &[("accessToken", &t)],
            &format!("username=u{i}&password=pw{i}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let u = token(first, &format!("u{i}"), &format!("pw{i}"));
        assert!(!u.is_empty());
    }
    // Without credentials every node refuses.
    for (_, n) in c.running() {
        let r = try_http_at(
            &n.ip,
            n.http,
            "GET",
            "/nacos/v1/ns/instance/list?serviceName=x",
            None,
        )
        .unwrap();
        assert_eq!(r.status, 403);
    }
}
