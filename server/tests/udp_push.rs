//! UDP push to Nacos 1.x HTTP clients, against the real binary with real UDP sockets on
//! 127.0.0.0/8 only (a push goes to the subscriber's address; nothing else is contacted).
//!
//! A test plays the Node SDK: it opens a UDP socket, lists a service with `udpPort` and the
//! SDK's User-Agent, and reads pushes (acking them or not).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{enc, read_response, wait_until, HttpResp, Server};
use serde_json::Value;
use wire::udp_push::{decode_push, encode_ack, PushPacket};

const NODE_UA: &str = "Nacos-Java-Client:v1.0.0";

/// A GET with a chosen User-Agent.
fn get_as(server: &Server, path: &str, user_agent: &str) -> HttpResp {
    let mut s = TcpStream::connect(("127.0.0.1", server.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nUser-Agent: {user_agent}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    read_response(&mut s).unwrap()
}

fn list_path(service: &str, udp_port: u16, extra: &str) -> String {
    format!(
        "/nacos/v1/ns/instance/list?serviceName={}&udpPort={udp_port}&clientIP=127.0.0.1&healthyOnly=false{extra}",
        enc(service)
    )
}

/// Lists `service` as the Node SDK does, naming `sock` as the push target.
fn subscribe(server: &Server, service: &str, sock: &UdpSocket) {
    let port = sock.local_addr().unwrap().port();
    let r = get_as(server, &list_path(service, port, ""), NODE_UA);
    assert_eq!(r.status, 200, "{}", r.text());
}

fn register(server: &Server, service: &str, ip: &str, port: u16, extra: &str) {
    let r = server.http(
        "POST",
        &format!(
            "/nacos/v1/ns/instance?serviceName={}&ip={ip}&port={port}{extra}",
            enc(service)
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn socket(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// The next push on `sock` within `within`, with its sender (the server's push socket).
fn next_push(sock: &UdpSocket, within: Duration) -> Option<(PushPacket, SocketAddr)> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            return Some((decode_push(&buf[..n]).unwrap(), from));
        }
    }
    None
}

fn endpoints(p: &PushPacket) -> Vec<String> {
    let v: Value = serde_json::from_str(&p.data).unwrap();
    let mut e: Vec<String> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{}:{}", h["ip"].as_str().unwrap(), h["port"]))
        .collect();
    e.sort();
    e
}

fn ack(sock: &UdpSocket, p: &PushPacket, to: SocketAddr) {
    sock.send_to(&encode_ack(p.ref_time, false), to).unwrap();
}

#[test]
fn changes_are_pushed_within_100_ms_and_an_ack_stops_the_resend() {
    let server = Server::start(&["--udp-push-ack-timeout-ms", "400"]);
    let sock = socket("127.0.0.1");
    subscribe(&server, "udp-fast", &sock);
    let mut latencies = Vec::new();
    for i in 0..5u16 {
        let started = Instant::now();
        register(&server, "udp-fast", "10.0.0.1", 8000 + i, "");
        let (p, from) = next_push(&sock, Duration::from_secs(2)).expect("a push");
        latencies.push(started.elapsed());
        assert_eq!(p.kind, "dom");
        let expected: Vec<String> = (0..=i).map(|j| format!("10.0.0.1:{}", 8000 + j)).collect();
        assert_eq!(endpoints(&p), expected);
        let info: Value = serde_json::from_str(&p.data).unwrap();
        assert_eq!(info["name"], "DEFAULT_GROUP@@udp-fast");
        ack(&sock, &p, from);
    }
    latencies.sort();
    assert!(
        latencies[2] <= Duration::from_millis(100),
        "median push latency {:?} (all: {latencies:?})",
        latencies[2]
    );
    // Acked: nothing comes again after the ack timeout.
    assert!(next_push(&sock, Duration::from_millis(1_000)).is_none());
    assert_eq!(server.prometheus("nacelle_udp_push_acked_total"), 5.0);
    assert_eq!(server.prometheus("nacelle_udp_push_resent_total"), 0.0);
    assert_eq!(server.prometheus("nacelle_udp_push_targets"), 1.0);
}

#[test]
fn without_an_ack_a_push_is_sent_exactly_once_more() {
    let server = Server::start(&["--udp-push-ack-timeout-ms", "300"]);
    let sock = socket("127.0.0.1");
    subscribe(&server, "udp-noack", &sock);
    register(&server, "udp-noack", "10.0.0.2", 80, "");
    let (first, _) = next_push(&sock, Duration::from_secs(2)).expect("a push");
    let sent = Instant::now();
    let (again, _) = next_push(&sock, Duration::from_secs(2)).expect("a resend");
    let gap = sent.elapsed();
    assert_eq!(again, first, "the resend is the same packet");
    assert!(gap >= Duration::from_millis(200), "resent after {gap:?}");
    assert!(
        next_push(&sock, Duration::from_millis(1_000)).is_none(),
        "one resend only"
    );
    assert_eq!(server.prometheus("nacelle_udp_push_resent_total"), 1.0);
    assert_eq!(server.prometheus("nacelle_udp_push_failed_total"), 1.0);
}

#[test]
fn persistent_and_large_services_are_pushed_gzipped_from_1_kib() {
    let server = Server::start(&[]);
    let sock = socket("127.0.0.1");
    subscribe(&server, "udp-big", &sock);
    // Persistent instances (written through the standalone Raft group) are changes too.
    register(&server, "udp-big", "10.0.1.1", 80, "&ephemeral=false");
    let (p, from) = next_push(&sock, Duration::from_secs(2)).expect("a push");
    assert_eq!(endpoints(&p), vec!["10.0.1.1:80"]);
    ack(&sock, &p, from);
    for i in 2..=20 {
        register(
            &server,
            "udp-big",
            &format!("10.0.1.{i}"),
            80,
            "&ephemeral=false",
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65_536];
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    loop {
        assert!(Instant::now() < deadline, "no push with all 20 instances");
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let p = decode_push(&buf[..n]).unwrap();
        ack(&sock, &p, from);
        if endpoints(&p).len() == 20 {
            assert_eq!(
                &buf[..2],
                &[0x1f, 0x8b],
                "a {n}-byte push of 20 hosts is gzipped"
            );
            break;
        }
    }
}

#[test]
fn a_target_is_kept_by_list_calls_and_forgotten_after_the_ttl() {
    let server = Server::start(&["--udp-push-ttl-ms", "800"]);
    let sock = socket("127.0.0.1");
    for _ in 0..4 {
        subscribe(&server, "udp-ttl", &sock);
        std::thread::sleep(Duration::from_millis(300));
    }
    // 1.2 s after the first call, 300 ms after the last: still there.
    register(&server, "udp-ttl", "10.0.2.1", 80, "");
    let (p, from) = next_push(&sock, Duration::from_secs(2)).expect("kept by refreshes");
    ack(&sock, &p, from);
    assert!(wait_until(Duration::from_secs(3), || {
        server.prometheus("nacelle_udp_push_targets") == 0.0
    }));
    assert_eq!(server.prometheus("nacelle_udp_push_expired_total"), 1.0);
    register(&server, "udp-ttl", "10.0.2.2", 80, "");
    assert!(
        next_push(&sock, Duration::from_millis(500)).is_none(),
        "expired"
    );
}

#[test]
fn only_push_capable_user_agents_get_pushes() {
    let server = Server::start(&[]);
    let sock = socket("127.0.0.1");
    let port = sock.local_addr().unwrap().port();
    for ua in [
        "Nacos-Python-Client:v0.1.16",
        "curl/8.5",
        "Nacos-Java-Client:v0.0.1",
    ] {
        let r = get_as(&server, &list_path("udp-ua", port, ""), ua);
        assert_eq!(r.status, 200);
    }
    register(&server, "udp-ua", "10.0.3.1", 80, "");
    assert!(next_push(&sock, Duration::from_millis(500)).is_none());
    assert_eq!(server.prometheus("nacelle_udp_push_targets"), 0.0);
    let r = get_as(
        &server,
        &list_path("udp-ua", port, ""),
        "Nacos-Go-Client:v1.1.6",
    );
    assert_eq!(r.status, 200);
    register(&server, "udp-ua", "10.0.3.2", 80, "");
    assert!(next_push(&sock, Duration::from_secs(2)).is_some());
}

/// Two sockets on the same port of 127.0.0.1 and 127.0.0.2.
fn socket_pair() -> (UdpSocket, UdpSocket) {
    for _ in 0..20 {
        let a = socket("127.0.0.1");
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = UdpSocket::bind(("127.0.0.2", port)) {
            b.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[test]
fn a_forged_client_ip_is_ignored_unless_allowed() {
    let server = Server::start(&[]);
    let (real, claimed) = socket_pair();
    let port = real.local_addr().unwrap().port();
    let path =
        list_path("udp-forged", port, "").replace("clientIP=127.0.0.1", "clientIP=127.0.0.2");
    assert_eq!(get_as(&server, &path, NODE_UA).status, 200);
    register(&server, "udp-forged", "10.0.4.1", 80, "");
    assert!(
        next_push(&real, Duration::from_secs(2)).is_some(),
        "to the source"
    );
    assert!(
        next_push(&claimed, Duration::from_millis(300)).is_none(),
        "not to clientIP"
    );
    drop(server);

    let server = Server::start(&["--udp-push-client-ip"]);
    assert_eq!(get_as(&server, &path, NODE_UA).status, 200);
    register(&server, "udp-forged", "10.0.4.1", 80, "");
    assert!(
        next_push(&claimed, Duration::from_secs(2)).is_some(),
        "to clientIP"
    );
    assert!(next_push(&real, Duration::from_millis(300)).is_none());
}

#[test]
fn floods_of_list_calls_and_bad_datagrams_stay_bounded() {
    let server = Server::start(&["--udp-push-max-per-source", "40", "--udp-push-rate", "1000"]);
    let sock = socket("127.0.0.1");
    subscribe(&server, "udp-flood", &sock);
    // 300 more targets from the same source, on ports nobody listens to (loopback only).
    let base = sock.local_addr().unwrap().port();
    for i in 1..=300u16 {
        let port = base.wrapping_add(i).max(1024);
        let r = get_as(&server, &list_path("udp-flood", port, ""), NODE_UA);
        assert_eq!(r.status, 200, "a refused target still gets its answer");
    }
    let targets = server.prometheus("nacelle_udp_push_targets");
    assert!(targets <= 40.0, "{targets} targets for one source");
    assert!(server.prometheus("nacelle_udp_push_refused_total") >= 260.0);
    register(&server, "udp-flood", "10.0.5.1", 80, "");
    let (p, from) = next_push(&sock, Duration::from_secs(2)).expect("the first target gets pushes");
    // Garbage, forged and late acks at the push socket: counted, nothing breaks.
    for bad in [
        &b"not json"[..],
        b"{\"type\":\"push-ack\",\"lastRefTime\":-5}",
        &[0x1f, 0x8b, 8, 0, 0, 0],
        &vec![b'['; 60_000],
    ] {
        sock.send_to(bad, from).unwrap();
    }
    sock.send_to(&encode_ack(p.ref_time + 1000, true), from)
        .unwrap();
    ack(&sock, &p, from);
    ack(&sock, &p, from);
    assert!(wait_until(Duration::from_secs(2), || {
        server.prometheus("nacelle_udp_push_malformed_acks_total") == 4.0
            && server.prometheus("nacelle_udp_push_unmatched_acks_total") == 2.0
            && server.prometheus("nacelle_udp_push_acked_total") == 1.0
    }));
    register(&server, "udp-flood", "10.0.5.2", 80, "");
    let (p, _) = next_push(&sock, Duration::from_secs(2)).expect("still pushing");
    assert_eq!(endpoints(&p).len(), 2);
}
