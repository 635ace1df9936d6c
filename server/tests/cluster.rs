//! Multi-process cluster tests: real `nacelle` processes on 127.0.0.1 forming a Distro
//! cluster over QUIC. Writes go through one node and are read, pushed and forwarded through
//! the others; nodes are killed with SIGKILL and restarted; a node joins a cluster that
//! already holds 100,000 instances; certificates decide who may join.

// Each async test has its own single-threaded runtime on its own thread; the guard that
// serialises them is meant to be held for the whole test, awaits included.
#![allow(clippy::await_holding_lock)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::json;

fn register_http(s: &Server, service: &str, ip: &str, port: u16) {
    let r = s.http(
        "POST",
        &format!("/nacos/v1/ns/instance?serviceName={service}&ip={ip}&port={port}"),
    );
    assert_eq!(r.status, 200, "register {ip}:{port}: {}", r.text());
}

/// Registers an HTTP instance that stays healthy for two minutes without beating: a test
/// that outlives the default 30 s delete timeout stands for clients that keep beating.
fn register_http_lasting(s: &Server, service: &str, ip: &str, port: u16) {
    // {"preserved.heart.beat.timeout":"120000","preserved.ip.delete.timeout":"120000"}
    let metadata = "%7B%22preserved.heart.beat.timeout%22%3A%22120000%22%2C%22preserved.ip.delete.timeout%22%3A%22120000%22%7D";
    let r = s.http(
        "POST",
        &format!(
            "/nacos/v1/ns/instance?serviceName={service}&ip={ip}&port={port}&metadata={metadata}"
        ),
    );
    assert_eq!(r.status, 200, "register {ip}:{port}: {}", r.text());
}

