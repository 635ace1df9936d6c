//! Bad input and misbehaving clients against the real binary: errors are answered, never
//! panics, and other clients are never disturbed.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{instance, naming_body, payload, raw_payload, Conn, Server};
use serde_json::{json, Value};
use wire::proto::{Metadata, Payload};

/// Asserts an `ErrorResponse` with `errorCode == code` (and a message).
fn assert_error(what: &str, kind: &str, v: &Value, code: i64) {
    assert_eq!(kind, "ErrorResponse", "{what}: {v}");
    assert_eq!(v["resultCode"], 500, "{what}: {v}");
    assert_eq!(v["errorCode"], code, "{what}: {v}");
    assert_eq!(v["success"], false, "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
}

/// Reads until the peer closes; true if it closed (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_wrongly_shaped_bodies_get_error_400_and_disturb_no_one() {
    let mut server = Server::start(&[]);
    let mut bystander = Conn::open(server.grpc).await;
    bystander.register("calm", "10.0.10.1", 1).await;
    let mut c = Conn::open(server.grpc).await;

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let ok_inst = instance("10.0.10.9", 9);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("InstanceRequest", b"{".to_vec()),
        ("InstanceRequest", b"\xff\xfe\x00".to_vec()),
        ("InstanceRequest", b"".to_vec()),
        ("InstanceRequest", b"null".to_vec()),
        ("InstanceRequest", b"[]".to_vec()),
        ("InstanceRequest", b"\"registerInstance\"".to_vec()),
        ("InstanceRequest", deep.clone().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": "registerInstance", "instance": 5}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": "registerInstance"}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": "registerInstance", "instance": {"ip": "10.0.10.9"}}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": "registerInstance", "instance": {"ip": "10.0.10.9", "port": "80"}}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": "registerInstance", "instance": {"ip": "10.0.10.9", "port": 1e30}}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": "registerInstance", "instance": {"ip": 10, "port": 80}}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": "registerInstance", "instance": {"ip": "10.0.10.9", "port": 80, "metadata": [1, 2]}}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": "explode", "instance": ok_inst}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x", "type": 7, "instance": ok_inst}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "", "type": "registerInstance", "instance": ok_inst}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "a@@b@@c", "type": "registerInstance", "instance": ok_inst}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "G1@@x", "groupName": "G2", "type": "registerInstance", "instance": ok_inst}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": "x".repeat(600), "type": "registerInstance", "instance": ok_inst}).to_string().into_bytes()),
        ("InstanceRequest", json!({"serviceName": ["x"], "type": "registerInstance", "instance": ok_inst}).to_string().into_bytes()),
        ("BatchInstanceRequest", json!({"serviceName": "x", "type": "batchRegisterInstance", "instances": {"a": 1}}).to_string().into_bytes()),
        ("BatchInstanceRequest", json!({"serviceName": "x", "type": "batchRegisterInstance", "instances": [5]}).to_string().into_bytes()),
        ("BatchInstanceRequest", json!({"serviceName": "x", "type": "batchRegisterInstance"}).to_string().into_bytes()),
        ("BatchInstanceRequest", json!({"serviceName": "x", "type": "registerInstance", "instances": [ok_inst]}).to_string().into_bytes()),
        ("ServiceQueryRequest", b"{".to_vec()),
        ("ServiceQueryRequest", json!({"serviceName": ["x"]}).to_string().into_bytes()),
        ("ServiceQueryRequest", json!({"serviceName": "x", "healthyOnly": "yes"}).to_string().into_bytes()),
        ("SubscribeServiceRequest", json!({"serviceName": "x", "subscribe": "yes"}).to_string().into_bytes()),
        ("SubscribeServiceRequest", json!({"serviceName": ""}).to_string().into_bytes()),
        ("SubscribeServiceRequest", deep.into_bytes()),
        ("ServiceListRequest", json!({"pageNo": "one"}).to_string().into_bytes()),
        ("ServiceListRequest", b"[1,2]".to_vec()),
    ];
    for (kind, body) in cases {
        let what = format!(
            "{kind} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        );
        let p = c
            .call_raw(raw_payload(kind, body))
            .await
            .unwrap_or_else(|s| panic!("{what}: gRPC status {s:?}"));
        let (k, v) = common::open(&p);
        assert_error(&what, &k, &v, 400);
    }
    // Nothing was registered, the offending connection and the bystander both still work.
    assert!(server.hosts("x").is_empty());
    let (kind, v) = c.register("x", "10.0.10.2", 2).await;
    assert_eq!(kind, "InstanceResponse", "{v}");
    let (kind, v) = bystander.query("calm").await;
    assert_eq!(kind, "QueryServiceResponse", "{v}");
    assert_eq!(
        common::service_info_endpoints(&v["serviceInfo"]),
        ["10.0.10.1:1"]
    );
    server.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_request_types_get_error_302_and_payloads_without_metadata_get_an_error() {
    let mut server = Server::start(&[]);
    let mut c = Conn::open(server.grpc).await;
    for kind in [
        "MadeUpRequest",
        "ConfigQueryRequest",
        "InstanceResponse",
        "x",
    ] {
        let (k, v) = c.call(kind, &naming_body("svc", json!({}))).await;
        assert_error(kind, &k, &v, 302);
    }
    let no_metadata = Payload {
        metadata: None,
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: br#"{"serviceName":"svc"}"#.to_vec(),
        }),
    };
    let empty_type = Payload {
        metadata: Some(Metadata {
            r#type: String::new(),
            client_ip: String::new(),
            headers: Default::default(),
        }),
        body: None,
    };
    let nothing = Payload {
        metadata: None,
        body: None,
    };
    for (what, p) in [
        ("no metadata", no_metadata),
        ("empty type", empty_type),
        ("nothing", nothing),
    ] {
        let p = c
            .call_raw(p)
            .await
            .unwrap_or_else(|s| panic!("{what}: gRPC status {s:?}"));
        let (k, v) = common::open(&p);
        assert_eq!(k, "ErrorResponse", "{what}: {v}");
        assert_eq!(v["resultCode"], 500, "{what}: {v}");
        assert_ne!(v["errorCode"], 0, "{what}: {v}");
    }
    // A request type with no body at all is parsed as `{}`: a missing service name.
    let p = c
        .call_raw(Payload {
            metadata: Some(Metadata {
                r#type: "InstanceRequest".into(),
                client_ip: String::new(),
                headers: Default::default(),
            }),
            body: None,
        })
        .await
        .unwrap();
    let (k, v) = common::open(&p);
    assert_error("InstanceRequest without body", &k, &v, 400);
    server.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_instances_are_refused_with_error_400_and_nothing_is_registered() {
    let mut server = Server::start(&[]);
    let mut c = Conn::open(server.grpc).await;
    let with = |patch: Value| {
        let mut i = instance("10.0.11.1", 80);
        for (k, v) in patch.as_object().unwrap() {
            i[k] = v.clone();
        }
        i
    };
    let bad = [
        (
            "cluster with underscore",
            with(json!({"clusterName": "bad_cluster"})),
        ),
        (
            "cluster with space",
            with(json!({"clusterName": "bad cluster"})),
        ),
        ("cluster with @@", with(json!({"clusterName": "a@@b"}))),
        ("port over 65535", with(json!({"port": 70000}))),
        ("negative port", with(json!({"port": -1}))),
        ("persistent", with(json!({"ephemeral": false}))),
        ("negative weight", with(json!({"weight": -1.0}))),
        ("empty ip", with(json!({"ip": ""}))),
        ("ip with spaces", with(json!({"ip": "10.0.0.1 ; rm"}))),
        (
            "beat interval above timeout",
            with(json!({"metadata": {"preserved.heart.beat.interval": "5000",
                                     "preserved.heart.beat.timeout": "1000"}})),
        ),
        (
            "beat interval not a number",
            with(json!({"metadata": {"preserved.heart.beat.interval": "soon"}})),
        ),
        (
            "metadata too large",
            with(json!({"metadata": {"pad": "x".repeat(70_000)}})),
        ),
    ];
    for (what, inst) in &bad {
        let (k, v) = c
            .call(
                "InstanceRequest",
                &naming_body(
                    "strict",
                    json!({"type": "registerInstance", "instance": inst}),
                ),
            )
            .await;
        assert_error(what, &k, &v, 400);
        let (k, v) = c
            .call(
                "BatchInstanceRequest",
                &naming_body(
                    "strict",
                    json!({"type": "batchRegisterInstance",
                           "instances": [instance("10.0.11.2", 80), inst]}),
                ),
            )
            .await;
        assert_error(&format!("batch with {what}"), &k, &v, 400);
    }
    let (k, v) = c
        .call(
            "InstanceRequest",
            &naming_body(
                "strict",
                json!({"type": "deregisterInstance", "instance": with(json!({"port": 70000}))}),
            ),
        )
        .await;
    assert_error("deregister port over 65535", &k, &v, 400);

    let (_, v) = c.query("strict").await;
    assert!(
        common::service_info_endpoints(&v["serviceInfo"]).is_empty(),
        "{v}"
    );
    assert!(server.hosts("strict").is_empty());
    // A valid dotted/dashed cluster name is fine.
    let (k, v) = c
        .call(
            "InstanceRequest",
            &naming_body(
                "strict",
                json!({"type": "registerInstance",
                       "instance": with(json!({"clusterName": "zone-1.a"}))}),
            ),
        )
        .await;
    assert_eq!(k, "InstanceResponse", "{v}");
    assert_eq!(server.hosts("strict")[0]["clusterName"], "zone-1.a");
    server.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_message_over_max_message_bytes_is_rejected_while_a_healthy_connection_keeps_working(
) {
    let mut server = Server::start(&["--max-message-bytes", "65536"]);
    let mut big = Conn::open(server.grpc).await;
    big.register("big-own", "10.0.12.1", 1).await;
    let mut healthy = Conn::open(server.grpc).await;
    healthy.register("steady", "10.0.12.2", 2).await;

    // A healthy client keeps registering and querying while the big messages arrive.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rounds = 0u32;
            while !stop.load(Ordering::Relaxed) || rounds < 5 {
                let port = 1000 + (rounds % 100) as u16;
                let (k, v) = healthy.register("steady", "10.0.12.2", port).await;
                assert_eq!(k, "InstanceResponse", "{v}");
                let (k, v) = healthy.query("steady").await;
                assert_eq!(k, "QueryServiceResponse", "{v}");
                assert_eq!(common::service_info_endpoints(&v["serviceInfo"]).len(), 1);
                rounds += 1;
            }
            (healthy, rounds)
        })
    };

    let oversized = naming_body(
        "big",
        json!({"type": "registerInstance",
               "instance": {"ip": "10.0.12.3", "port": 3, "metadata": {"pad": "x".repeat(100_000)}}}),
    );
    for _ in 0..3 {
        let r = big.call_raw(payload("InstanceRequest", &oversized)).await;
        let status = r.expect_err("a message over --max-message-bytes was accepted");
        assert!(
            matches!(
                status.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{status:?}"
        );
    }
    // Just under the limit is fine, on the same connection.
    let under = naming_body(
        "big",
        json!({"type": "registerInstance",
               "instance": {"ip": "10.0.12.3", "port": 3, "metadata": {"pad": "x".repeat(50_000)}}}),
    );
    let (k, v) = big.call("InstanceRequest", &under).await;
    assert_eq!(k, "InstanceResponse", "{v}");
    assert_eq!(server.hosts("big").len(), 1);

    // Too big on the bi-stream: that connection's stream fails and the connection is closed,
    // withdrawing its instances.
    big.send(payload("InstanceRequest", &oversized));
    server.wait_endpoints("big-own", &[], Duration::from_secs(5));
    server.wait_endpoints("big", &[], Duration::from_secs(5));

    stop.store(true, Ordering::Relaxed);
    let (mut healthy, rounds) = worker.await.unwrap();
    assert!(rounds >= 5);
    let (k, _) = healthy.query("steady").await;
    assert_eq!(k, "QueryServiceResponse");
    server.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_payload_on_the_bi_stream_closes_only_that_connection() {
    let mut server = Server::start(&[]);
    let mut bystander = Conn::open(server.grpc).await;
    bystander.register("near", "10.0.13.1", 1).await;
    let mut c = Conn::open(server.grpc).await;
    c.register("own", "10.0.13.2", 2).await;
    // Unknown acks and junk bodies of response types are tolerated.
    c.send(raw_payload(
        "NotifySubscriberResponse",
        b"{not json".to_vec(),
    ));
    c.send(raw_payload("SomethingResponse", b"[]".to_vec()));
    c.send(payload("HealthCheckRequest", &json!({})));
    let (k, _) = c.query("own").await;
    assert_eq!(k, "QueryServiceResponse");
    assert_eq!(server.endpoints("own"), ["10.0.13.2:2"]);
    // A payload without metadata on the stream closes that connection.
    c.send(Payload {
        metadata: None,
        body: None,
    });
    server.wait_endpoints("own", &[], Duration::from_secs(5));
    let (k, v) = bystander.query("near").await;
    assert_eq!(k, "QueryServiceResponse");
    assert_eq!(
        common::service_info_endpoints(&v["serviceInfo"]),
        ["10.0.13.1:1"]
    );

    // A malformed ConnectionSetupRequest closes the connection too.
    let mut d = Conn::bare(server.grpc).await;
    d.open_stream().await;
    d.send(raw_payload(
        "ConnectionSetupRequest",
        b"{\"labels\":5}".to_vec(),
    ));
    assert!(
        d.next_push(Duration::from_secs(5)).await.is_none(),
        "the stream stayed open"
    );
    server.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_on_the_grpc_port_close_that_connection_and_others_are_served() {
    let mut server = Server::start(&[]);
    let mut bystander = Conn::open(server.grpc).await;
    bystander.register("keep", "10.0.14.1", 1).await;
    let mut preface_then_junk = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface_then_junk.extend_from_slice(&[0xff; 64]);
    let mut preface_then_bad_settings = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // A SETTINGS frame on stream 1 with a length that is not a multiple of 6.
    preface_then_bad_settings.extend_from_slice(&[0, 0, 5, 4, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5]);
    let variants: Vec<(&str, Vec<u8>)> = vec![
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        (
            "an HTTP/1.1 request",
            b"GET /Request/request HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("preface then junk", preface_then_junk),
        (
            "preface then a bad SETTINGS frame",
            preface_then_bad_settings,
        ),
    ];
    for (what, bytes) in variants {
        let mut s = TcpStream::connect(("127.0.0.1", server.grpc)).unwrap();
        let _ = s.write_all(&bytes);
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "{what}: the server kept the connection open"
        );
    }
    let (k, v) = bystander.query("keep").await;
    assert_eq!(k, "QueryServiceResponse");
    assert_eq!(
        common::service_info_endpoints(&v["serviceInfo"]),
        ["10.0.14.1:1"]
    );
    server.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_on_the_http_port_are_refused_and_the_server_keeps_serving() {
    let mut server = Server::start(&[]);
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("binary junk", b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec()),
        ("bad version", b"GET / HTTP/9.9\r\n\r\n".to_vec()),
        ("bad content-length", b"POST /nacos/v1/ns/instance HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec()),
        ("header without colon", b"GET /nacos/v1/ns/operator/metrics HTTP/1.1\r\nHost x\r\nnonsense\r\n\r\n".to_vec()),
        ("bad chunk size", b"POST /nacos/v1/ns/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n".to_vec()),
        ("random bytes", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect()),
    ];
    for (what, bytes) in variants {
        let mut s = TcpStream::connect(("127.0.0.1", server.http)).unwrap();
        let _ = s.write_all(&bytes);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "{what}: connection left open");
        let text = String::from_utf8_lossy(&raw);
        if !raw.is_empty() {
            let status: u16 = text
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{what}: not an HTTP answer: {text:?}"));
            assert!(status >= 400, "{what}: answered {status}");
        }
    }
    server.assert_healthy().await;
    let r = server.http("GET", "/nacos/v1/ns/operator/metrics");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_that_never_speaks_is_closed_after_the_idle_time() {
    let server = Server::start(&["--client-idle-ms", "1000", "--client-detect-wait-ms", "500"]);
    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", server.grpc)).unwrap();
    // A second one that sends the HTTP/2 preface and then stays silent (no bi-stream).
    let mut preface_only = TcpStream::connect(("127.0.0.1", server.grpc)).unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(8)),
        "a silent connection was never closed"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    assert!(
        closed_within(&mut preface_only, Duration::from_secs(4)),
        "a connection without a bi-stream was never closed"
    );
    let ok = common::wait_until(Duration::from_secs(3), || {
        server.prometheus("nacelle_connections") == 0.0
            && server.prometheus("nacelle_connections_closed_by_server_total") >= 2.0
    });
    assert!(ok, "connections not accounted as closed by the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_client_detection_is_disconnected_and_its_instances_removed(
) {
    let server = Server::start(&["--client-idle-ms", "1000", "--client-detect-wait-ms", "500"]);
    let mut quiet = Conn::open(server.grpc).await;
    let (k, _) = quiet.register("detect", "10.0.15.1", 1).await;
    assert_eq!(k, "InstanceResponse");
    let registered_at = Instant::now();
    let mut answering = Conn::open(server.grpc).await;
    let (k, _) = answering.register("detect", "10.0.15.2", 2).await;
    assert_eq!(k, "InstanceResponse");

    // The answering client replies to every ClientDetectionRequest with its requestId.
    let detections = Arc::new(AtomicUsize::new(0));
    let mut rx = answering.rx.take().unwrap();
    let tx = answering.tx.clone().unwrap();
    let reader = {
        let detections = detections.clone();
        tokio::spawn(async move {
            while let Ok(Some(p)) = rx.message().await {
                let (kind, v) = common::open(&p);
                if kind == "ClientDetectionRequest" {
                    assert_eq!(v["module"], "internal", "{v}");
                    detections.fetch_add(1, Ordering::Relaxed);
                    let reply = payload(
                        "ClientDetectionResponse",
                        &json!({"resultCode": 200, "errorCode": 0,
                                "requestId": v["requestId"], "success": true}),
                    );
                    if tx.unbounded_send(reply).is_err() {
                        break;
                    }
                }
            }
        })
    };

    server.wait_endpoints("detect", &["10.0.15.2:2"], Duration::from_secs(10));
    let took = registered_at.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "removed before --client-idle-ms: {took:?}"
    );
    // The answering client is asked again and again, and stays.
    let asked = common::wait_until(Duration::from_secs(6), || {
        detections.load(Ordering::Relaxed) >= 2
    });
    assert!(
        asked,
        "detections seen: {}",
        detections.load(Ordering::Relaxed)
    );
    assert_eq!(server.endpoints("detect"), ["10.0.15.2:2"]);
    let (k, v) = answering.query("detect").await;
    assert_eq!(k, "QueryServiceResponse", "{v}");
    assert!(server.prometheus("nacelle_connections_closed_by_server_total") >= 1.0);
    // The quiet client's own calls now fail (its connection is gone; a reconnect is unregistered).
    match quiet
        .call_raw(payload("HealthCheckRequest", &json!({})))
        .await
    {
        Ok(p) => {
            let (k, v) = common::open(&p);
            assert_error("health check after disconnection", &k, &v, 301);
        }
        Err(_status) => {}
    }
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_pushes_is_disconnected_when_its_queue_is_full() {
    let mut server = Server::start(&["--conn-queue", "16", "--push-delay-ms", "0"]);
    // A small HTTP/2 window so the unread pushes back up into the server's queue quickly.
    let mut slow = Conn::open_with(server.grpc, |e| {
        e.initial_stream_window_size(Some(16 * 1024))
            .initial_connection_window_size(Some(64 * 1024))
    })
    .await;
    slow.register("slow-own", "10.0.16.1", 1).await;
    let (k, _) = slow.subscribe("flood").await;
    assert_eq!(k, "SubscribeServiceResponse");

    // A well-behaved subscriber of the same service, reading and acking everything.
    let mut good = Conn::open(server.grpc).await;
    good.subscribe("flood").await;
    let stop = Arc::new(AtomicBool::new(false));
    let good_reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut pushes = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if good
                    .wait_push(Duration::from_millis(200), |k, _| {
                        k == "NotifySubscriberRequest"
                    })
                    .await
                    .is_some()
                {
                    pushes += 1;
                }
            }
            (good, pushes)
        })
    };

    let mut flooder = Conn::open(server.grpc).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round = 0u64;
    let disconnected = loop {
        let instances: Vec<Value> = (0..50)
            .map(|i| {
                let mut inst = instance(&format!("10.0.17.{i}"), 80);
                inst["metadata"] = json!({"round": round.to_string(), "pad": "p".repeat(200)});
                inst
            })
            .collect();
        let (k, v) = flooder
            .call(
                "BatchInstanceRequest",
                &naming_body(
                    "flood",
                    json!({"type": "batchRegisterInstance", "instances": instances}),
                ),
            )
            .await;
        assert_eq!(k, "BatchInstanceResponse", "{v}");
        round += 1;
        if round.is_multiple_of(10) && server.hosts("slow-own").is_empty() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(
        disconnected,
        "the non-reading client was not disconnected after {round} changes"
    );
    assert!(server.prometheus("nacelle_pushes_dropped_total") >= 1.0);
    assert!(server.prometheus("nacelle_connections_closed_by_server_total") >= 1.0);
    match slow
        .call_raw(payload("HealthCheckRequest", &json!({})))
        .await
    {
        Ok(p) => {
            let (k, v) = common::open(&p);
            assert_error("health check after disconnection", &k, &v, 301);
        }
        Err(_status) => {}
    }

    // The reading subscriber kept up, stayed connected, and sees the latest state.
    stop.store(true, Ordering::Relaxed);
    let (mut good, pushes) = good_reader.await.unwrap();
    assert!(pushes >= 1, "the reading subscriber got no push");
    let (k, _) = good
        .call("HealthCheckRequest", &json!({"headers": {}}))
        .await;
    assert_eq!(k, "HealthCheckResponse");
    let (k, _) = flooder.query("flood").await;
    assert_eq!(k, "QueryServiceResponse");
    assert_eq!(server.hosts("flood").len(), 50);
    server.assert_healthy().await;
}
