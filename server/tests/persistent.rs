//! Persistent instances (`ephemeral=false`) against the real binary: durable through Raft
//! across `kill -9`, Nacos's service-kind rule and texts, gRPC `PersistentInstanceRequest`,
//! durable service and cluster definitions, and server-side health checks (TCP on
//! 127.0.0.1 only).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{enc, naming_body, wait_until, Conn, HttpResp, Server};
use serde_json::{json, Value};

const NS: &str = "/nacos/v1/ns";

fn ok(r: &HttpResp) {
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
}

fn register(s: &Server, service: &str, ip: &str, port: u16, ephemeral: bool) -> HttpResp {
    s.http(
        "POST",
        &format!("{NS}/instance?serviceName={service}&ip={ip}&port={port}&ephemeral={ephemeral}"),
    )
}

fn persistent_hosts(s: &Server, service: &str) -> Vec<Value> {
    let hosts = s.hosts(service);
    assert!(
        hosts.iter().all(|h| h["ephemeral"] == false),
        "a host listed as ephemeral: {hosts:?}"
    );
    hosts
}

/// A server on `dir` (restartable on the same data).
fn on(dir: &tempfile::TempDir) -> Server {
    Server::start(&["--data-dir", dir.path().to_str().unwrap()])
}

#[test]
fn acknowledged_persistent_registrations_survive_kill_9_and_so_do_deregistrations() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = on(&dir);
    // NONE: nothing listens at these addresses and this test is about durability.
    ok(&register(&s, "db", "127.0.0.1", 1, false));
    ok(&s.http(
        "PUT",
        &format!(
            "{NS}/cluster?serviceName=db&clusterName=DEFAULT&checkPort=80&useInstancePort4Check=true&healthChecker={}",
            enc(r#"{"type":"NONE"}"#)
        ),
    ));
    for port in 2..=300 {
        ok(&register(&s, "db", "127.0.0.1", port, false));
    }
    assert_eq!(persistent_hosts(&s, "db").len(), 300);
    s.kill();

    let mut s = on(&dir);
    let hosts = persistent_hosts(&s, "db");
    assert_eq!(hosts.len(), 300, "lost acknowledged registrations");
    for port in 1..=150 {
        ok(&s.http(
            "DELETE",
            &format!("{NS}/instance?serviceName=db&ip=127.0.0.1&port={port}&ephemeral=false"),
        ));
    }
    assert_eq!(persistent_hosts(&s, "db").len(), 150);
    s.kill();

    let s = on(&dir);
    let mut ports: Vec<u64> = persistent_hosts(&s, "db")
        .iter()
        .map(|h| h["port"].as_u64().unwrap())
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        (151..=300).collect::<Vec<u64>>(),
        "a deregistration came back or a registration was lost"
    );
}

#[test]
fn a_second_process_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let _first = on(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nacelle"))
        .args([
            "--bind",
            "127.0.0.1",
            "--http-port",
            "1",
            "--grpc-port",
            "2",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        err.contains(dir.path().to_str().unwrap()) && err.contains("locked"),
        "the error does not name the directory: {err}"
    );
}

#[test]
fn a_service_holds_one_kind_and_the_other_is_refused_with_nacos_texts() {
    let s = Server::start(&[]);
    ok(&register(&s, "eph", "127.0.0.1", 10, true));
    let r = register(&s, "eph", "127.0.0.1", 11, false);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "errCode: 400, errMsg: Current service DEFAULT_GROUP@@eph is ephemeral service, can't register persistent instance. "
    );
    ok(&register(&s, "per", "127.0.0.1", 20, false));
    let r = register(&s, "per", "127.0.0.1", 21, true);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "errCode: 400, errMsg: Current service DEFAULT_GROUP@@per is persistent service, can't register ephemeral instance. "
    );
    // Emptied, a service takes either kind again.
    ok(&s.http(
        "DELETE",
        &format!("{NS}/instance?serviceName=per&ip=127.0.0.1&port=20&ephemeral=false"),
    ));
    ok(&register(&s, "per", "127.0.0.1", 21, true));
}

#[test]
fn a_deregistration_without_the_ephemeral_flag_reaches_the_persistent_instance() {
    let s = Server::start(&[]);
    ok(&register(&s, "legacy", "127.0.0.1", 30, false));
    ok(&s.http(
        "DELETE",
        &format!("{NS}/instance?serviceName=legacy&ip=127.0.0.1&port=30"),
    ));
    assert!(s.hosts("legacy").is_empty());
}