#[test]
fn http_writes_through_any_node_reach_every_node() {
    let _serial = serial();
    let c = TestCluster::start(3, 3, &["--insecure"]);
    c.wait_formed(Duration::from_secs(15));
    // 30 heartbeat clients: about two thirds belong to another node and are forwarded.
    let mut expected = Vec::new();
    for k in 0..30u16 {
        register_http(c.node(0), "orders", &format!("10.1.0.{}", k + 1), 8080);
        expected.push(format!("10.1.0.{}:8080", k + 1));
    }
    c.wait_everywhere("orders", &expected, Duration::from_secs(3));
    assert!(
        c.node(0).prometheus("nacelle_peer_forwards_total") >= 5.0,
        "writes for other nodes' clients are forwarded"
    );
    // Deregister through another node, beat through a third.
    for k in 0..10u16 {
        let r = c.node(1).http(
            "DELETE",
            &format!(
                "/nacos/v1/ns/instance?serviceName=orders&ip=10.1.0.{}&port=8080",
                k + 1
            ),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    expected.drain(..10);
    c.wait_everywhere("orders", &expected, Duration::from_secs(3));
    for k in 10..30u16 {
        let beat = enc(
            &json!({"serviceName": "orders", "ip": format!("10.1.0.{}", k + 1),
                               "port": 8080, "cluster": "DEFAULT"})
            .to_string(),
        );
        let r = c.node(2).http(
            "PUT",
            &format!("/nacos/v1/ns/instance/beat?serviceName=orders&beat={beat}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.json()["clientBeatInterval"].as_u64().is_some(),
            "{}",
            r.text()
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_grpc_registration_is_pushed_through_the_other_nodes() {
    let _serial = serial();
    let c = TestCluster::start(3, 3, &["--insecure"]);
    c.wait_formed(Duration::from_secs(15));
    let mut subscribers = Vec::new();
    for i in [1, 2] {
        let mut sub = Conn::open(c.node(i).grpc).await;
        let (kind, _) = sub
            .call(
                "SubscribeServiceRequest",
                &naming_body("payments", json!({"subscribe": true, "clusters": ""})),
            )
            .await;
        assert_eq!(kind, "SubscribeServiceResponse");
        subscribers.push(sub);
    }
    let mut publisher = Conn::open(c.node(0).grpc).await;
    let started = Instant::now();
    let (kind, body) = publisher
        .call(
            "InstanceRequest",
            &naming_body(
                "payments",
                json!({"type": "registerInstance", "instance": instance("10.2.0.1", 7001)}),
            ),
        )
        .await;
    assert_eq!(kind, "InstanceResponse", "{body}");
    for sub in subscribers.iter_mut() {
        let pushed = sub
            .wait_push(Duration::from_secs(3), |_, v| {
                v["serviceInfo"]["hosts"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x["ip"] == "10.2.0.1"))
            })
            .await;
        assert!(
            pushed.is_some(),
            "the registration is pushed by another node"
        );
    }
    eprintln!(
        "registration on node 0 pushed by nodes 1 and 2 after {:?}",
        started.elapsed()
    );
    // The connection closes: its instance leaves every node, and subscribers hear it.
    drop(publisher);
    for sub in subscribers.iter_mut() {
        let pushed = sub
            .wait_push(Duration::from_secs(5), |_, v| {
                v["serviceInfo"]["hosts"]
                    .as_array()
                    .is_some_and(|h| h.is_empty())
            })
            .await;
        assert!(
            pushed.is_some(),
            "the disconnection is pushed by another node"
        );
    }
}

#[test]
fn a_node_stopped_with_sigterm_delivers_what_it_accepted_before_it_exits() {
    let _serial = serial();
    let mut c = TestCluster::start(2, 0, &["--insecure"]);
    // Node 0 holds its changes for 5 s before syncing them: only the shutdown drain can
    // deliver what it accepted just before SIGTERM.
    c.start_node_with(0, &["--sync-delay-ms", "5000"]);
    c.start_node(1);
    c.wait_formed(Duration::from_secs(15));
    let mut expected = Vec::new();
    for k in 0..20u16 {
        register_http_lasting(c.node(0), "drain", &format!("10.7.0.{}", k + 1), 8080);
        expected.push(format!("10.7.0.{}:8080", k + 1));
    }
    c.wait_everywhere("drain", &expected, Duration::from_secs(10));
    // Deregister every one through node 0 (it owns about half of them and forwards the
    // rest), plus one new registration it owns or forwards; then stop it at once.
    for k in 0..20u16 {
        let r = c.node(0).http(
            "DELETE",
            &format!(
                "/nacos/v1/ns/instance?serviceName=drain&ip=10.7.0.{}&port=8080",
                k + 1
            ),
        );
        assert_eq!(r.status, 200, "deregister: {}", r.text());
    }
    register_http_lasting(c.node(0), "drain", "10.7.1.1", 8080);
    let mut node0 = c.nodes[0].take().expect("node 0 runs");
    let took = node0
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("node 0: {e}\n{}", node0.log()));
    let log = node0.log();
    assert!(
        log.contains("peers acknowledged every accepted change"),
        "node 0 drained its changes before exiting (took {took:?}):\n{log}"
    );
    // Without the drain node 1 would show the 20 deleted instances until their 120 s
    // heartbeat timeout, as their owner's Drop never left it.
    let want = vec!["10.7.1.1:8080".to_string()];
    let got = c.node(1).endpoints("drain");
    assert_eq!(
        got,
        want,
        "node 1 right after node 0 exited\n{}",
        c.node(1).log()
    );
    drop(node0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_killed_and_restarted_catches_up_and_loses_nothing() {
    let _serial = serial();
    // The test runs longer than the default idle detection of a silent gRPC client and the
    // delete timeout of a silent HTTP one; both stand for live clients here.
    let mut c = TestCluster::start(3, 3, &["--insecure", "--client-idle-ms", "120000"]);
    c.wait_formed(Duration::from_secs(15));
    // A gRPC client that stays connected to node 2 and HTTP clients of every node.
    let mut keeper = Conn::open(c.node(2).grpc).await;
    let (kind, _) = keeper
        .call(
            "InstanceRequest",
            &naming_body(
                "inventory",
                json!({"type": "registerInstance", "instance": instance("10.3.0.1", 9000)}),
            ),
        )
        .await;
    assert_eq!(kind, "InstanceResponse");
    // And one connected to node 1, which dies with it.
    let mut doomed = Conn::open(c.node(1).grpc).await;
    doomed
        .call(
            "InstanceRequest",
            &naming_body(
                "inventory",
                json!({"type": "registerInstance", "instance": instance("10.3.0.2", 9000)}),
            ),
        )
        .await;
    let mut expected: Vec<String> = vec!["10.3.0.1:9000".into(), "10.3.0.2:9000".into()];
    for k in 0..12u16 {
        register_http_lasting(c.node(0), "inventory", &format!("10.3.1.{}", k + 1), 80);
        expected.push(format!("10.3.1.{}:80", k + 1));
    }
    c.wait_everywhere("inventory", &expected, Duration::from_secs(3));

    c.kill(1);
    drop(doomed);
    // Once the others see node 1 DOWN, its HTTP clients have moved to them, and writes go on.
    let dead = format!("127.0.0.1:{}", c.ports[1].0);
    let seen_down = wait_until(Duration::from_secs(20), || {
        [0, 2].iter().all(|i| {
            c.node(*i).operator_metrics()["members"]
                .as_array()
                .is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["address"] == dead.as_str() && m["state"] == "DOWN")
                })
        })
    });
    assert!(seen_down, "a killed node is declared DOWN");
    register_http_lasting(c.node(0), "inventory", "10.3.2.1", 80);
    expected.push("10.3.2.1:80".into());
    expected.retain(|e| e != "10.3.0.2:9000");
    c.wait_everywhere("inventory", &expected, Duration::from_secs(15));

    c.start_node(1);
    c.wait_formed(Duration::from_secs(15));
    c.wait_everywhere("inventory", &expected, Duration::from_secs(10));
    let m = c.node(1).operator_metrics();
    assert_eq!(m["status"], "UP", "{m}");
    // Its snapshot came from a peer.
    assert!(
        c.node(1)
            .prometheus("nacelle_distro_snapshot_received_total")
            > 0.0
    );
    drop(keeper);
}

#[tokio::test(flavor = "current_thread")]
async fn a_joining_node_loads_100k_instances_before_it_reports_up() {
    let _serial = serial();
    let mut c = TestCluster::start(4, 3, &["--insecure"]);
    c.wait_formed(Duration::from_secs(20));
    // 100 services x 1,000 instances, batch-registered over 10 connections to node 0.
    let mut conns = Vec::new();
    for k in 0..10 {
        let mut conn = Conn::open(c.node(k % 3).grpc).await;
        for s in 0..10 {
            let service = format!("bulk-{k}-{s}");
            let instances: Vec<_> = (0..1000u16)
                .map(|i| instance(&format!("10.{}.{}.{}", 4 + k, s, i % 250), 1000 + i))
                .collect();
            let (kind, body) = conn
                .call(
                    "BatchInstanceRequest",
                    &naming_body(
                        &service,
                        json!({"type": "batchRegisterInstance", "instances": instances}),
                    ),
                )
                .await;
            assert_eq!(kind, "BatchInstanceResponse", "{body}");
        }
        conns.push(conn);
    }
    let total = |s: &Server| s.operator_metrics()["instanceCount"].as_i64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(20), || c
            .running()
            .all(|(_, s)| total(s) == 100_000)),
        "the three nodes hold 100,000 instances"
    );
    let started = Instant::now();
    c.start_node(3);
    // UP only once loaded: at that moment it already holds everything.
    let up = wait_until(Duration::from_secs(30), || {
        c.node(3).operator_metrics()["status"] == "UP"
    });
    let took = started.elapsed();
    let held = total(c.node(3));
    assert!(up, "the new node reports UP");
    assert_eq!(
        held, 100_000,
        "a node reports UP only with the whole snapshot"
    );
    eprintln!("node 4 joined a cluster of 100,000 instances and reported UP after {took:?}");
    drop(conns);
}

#[test]
fn only_nodes_with_a_certificate_of_the_cluster_ca_can_join() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("nacelle-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nacelle"))
            .arg("certs")
            .args(args)
            .output()
            .expect("nacelle certs runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
    certs(&["ca", "--out", &d("ca")]);
    certs(&["ca", "--out", &d("rogue-ca")]);
    for name in ["n0", "n1"] {
        certs(&[
            "node",
            "--ca-dir",
            &d("ca"),
            "--name",
            name,
            "--ip",
            "127.0.0.1",
            "--out",
            &d("nodes"),
        ]);
    }
    certs(&[
        "node",
        "--ca-dir",
        &d("rogue-ca"),
        "--name",
        "n2",
        "--ip",
        "127.0.0.1",
        "--out",
        &d("nodes"),
    ]);

    let mut c = TestCluster::start(3, 0, &[]);
    for (i, ca) in [(0, "ca"), (1, "ca"), (2, "rogue-ca")] {
        let cert = d(&format!("nodes/n{i}.pem"));
        let key = d(&format!("nodes/n{i}.key"));
        let ca = d(&format!("{ca}/ca.pem"));
        c.start_node_with(
            i,
            &["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca],
        );
    }
    // The two nodes of the CA form a cluster and replicate.
    register_http(c.node(0), "secure", "10.5.0.1", 1);
    register_http(c.node(0), "secure", "10.5.0.2", 1);
    register_http(c.node(0), "secure", "10.5.0.3", 1);
    let ok = wait_until(Duration::from_secs(10), || {
        c.node(1).endpoints("secure").len() == 3
    });
    assert!(ok, "nodes with certificates of the cluster CA replicate");
    // The rogue node is never UP for them, and what it writes reaches nobody.
    register_http(c.node(2), "rogue", "10.6.0.1", 1);
    std::thread::sleep(Duration::from_secs(3));
    for i in [0, 1] {
        assert!(
            c.node(i).endpoints("rogue").is_empty(),
            "node {i} took data from a rogue node"
        );
        let m = c.node(i).operator_metrics();
        let rogue = format!("127.0.0.1:{}", c.ports[2].0);
        let state = m["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|x| x["address"] == rogue.as_str()).cloned())
            .unwrap_or_default();
        assert_ne!(state["state"], "UP", "node {i} sees the rogue node UP: {m}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cluster_without_certificates_needs_an_explicit_insecure_flag() {
    let _serial = serial();
    let ports = pick_ports(2);
    let members = format!("127.0.0.1:{},127.0.0.1:{}", ports[0].0, ports[1].0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nacelle"))
        .args([
            "--bind",
            "127.0.0.1",
            "--http-port",
            &ports[0].0.to_string(),
        ])
        .args([
            "--grpc-port",
            &ports[0].1.to_string(),
            "--members",
            &members,
        ])
        .output()
        .expect("nacelle runs");
    assert!(!out.status.success());
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        err.contains("--insecure"),
        "the error names the way out: {err}"
    );
}
