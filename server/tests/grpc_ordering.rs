//! Ordering guarantees across cores: a subscription acknowledged to the client must see every
//! later change, and `lastRefTime` must never go backwards for a service.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{service_info_endpoints, Conn, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_right_after_the_subscribe_response_is_always_pushed() {
    let server = Server::start(&[]);
    // Several publishers so that some of them sit on the core owning each service.
    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers.push(Conn::open(server.grpc).await);
    }
    let mut missed = Vec::new();
    for round in 0..30u16 {
        let service = format!("race-{round}");
        let mut sub = Conn::open(server.grpc).await;
        let (kind, _) = sub.subscribe(&service).await;
        assert_eq!(kind, "SubscribeServiceResponse");
        let p = &mut publishers[usize::from(round) % 4];
        let (kind, _) = p.register(&service, "10.20.0.1", round).await;
        assert_eq!(kind, "InstanceResponse");
        let pushed = sub
            .wait_push(Duration::from_secs(2), |k, v| {
                k == "NotifySubscriberRequest"
                    && service_info_endpoints(&v["serviceInfo"]).len() == 1
            })
            .await;
        if pushed.is_none() {
            missed.push(service);
        }
    }
    assert!(missed.is_empty(), "never pushed: {missed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_ref_time_never_goes_backwards_when_a_service_empties() {
    let server = Server::start(&[]);
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Conn::open(server.grpc).await);
    }
    let mut reader = Conn::open(server.grpc).await;
    // Churn one service from four connections at once so that changes share milliseconds.
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..300u16 {
                c.register("churn", &format!("10.21.0.{}", i + 1), n).await;
            }
            c
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    let (_, v) = reader.query("churn").await;
    let last_seen = v["serviceInfo"]["lastRefTime"].as_u64().unwrap();
    for (i, c) in conns.iter_mut().enumerate() {
        c.deregister("churn", &format!("10.21.0.{}", i + 1), 299)
            .await;
    }
    let (_, v) = reader.query("churn").await;
    assert!(service_info_endpoints(&v["serviceInfo"]).is_empty());
    let now_ref = v["serviceInfo"]["lastRefTime"].as_u64().unwrap();
    assert!(
        now_ref > last_seen,
        "lastRefTime went from {last_seen} to {now_ref}"
    );
}