#[tokio::test]
async fn grpc_persistent_instance_requests_register_and_deregister_and_the_ability_is_advertised() {
    let s = Server::start(&[]);
    let mut c = Conn::bare(s.grpc).await;
    c.open_stream().await;
    c.setup().await;
    let (kind, ack) = c.next_push(Duration::from_secs(5)).await.unwrap();
    assert_eq!(kind, "SetupAckRequest");
    assert_eq!(
        ack["abilityTable"]["supportPersistentInstanceByGrpc"], true,
        "{ack}"
    );

    // The SDK's instance says ephemeral=true (its default); the request kind decides.
    let inst = common::instance("127.0.0.1", 40);
    let (kind, v) = c
        .call(
            "PersistentInstanceRequest",
            &naming_body(
                "grpc-db",
                json!({"type": "registerInstance", "instance": inst}),
            ),
        )
        .await;
    assert_eq!(kind, "InstanceResponse", "{v}");
    assert_eq!(v["type"], "registerInstance");
    let hosts = persistent_hosts(&s, "grpc-db");
    assert_eq!(hosts.len(), 1);

    // An ephemeral registration into it is refused with the kind rule.
    let (kind, v) = c
        .call(
            "InstanceRequest",
            &naming_body(
                "grpc-db",
                json!({"type": "registerInstance", "instance": common::instance("127.0.0.1", 41)}),
            ),
        )
        .await;
    assert_eq!(kind, "ErrorResponse", "{v}");
    assert_eq!(v["errorCode"], 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("is persistent service, can't register ephemeral instance."),
        "{v}"
    );

    let (kind, v) = c
        .call(
            "PersistentInstanceRequest",
            &naming_body(
                "grpc-db",
                json!({"type": "batchRegisterInstance", "instance": inst}),
            ),
        )
        .await;
    assert_eq!(kind, "ErrorResponse", "{v}");
    assert_eq!(
        v["message"],
        "Unsupported request type batchRegisterInstance"
    );

    let (kind, v) = c
        .call(
            "PersistentInstanceRequest",
            &naming_body(
                "grpc-db",
                json!({"type": "deregisterInstance", "instance": inst}),
            ),
        )
        .await;
    assert_eq!(kind, "InstanceResponse", "{v}");
    assert!(s.hosts("grpc-db").is_empty());
    // Closing the connection never removes persistent instances: register again, hang up.
    let (kind, _) = c
        .call(
            "PersistentInstanceRequest",
            &naming_body(
                "grpc-db",
                json!({"type": "registerInstance", "instance": inst}),
            ),
        )
        .await;
    assert_eq!(kind, "InstanceResponse");
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(persistent_hosts(&s, "grpc-db").len(), 1);
}

#[test]
fn service_and_cluster_definitions_are_durable_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = on(&dir);
    let meta = enc(r#"{"team":"db"}"#);
    ok(&s.http(
        "POST",
        &format!("{NS}/service?serviceName=defined&protectThreshold=0.5&metadata={meta}"),
    ));
    let r = s.http("POST", &format!("{NS}/service?serviceName=defined"));
    assert_ne!(r.status, 200, "a second create succeeded: {r:?}");
    let r = s.http(
        "PUT",
        &format!(
            "{NS}/cluster?serviceName=defined&clusterName=DEFAULT&checkPort=3306&useInstancePort4Check=false&healthChecker={}",
            enc(r#"{"type":"MYSQL","user":"u","pwd":"p","cmd":"select 1"}"#)
        ),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().to_lowercase().contains("mysql"), "{}", r.text());
    let r = s.http(
        "PUT",
        &format!(
            "{NS}/cluster?serviceName=nowhere&clusterName=DEFAULT&checkPort=1&useInstancePort4Check=true&healthChecker={}",
            enc(r#"{"type":"TCP"}"#)
        ),
    );
    assert_eq!(r.status, 404, "{r:?}");
    s.kill();

    let s = on(&dir);
    let r = s.http("GET", &format!("{NS}/service?serviceName=defined"));
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["protectThreshold"], 0.5, "{v}");
    assert_eq!(v["metadata"]["team"], "db", "{v}");
    ok(&s.http("DELETE", &format!("{NS}/service?serviceName=defined")));
    assert_eq!(
        s.http("GET", &format!("{NS}/service?serviceName=defined"))
            .status,
        404
    );
}

fn healthy_of(s: &Server, service: &str, port: u16) -> Option<bool> {
    s.hosts(service)
        .iter()
        .find(|h| h["port"] == port)
        .and_then(|h| h["healthy"].as_bool())
}

#[test]
fn a_tcp_checked_instance_turns_unhealthy_when_its_port_closes_and_healthy_when_it_reopens() {
    let s = Server::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A second instance that stays up: with every instance unhealthy the protect threshold
    // (0, as Nacos: 0/1 <= 0) would answer them all as healthy.
    let steady = TcpListener::bind("127.0.0.1:0").unwrap();
    let steady_port = steady.local_addr().unwrap().port();
    ok(&register(
        &s,
        "tcp-checked",
        "127.0.0.1",
        steady_port,
        false,
    ));
    ok(&register(&s, "tcp-checked", "127.0.0.1", port, false));
    assert_eq!(healthy_of(&s, "tcp-checked", port), Some(true));
    // Refused connections count at once; the first probe comes within 2 + 5 s.
    drop(listener);
    let flipped = wait_until(Duration::from_secs(20), || {
        healthy_of(&s, "tcp-checked", port) == Some(false)
    });
    assert!(flipped, "still healthy with its port closed");
    // Three consecutive connects flip it back (probes every 5 s ± jitter).
    let _listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let back = wait_until(Duration::from_secs(40), || {
        healthy_of(&s, "tcp-checked", port) == Some(true)
    });
    assert!(back, "still unhealthy with its port open again");
    assert_eq!(healthy_of(&s, "tcp-checked", steady_port), Some(true));
    assert!(s.prometheus("nacelle_health_flips_total") >= 2.0);
}
