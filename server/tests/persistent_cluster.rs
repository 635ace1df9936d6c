//! Persistent instances on a cluster of real `nacelle` processes (127.0.0.1, Raft over the
//! QUIC peer transport): writes through any node reach every node; `kill -9` of every node
//! loses nothing acknowledged; `kill -9` of the leader under load loses nothing acknowledged
//! and writes resume; a node without a majority refuses writes within the bound and the group
//! recovers; a node added through `cluster.conf` joins and gets everything; a health flip
//! decided by one node is seen on every node. Persistent instances are registered only on
//! 127.0.0.1: the servers health-check them.

// Each test holds the serialising guard for its whole run, awaits included.
#![allow(clippy::await_holding_lock)]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{pick_ports, serial, TestCluster};
use common::{enc, try_http_at, wait_until, Server};

const NS: &str = "/nacos/v1/ns";

fn register_path(service: &str, port: u16) -> String {
    format!("{NS}/instance?serviceName={service}&ip=127.0.0.1&port={port}&ephemeral=false")
}

/// Registers through `s`; the answer's status and text.
fn try_register(s: &Server, service: &str, port: u16) -> (u16, String) {
    match try_http_at(&s.ip, s.http, "POST", &register_path(service, port), None) {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

fn register(s: &Server, service: &str, port: u16) {
    let (status, text) = try_register(s, service, port);
    assert_eq!((status, text.as_str()), (200, "ok"), "register {port}");
}

/// Turns health checks off for the DEFAULT cluster of `service` (nothing listens at the
/// instances of the durability tests).
fn no_checks(s: &Server, service: &str) {
    let r = s.http(
        "PUT",
        &format!(
            "{NS}/cluster?serviceName={service}&clusterName=DEFAULT&checkPort=80&useInstancePort4Check=true&healthChecker={}",
            enc(r#"{"type":"NONE"}"#)
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn ports_of(s: &Server, service: &str) -> BTreeSet<u16> {
    s.hosts(service)
        .iter()
        .map(|h| {
            assert_eq!(h["ephemeral"], false, "{h}");
            h["port"].as_u64().unwrap() as u16
        })
        .collect()
}

fn role(s: &Server) -> Option<i64> {
    let text = try_http_at(&s.ip, s.http, "GET", "/metrics", None)
        .ok()?
        .text();
    common::prometheus_sample(&text, "nacelle_raft_role").map(|v| v as i64)
}

/// The index of the Raft leader, once one running node leads and every running node
/// follows it.
fn wait_leader(c: &TestCluster, within: Duration) -> usize {
    let mut leader = None;
    let ok = wait_until(within, || {
        let roles: Vec<(usize, Option<i64>)> = c.running().map(|(i, s)| (i, role(s))).collect();
        let leaders: Vec<usize> = roles
            .iter()
            .filter(|(_, r)| *r == Some(0))
            .map(|(i, _)| *i)
            .collect();
        let followers = roles.iter().filter(|(_, r)| *r == Some(1)).count();
        leader = leaders.first().copied();
        leaders.len() == 1 && followers + 1 == roles.len()
    });
    if !ok {
        for (i, s) in c.running() {
            eprintln!("node {i}: role {:?}\n{}", role(s), s.log());
        }
        panic!("no Raft leader within {within:?}");
    }
    leader.unwrap()
}

/// Waits until every running node lists exactly `want` for `service`.
fn wait_ports_everywhere(c: &TestCluster, service: &str, want: &BTreeSet<u16>, within: Duration) {
    let ok = wait_until(within, || {
        c.running().all(|(_, s)| &ports_of(s, service) == want)
    });
    if !ok {
        for (i, s) in c.running() {
            let got = ports_of(s, service);
            let missing: Vec<_> = want.difference(&got).take(10).collect();
            let extra: Vec<_> = got.difference(want).take(10).collect();
            eprintln!(
                "node {i}: missing {missing:?}, extra {extra:?}\n{}",
                s.log()
            );
        }
        panic!("{service} did not converge on every node within {within:?}");
    }
}

#[test]
fn writes_on_any_node_reach_every_node_and_survive_kill_9_of_every_node() {
    let _serial = serial();
    let mut c = TestCluster::start(3, 3, &["--insecure"]);
    c.wait_formed(Duration::from_secs(20));
    wait_leader(&c, Duration::from_secs(15));
    // The definition goes to the node that registered: a node only knows a service once
    // the registration is applied there.
    register(c.node(0), "db", 1);
    no_checks(c.node(0), "db");
    let mut want = BTreeSet::from([1]);
    for port in 10..100u16 {
        register(c.node(usize::from(port) % 3), "db", port);
        want.insert(port);
    }
    wait_ports_everywhere(&c, "db", &want, Duration::from_secs(10));

    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.start_node(i);
    }
    c.wait_formed(Duration::from_secs(20));
    wait_ports_everywhere(&c, "db", &want, Duration::from_secs(15));
    wait_leader(&c, Duration::from_secs(15));
    // The cluster definition survived too: nobody probes the instances, so all stay healthy.
    for (i, s) in c.running() {
        assert!(
            s.hosts("db").iter().all(|h| h["healthy"] == true),
            "node {i}: {:?}",
            s.hosts("db")
        );
    }
    for port in 10..40u16 {
        let path = format!("{NS}/instance?serviceName=db&ip=127.0.0.1&port={port}");
        let r = c.node(2).http("DELETE", &path);
        assert_eq!(r.status, 200, "{}", r.text());
        want.remove(&port);
    }
    wait_ports_everywhere(&c, "db", &want, Duration::from_secs(10));
}

#[test]
fn kill_9_of_the_leader_under_load_loses_no_acknowledged_write_and_writes_resume() {
    let _serial = serial();
    let mut c = TestCluster::start(3, 3, &["--insecure"]);
    c.wait_formed(Duration::from_secs(20));
    let leader = wait_leader(&c, Duration::from_secs(15));
    register(c.node(0), "load", 1);
    no_checks(c.node(0), "load");

    // Writers through every node but the leader, one request in flight each, as SDKs do.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<(u16, Instant)>::new()));
    let tried = Arc::new(Mutex::new(BTreeSet::<u16>::new()));
    let writers: Vec<_> = c
        .running()
        .filter(|(i, _)| *i != leader)
        .enumerate()
        .map(|(w, (_, s))| {
            let (ip, http) = (s.ip.clone(), s.http);
            let (stop, acked, tried) = (stop.clone(), acked.clone(), tried.clone());
            std::thread::spawn(move || {
                let mut port = 1000 + w as u16 * 20_000;
                while !stop.load(Ordering::Relaxed) {
                    tried.lock().unwrap().insert(port);
                    let path = register_path("load", port);
                    match try_http_at(&ip, http, "POST", &path, None) {
                        Ok(r) if r.status == 200 => {
                            acked.lock().unwrap().push((port, Instant::now()));
                            port += 1;
                        }
                        Ok(r) => {
                            assert_eq!(r.status, 503, "{}", r.text());
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let before = acked.lock().unwrap().len();
    assert!(before > 10, "only {before} writes before the kill");
    let killed_at = Instant::now();
    c.kill(leader);
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let resumed = acked
        .iter()
        .find(|(_, at)| *at > killed_at + Duration::from_millis(50))
        .map(|(_, at)| at.duration_since(killed_at));
    // Generous: the bound the issue names is 3 s on a quiet machine; this one is loaded.
    assert!(
        resumed.is_some_and(|d| d < Duration::from_secs(7)),
        "writes did not resume after the leader's kill: {resumed:?}"
    );
    eprintln!(
        "{} writes acknowledged, {before} before the kill; writes resumed {resumed:?} after it",
        acked.len()
    );

    c.start_node(leader);
    c.wait_formed(Duration::from_secs(20));
    let mut want: BTreeSet<u16> = acked.iter().map(|(p, _)| *p).collect();
    want.insert(1);
    // Writes that timed out may or may not be there; nothing else may.
    let tried = tried.lock().unwrap().clone();
    let ok = wait_until(Duration::from_secs(15), || {
        c.running().all(|(_, s)| {
            let got = ports_of(s, "load");
            want.is_subset(&got) && got.iter().all(|p| *p == 1 || tried.contains(p))
        })
    });
    if !ok {
        for (i, s) in c.running() {
            let got = ports_of(s, "load");
            let lost: Vec<_> = want.difference(&got).take(10).collect();
            eprintln!("node {i}: lost {lost:?}\n{}", s.log());
        }
        panic!("acknowledged writes missing after the leader's kill");
    }
}

#[test]
fn a_node_without_a_majority_refuses_writes_within_the_bound_and_the_group_recovers() {
    let _serial = serial();
    let mut c = TestCluster::start(3, 3, &["--insecure"]);
    c.wait_formed(Duration::from_secs(20));
    wait_leader(&c, Duration::from_secs(15));
    register(c.node(0), "alone", 1);
    no_checks(c.node(0), "alone");
    c.kill(1);
    c.kill(2);
    // Leadership lapses once the followers are gone; the write must end in a clear 503
    // within the bound (3 s), never hang, never succeed.
    let started = Instant::now();
    let (status, text) = try_register(c.node(0), "alone", 2);
    let took = started.elapsed();
    let (status, text, took) = if status == 200 {
        // The leader may still have had its lease: the next write cannot.
        std::thread::sleep(Duration::from_secs(3));
        let started = Instant::now();
        let (s, t) = try_register(c.node(0), "alone", 3);
        (s, t, started.elapsed())
    } else {
        (status, text, took)
    };
    assert_eq!(status, 503, "{text}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!text.is_empty());

    c.start_node(1);
    c.start_node(2);
    c.wait_formed(Duration::from_secs(20));
    wait_leader(&c, Duration::from_secs(15));
    register(c.node(0), "alone", 4);
    let got = ports_of(c.node(2), "alone");
    // 2 or 3 may have been written before the 503 (a timeout is "maybe"), 1 and 4 surely.
    let ok = wait_until(Duration::from_secs(10), || {
        c.running().all(|(_, s)| {
            let p = ports_of(s, "alone");
            p.contains(&1) && p.contains(&4)
        })
    });
    assert!(ok, "node 2: {got:?}");
}

#[test]
fn a_node_added_to_cluster_conf_joins_and_gets_every_persistent_instance() {
    let _serial = serial();
    let ports = pick_ports(4);
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("cluster.conf");
    let line = |n: usize| -> String {
        ports[..n]
            .iter()
            .map(|(h, _)| format!("127.0.0.1:{h}\n"))
            .collect()
    };
    std::fs::write(&conf, line(3)).unwrap();
    let data: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |i: usize| -> Server {
        let d = data[i].path().to_str().unwrap().to_string();
        let c = conf.to_str().unwrap().to_string();
        let args = ["--insecure", "--cluster-conf", &c, "--data-dir", &d];
        Server::spawn("127.0.0.1", ports[i].0, ports[i].1, &args)
            .unwrap_or_else(|log| panic!("node {i} did not start:\n{log}"))
    };
    let nodes: Vec<Server> = (0..3).map(start).collect();
    let voters = |s: &Server| {
        let text = s.http("GET", "/metrics").text();
        common::prometheus_sample(&text, "nacelle_raft_voters").unwrap_or(0.0) as usize
    };
    assert!(
        wait_until(Duration::from_secs(20), || nodes
            .iter()
            .all(|s| voters(s) == 3 && role(s).is_some_and(|r| r <= 1))),
        "the group of 3 did not form: {}",
        nodes[0].log()
    );
    let leader = wait_until(Duration::from_secs(10), || {
        nodes.iter().any(|s| role(s) == Some(0))
    });
    assert!(leader);
    register(&nodes[0], "grow", 1);
    no_checks(&nodes[0], "grow");
    let mut want = BTreeSet::from([1]);
    for port in 10..60u16 {
        register(&nodes[usize::from(port) % 3], "grow", port);
        want.insert(port);
    }

    std::fs::write(&conf, line(4)).unwrap();
    let fourth = start(3);
    let ok = wait_until(Duration::from_secs(30), || {
        ports_of(&fourth, "grow") == want && voters(&fourth) == 4
    });
    assert!(
        ok,
        "the new node has {:?} voters and {} of {} instances:\n{}",
        voters(&fourth),
        ports_of(&fourth, "grow").len(),
        want.len(),
        fourth.log()
    );
    // It takes writes too, which every node sees.
    register(&fourth, "grow", 99);
    want.insert(99);
    let all = nodes.iter().chain(std::iter::once(&fourth));
    for s in all {
        assert!(
            wait_until(Duration::from_secs(10), || ports_of(s, "grow") == want),
            "{}",
            s.log()
        );
    }
}

#[test]
fn a_health_flip_decided_by_one_node_is_seen_on_every_node() {
    let _serial = serial();
    let c = TestCluster::start(3, 3, &["--insecure"]);
    c.wait_formed(Duration::from_secs(20));
    wait_leader(&c, Duration::from_secs(15));
    // Real listeners the checks connect to (accepting, so their backlogs never fill): one
    // that closes, and a steady one — with every instance unhealthy, the protect threshold
    // (0) would list them all as healthy, as Nacos does.
    let open = Arc::new(AtomicBool::new(true));
    let steady = Arc::new(AtomicBool::new(true));
    let listen = |flag: &Arc<AtomicBool>| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let accepting = flag.clone();
        let thread = std::thread::spawn(move || {
            while accepting.load(Ordering::Relaxed) {
                if listener.accept().is_err() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        (port, thread)
    };
    let (port, acceptor) = listen(&open);
    let (steady_port, steady_acceptor) = listen(&steady);
    register(c.node(1), "checked", steady_port);
    register(c.node(1), "checked", port);
    let healthy_everywhere = |want: bool| {
        c.running().all(|(_, s)| {
            let hosts = s.hosts("checked");
            hosts.len() == 2
                && hosts.iter().all(|h| {
                    let expect = want || h["port"] == steady_port;
                    h["healthy"] == expect
                })
        })
    };
    // Healthy at registration, and it stays so while the listener answers.
    assert!(wait_until(Duration::from_secs(5), || healthy_everywhere(
        true
    )));
    std::thread::sleep(Duration::from_secs(6));
    assert!(healthy_everywhere(true), "a false flip");
    open.store(false, Ordering::Relaxed);
    acceptor.join().unwrap();
    // The listener is gone: connections are refused, which flips at the next check (5 s).
    if !wait_until(Duration::from_secs(15), || healthy_everywhere(false)) {
        for (i, s) in c.running() {
            let metrics = s.http("GET", "/metrics").text();
            let health: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("nacelle_health"))
                .collect();
            eprintln!(
                "node {i}: {:?}\n{health:?}\n{}",
                s.hosts("checked"),
                s.log()
            );
        }
        panic!("the flip did not reach every node");
    }
    steady.store(false, Ordering::Relaxed);
    steady_acceptor.join().unwrap();
}
