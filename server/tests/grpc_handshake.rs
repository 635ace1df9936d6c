//! The Nacos gRPC handshake against the real binary: ServerCheck, ConnectionSetup on the
//! bi-stream, SetupAck, health checks and the 301 answer for unregistered connections.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{naming_body, payload, Conn, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_answers_a_connection_id_naming_this_connection() {
    let server = Server::start(&[]);
    let mut c = Conn::bare(server.grpc).await;
    let (kind, v) = c
        .call(
            "ServerCheckRequest",
            &json!({"headers": {}, "requestId": "", "module": ""}),
        )
        .await;
    assert_eq!(kind, "ServerCheckResponse", "{v}");
    assert_eq!(v["resultCode"], 200);
    assert_eq!(v["errorCode"], 0);
    assert_eq!(v["success"], true);
    assert_eq!(v["supportAbilityNegotiation"], true);
    // `<epochMs>_<remoteIp>_<remotePort>`
    let id = v["connectionId"].as_str().unwrap();
    let parts: Vec<&str> = id.split('_').collect();
    assert_eq!(parts.len(), 3, "{id}");
    let epoch_ms: u64 = parts[0].parse().unwrap();
    assert!(epoch_ms > 1_600_000_000_000, "{id}");
    assert_eq!(parts[1], "127.0.0.1");
    let port: u16 = parts[2].parse().unwrap();
    assert!(port > 0 && port != server.grpc);

    // The id is bound to the HTTP/2 connection: asking again on it gives the same id,
    // another connection gets another one.
    let (_, again) = c.call("ServerCheckRequest", &json!({"headers": {}})).await;
    assert_eq!(again["connectionId"], v["connectionId"]);
    let mut other = Conn::bare(server.grpc).await;
    let (_, v2) = other
        .call("ServerCheckRequest", &json!({"headers": {}}))
        .await;
    assert_ne!(v2["connectionId"], v["connectionId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_requests_before_connection_setup_get_error_301_until_setup_is_acked() {
    let server = Server::start(&[]);
    let mut c = Conn::bare(server.grpc).await;
    let register = naming_body(
        "handshake-svc",
        json!({"type": "registerInstance", "instance": common::instance("10.0.0.1", 8080)}),
    );

    // No stream at all yet.
    let (kind, v) = c.call("InstanceRequest", &register).await;
    assert_eq!(kind, "ErrorResponse", "{v}");
    assert_eq!(v["resultCode"], 500);
    assert_eq!(v["errorCode"], 301);
    assert_eq!(v["success"], false);
    let (kind, v) = c
        .call(
            "HealthCheckRequest",
            &json!({"headers": {}, "module": "internal"}),
        )
        .await;
    assert_eq!(
        (kind.as_str(), v["errorCode"].as_i64()),
        ("ErrorResponse", Some(301))
    );

    // The stream is open but no ConnectionSetupRequest was sent: still unregistered.
    c.open_stream().await;
    let (kind, v) = c.call("InstanceRequest", &register).await;
    assert_eq!(
        (kind.as_str(), v["errorCode"].as_i64()),
        ("ErrorResponse", Some(301)),
        "{v}"
    );
    // A naming request sent on the stream itself is not a setup either.
    c.send(payload("InstanceRequest", &register));
    let (kind, v) = c.query("handshake-svc").await;
    assert_eq!(
        (kind.as_str(), v["errorCode"].as_i64()),
        ("ErrorResponse", Some(301)),
        "{v}"
    );
    assert!(server.hosts("handshake-svc").is_empty());

    // Setup with an abilityTable: the server pushes SetupAckRequest.
    c.setup().await;
    let (kind, ack) = c
        .next_push(Duration::from_secs(5))
        .await
        .expect("no SetupAckRequest");
    assert_eq!(kind, "SetupAckRequest", "{ack}");
    assert!(ack["abilityTable"].is_object(), "{ack}");
    assert!(ack["requestId"].is_string(), "{ack}");

    let (kind, v) = c.call("InstanceRequest", &register).await;
    assert_eq!(kind, "InstanceResponse", "{v}");
    assert_eq!(v["resultCode"], 200);
    assert_eq!(v["errorCode"], 0);
    assert_eq!(v["type"], "registerInstance");
    assert_eq!(server.endpoints("handshake-svc"), ["10.0.0.1:8080"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_after_setup_answers_health_check_response() {
    let server = Server::start(&[]);
    let mut c = Conn::open(server.grpc).await;
    for _ in 0..3 {
        let (kind, v) = c
            .call(
                "HealthCheckRequest",
                &json!({"headers": {}, "module": "internal"}),
            )
            .await;
        assert_eq!(kind, "HealthCheckResponse", "{v}");
        assert_eq!(v["resultCode"], 200);
        assert_eq!(v["errorCode"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_order_setup_without_ability_table_then_server_check_works_without_setup_ack() {
    // nacos-sdk-rust opens the stream and sets up before its ServerCheckRequest, with the old
    // `abilities` object instead of `abilityTable`.
    let server = Server::start(&[]);
    let mut c = Conn::bare(server.grpc).await;
    c.open_stream().await;
    c.send(payload(
        "ConnectionSetupRequest",
        &json!({"clientVersion": "Nacos-Rust-Client:0.8.3", "tenant": "",
                "labels": {"module": "naming"},
                "abilities": {"remoteAbility": {"supportRemoteConnection": true}},
                "headers": {}, "requestId": null}),
    ));
    // Health checks until the setup has been processed (the SDK retries the same way).
    let mut ok = false;
    for _ in 0..100 {
        let (kind, _) = c.call("HealthCheckRequest", &json!({"headers": {}})).await;
        if kind == "HealthCheckResponse" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the connection never became registered");
    let (kind, v) = c.call("ServerCheckRequest", &json!({"headers": {}})).await;
    assert_eq!(kind, "ServerCheckResponse");
    assert!(!v["connectionId"].as_str().unwrap().is_empty());
    // No abilityTable: no SetupAckRequest.
    assert!(c.next_push(Duration::from_millis(300)).await.is_none());
    let (kind, v) = c.register("rust-order", "10.0.0.2", 9000).await;
    assert_eq!(kind, "InstanceResponse", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bi_stream_on_the_same_connection_is_refused_and_the_first_keeps_working() {
    let server = Server::start(&[]);
    let mut c = Conn::open(server.grpc).await;
    let (tx, rx) = futures_channel::mpsc::unbounded();
    let mut bi =
        wire::proto::bi_request_stream_client::BiRequestStreamClient::new(c.channel.clone());
    let second = bi.request_bi_stream(rx).await;
    drop(tx);
    let status = second.expect_err("a second bi-stream was accepted");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let (kind, v) = c.register("two-streams", "10.0.0.3", 1).await;
    assert_eq!(kind, "InstanceResponse", "{v}");
    // The first stream still delivers pushes.
    let (kind, _) = c.subscribe("two-streams").await;
    assert_eq!(kind, "SubscribeServiceResponse");
    // Subscribing alone pushes nothing; a change does.
    let (kind, _) = c.register("two-streams", "10.0.0.4", 2).await;
    assert_eq!(kind, "InstanceResponse");
    let push = c
        .wait_push(Duration::from_secs(5), |k, v| {
            k == "NotifySubscriberRequest"
                && common::service_info_endpoints(&v["serviceInfo"]) == ["10.0.0.4:2"]
        })
        .await;
    assert!(push.is_some(), "no push on the first stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_grpc_methods_get_unimplemented_and_the_connection_keeps_working() {
    let server = Server::start(&[]);
    let mut c = Conn::bare(server.grpc).await;
    for path in [
        "/Request/notAMethod",
        "/BiRequestStream/notAMethod",
        "/nacos.Other/request",
        "/",
    ] {
        let mut grpc = tonic::client::Grpc::new(c.channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, wire::proto::Payload, _>(
                tonic::Request::new(payload("ServerCheckRequest", &json!({"headers": {}}))),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err(path);
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
    }
    let (kind, v) = c.call("ServerCheckRequest", &json!({"headers": {}})).await;
    assert_eq!(kind, "ServerCheckResponse", "{v}");
}

/// Sends `body` as the whole HTTP/2 body of a `/Request/request` call on `channel`; returns
/// the gRPC status (from the headers of a trailers-only answer, else the trailers) and the
/// response body.
async fn raw_unary(channel: &mut tonic::transport::Channel, body: Vec<u8>) -> (String, Vec<u8>) {
    use http_body_util::BodyExt;
    futures_util::future::poll_fn(|cx| tower_service::Service::poll_ready(channel, cx))
        .await
        .unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://127.0.0.1/Request/request")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .unwrap();
    let resp = tower_service::Service::call(channel, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    if let Some(s) = resp.headers().get("grpc-status") {
        return (s.to_str().unwrap().to_owned(), Vec::new());
    }
    let collected = resp.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|s| s.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, collected.to_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unary_calls_get_grpc_errors_and_the_connection_keeps_working() {
    use prost::Message;
    let server = Server::start(&["--max-message-bytes", "4096"]);
    let c = Conn::bare(server.grpc).await;
    let mut channel = c.channel.clone();
    let check = payload("ServerCheckRequest", &json!({"headers": {}})).encode_to_vec();
    let frame = |flag: u8, len: usize, msg: &[u8]| {
        let mut b = vec![flag];
        b.extend_from_slice(&(len as u32).to_be_bytes());
        b.extend_from_slice(msg);
        b
    };
    let cases = [
        ("compressed", frame(1, check.len(), &check), "12"),
        ("truncated prefix", vec![0, 0, 0], "13"),
        ("truncated message", frame(0, check.len() + 1, &check), "13"),
        (
            "two messages",
            [frame(0, check.len(), &check), frame(0, 0, &[])].concat(),
            "12",
        ),
        ("not a Payload", frame(0, 3, &[0xff, 0xff, 0xff]), "13"),
        (
            "over --max-message-bytes",
            frame(0, 5000, &[b'x'; 5000]),
            "8",
        ),
    ];
    for (what, body, expected) in cases {
        let (status, _) = raw_unary(&mut channel, body).await;
        assert_eq!(status, expected, "{what}");
    }
    // A well-formed call on the same connection: one message back, status 0.
    let (status, body) = raw_unary(&mut channel, frame(0, check.len(), &check)).await;
    assert_eq!(status, "0");
    assert_eq!(body[0], 0, "uncompressed");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(body.len(), 5 + len);
    let answer = wire::proto::Payload::decode(&body[5..]).unwrap();
    assert_eq!(
        answer.metadata.unwrap().r#type,
        "ServerCheckResponse",
        "a ServerCheckResponse payload"
    );
}
