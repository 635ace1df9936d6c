//! The naming module over gRPC against the real binary: register, query, deregister, batch,
//! service list, subscribe and pushes, and the clean-up when a connection goes away.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{instance, naming_body, service_info_endpoints, Conn, Server};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_query_and_deregister_round_trip_over_grpc() {
    let server = Server::start(&[]);
    let mut c = Conn::open(server.grpc).await;
    let mut inst = instance("10.0.0.1", 8080);
    inst["metadata"] = json!({"version": "1", "zone": "a"});
    inst["weight"] = json!(2.5);
    let (kind, v) = c
        .call(
            "InstanceRequest",
            &naming_body(
                "orders",
                json!({"type": "registerInstance", "instance": inst}),
            ),
        )
        .await;
    assert_eq!(kind, "InstanceResponse", "{v}");
    assert_eq!(v["type"], "registerInstance");
    assert_eq!(v["resultCode"], 200);

    let (kind, v) = c.query("orders").await;
    assert_eq!(kind, "QueryServiceResponse", "{v}");
    assert_eq!(v["resultCode"], 200);
    assert_eq!(v["errorCode"], 0);
    let info = &v["serviceInfo"];
    // Over gRPC `name` is the bare name, the group separate (nacos-sdk-python keys on both).
    assert_eq!(info["name"], "orders");
    assert_eq!(info["groupName"], "DEFAULT_GROUP");
    // Fields the Rust SDK requires non-null.
    for field in [
        "clusters",
        "cacheMillis",
        "lastRefTime",
        "checksum",
        "reachProtectionThreshold",
    ] {
        assert!(
            !info[field].is_null(),
            "serviceInfo.{field} missing: {info}"
        );
    }
    let hosts = info["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{info}");
    let h = &hosts[0];
    assert_eq!(h["ip"], "10.0.0.1");
    assert_eq!(h["port"], 8080);
    assert_eq!(h["weight"], 2.5);
    assert_eq!(h["healthy"], true);
    assert_eq!(h["enabled"], true);
    assert_eq!(h["ephemeral"], true);
    assert_eq!(h["clusterName"], "DEFAULT");
    assert_eq!(
        h["instanceId"],
        "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders"
    );
    assert_eq!(h["metadata"], json!({"version": "1", "zone": "a"}));

    // Also visible over HTTP, with the grouped name.
    let r = server.http("GET", "/nacos/v1/ns/instance/list?serviceName=orders");
    assert_eq!(r.json()["name"], "DEFAULT_GROUP@@orders");
    assert_eq!(server.endpoints("orders"), ["10.0.0.1:8080"]);

    // Deregister with the empty cluster name nacos-sdk-python sends.
    let mut gone = instance("10.0.0.1", 8080);
    gone["clusterName"] = json!("");
    let (kind, v) = c
        .call(
            "InstanceRequest",
            &naming_body(
                "orders",
                json!({"type": "deregisterInstance", "instance": gone}),
            ),
        )
        .await;
    assert_eq!(kind, "InstanceResponse", "{v}");
    assert_eq!(v["type"], "deregisterInstance");
    let (_, v) = c.query("orders").await;
    assert_eq!(
        v["serviceInfo"]["hosts"].as_array().map_or(0, Vec::len),
        0,
        "{v}"
    );
    assert!(server.hosts("orders").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_by_cluster_and_service_list_names_grouped_services() {
    let server = Server::start(&[]);
    let mut c = Conn::open(server.grpc).await;
    let mut a = instance("10.0.1.1", 1);
    a["clusterName"] = json!("east");
    let mut b = instance("10.0.1.2", 2);
    b["clusterName"] = json!("west");
    let (kind, v) = c
        .call(
            "BatchInstanceRequest",
            &naming_body(
                "geo",
                json!({"type": "batchRegisterInstance", "instances": [a, b]}),
            ),
        )
        .await;
    assert_eq!(kind, "BatchInstanceResponse", "{v}");
    let (_, v) = c
        .call(
            "ServiceQueryRequest",
            &naming_body("geo", json!({"cluster": "east", "healthyOnly": false})),
        )
        .await;
    assert_eq!(
        service_info_endpoints(&v["serviceInfo"]),
        ["10.0.1.1:1"],
        "{v}"
    );
    // nacos-sdk-python's misspelt `healthOnly` is accepted.
    let (kind, v) = c
        .call(
            "ServiceQueryRequest",
            &naming_body("geo", json!({"healthOnly": true})),
        )
        .await;
    assert_eq!(kind, "QueryServiceResponse", "{v}");
    assert_eq!(service_info_endpoints(&v["serviceInfo"]).len(), 2);

    c.register("other", "10.0.1.3", 3).await;
    let (kind, v) = c
        .call(
            "ServiceListRequest",
            &naming_body("", json!({"pageNo": 1, "pageSize": 10, "selector": null})),
        )
        .await;
    assert_eq!(kind, "ServiceListResponse", "{v}");
    assert_eq!(v["count"], 2);
    let names: Vec<&str> = v["serviceNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names, ["DEFAULT_GROUP@@geo", "DEFAULT_GROUP@@other"]);
    let (_, v) = c
        .call(
            "ServiceListRequest",
            &naming_body("", json!({"pageNo": 2, "pageSize": 1})),
        )
        .await;
    assert_eq!(v["count"], 2);
    assert_eq!(v["serviceNames"], json!(["DEFAULT_GROUP@@other"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_register_replaces_the_connection_publish_with_the_listed_instances() {
    let server = Server::start(&[]);
    let mut c = Conn::open(server.grpc).await;
    let (kind, _) = c.register("batch", "10.0.2.1", 1).await;
    assert_eq!(kind, "InstanceResponse");
    let three: Vec<Value> = (1..=3)
        .map(|i| instance(&format!("10.0.2.{}", i + 10), 80))
        .collect();
    let (kind, v) = c
        .call(
            "BatchInstanceRequest",
            &naming_body(
                "batch",
                json!({"type": "batchRegisterInstance", "instances": three}),
            ),
        )
        .await;
    assert_eq!(kind, "BatchInstanceResponse", "{v}");
    assert_eq!(v["type"], "batchRegisterInstance");
    assert_eq!(
        server.endpoints("batch"),
        ["10.0.2.11:80", "10.0.2.12:80", "10.0.2.13:80"]
    );
    // A smaller batch replaces the previous one (batch deregister, as the Python SDK does it).
    let two: Vec<Value> = (1..=2)
        .map(|i| instance(&format!("10.0.2.{}", i + 10), 80))
        .collect();
    c.call(
        "BatchInstanceRequest",
        &naming_body(
            "batch",
            json!({"type": "batchRegisterInstance", "instances": two}),
        ),
    )
    .await;
    assert_eq!(server.endpoints("batch"), ["10.0.2.11:80", "10.0.2.12:80"]);
    // Another connection's instances are untouched by this connection's batch.
    let mut d = Conn::open(server.grpc).await;
    d.register("batch", "10.0.2.99", 80).await;
    c.call(
        "BatchInstanceRequest",
        &naming_body(
            "batch",
            json!({"type": "batchRegisterInstance", "instances": [instance("10.0.2.11", 80)]}),
        ),
    )
    .await;
    assert_eq!(server.endpoints("batch"), ["10.0.2.11:80", "10.0.2.99:80"]);
    // An empty batch is refused, not taken as "remove everything".
    let (kind, v) = c
        .call(
            "BatchInstanceRequest",
            &naming_body(
                "batch",
                json!({"type": "batchRegisterInstance", "instances": []}),
            ),
        )
        .await;
    assert_eq!(kind, "ErrorResponse", "{v}");
    assert_eq!(server.endpoints("batch"), ["10.0.2.11:80", "10.0.2.99:80"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_pushed_each_change_made_by_another_connection_and_acks_are_counted() {
    let server = Server::start(&[]);
    let mut sub = Conn::open(server.grpc).await;
    let (kind, v) = sub.subscribe("watched").await;
    assert_eq!(kind, "SubscribeServiceResponse", "{v}");
    assert_eq!(v["resultCode"], 200);
    assert_eq!(v["serviceInfo"]["name"], "watched");
    assert!(service_info_endpoints(&v["serviceInfo"]).is_empty());

    let mut publisher = Conn::open(server.grpc).await;
    let (kind, _) = publisher.register("watched", "10.0.3.1", 7001).await;
    assert_eq!(kind, "InstanceResponse");

    // Read the push by hand to ack it ourselves with its requestId.
    let (kind, push) = sub
        .next_push(Duration::from_secs(5))
        .await
        .expect("no push after a register");
    assert_eq!(kind, "NotifySubscriberRequest", "{push}");
    assert_eq!(push["module"], "naming");
    assert_eq!(push["serviceName"], "watched");
    assert_eq!(push["groupName"], "DEFAULT_GROUP");
    assert_eq!(push["serviceInfo"]["name"], "watched");
    assert_eq!(
        service_info_endpoints(&push["serviceInfo"]),
        ["10.0.3.1:7001"]
    );
    let request_id = push["requestId"].as_str().unwrap().to_owned();
    assert!(!request_id.is_empty());
    let first_ref = push["serviceInfo"]["lastRefTime"].as_u64().unwrap();
    sub.send(common::payload(
        "NotifySubscriberResponse",
        &json!({"resultCode": 200, "errorCode": 0, "requestId": request_id, "success": true}),
    ));
    let acked = common::wait_until(Duration::from_secs(5), || {
        server.prometheus("nacelle_pushes_acked_total") >= 1.0
    });
    assert!(acked, "the ack was not counted");
    assert!(server.prometheus("nacelle_pushes_sent_total") >= 1.0);

    // Second change: a new push with a newer lastRefTime and the full list.
    publisher.register("watched", "10.0.3.2", 7002).await; // replaces the publish
    let (_, push2) = sub
        .wait_push(Duration::from_secs(5), |k, _| {
            k == "NotifySubscriberRequest"
        })
        .await
        .expect("no second push");
    assert_eq!(
        service_info_endpoints(&push2["serviceInfo"]),
        ["10.0.3.2:7002"]
    );
    assert!(push2["serviceInfo"]["lastRefTime"].as_u64().unwrap() > first_ref);
    assert_ne!(push2["requestId"].as_str().unwrap(), request_id);

    // The last instance going away is pushed too (an empty list).
    publisher.deregister("watched", "10.0.3.2", 7002).await;
    let empty = sub
        .wait_push(Duration::from_secs(5), |k, v| {
            k == "NotifySubscriberRequest" && service_info_endpoints(&v["serviceInfo"]).is_empty()
        })
        .await;
    assert!(empty.is_some(), "no push of the empty list");

    // After unsubscribing, changes are no longer pushed.
    let (kind, _) = sub
        .call(
            "SubscribeServiceRequest",
            &naming_body("watched", json!({"subscribe": false, "clusters": ""})),
        )
        .await;
    assert_eq!(kind, "SubscribeServiceResponse");
    publisher.register("watched", "10.0.3.3", 7003).await;
    let late = sub
        .wait_push(Duration::from_millis(600), |k, _| {
            k == "NotifySubscriberRequest"
        })
        .await;
    assert!(late.is_none(), "pushed after unsubscribe: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_connection_removes_its_instances_but_not_others() {
    let server = Server::start(&[]);
    let mut stays = Conn::open(server.grpc).await;
    stays.register("shared", "10.0.4.1", 1).await;
    let mut leaves = Conn::open(server.grpc).await;
    leaves.register("shared", "10.0.4.2", 2).await;
    leaves.register("mine", "10.0.4.2", 2).await;
    let (kind, _) = leaves.subscribe("shared").await;
    assert_eq!(kind, "SubscribeServiceResponse");
    assert_eq!(server.endpoints("shared"), ["10.0.4.1:1", "10.0.4.2:2"]);
    assert_eq!(server.endpoints("mine"), ["10.0.4.2:2"]);
    // The subscription reaches the service's owner core shortly after the response.
    let ok = common::wait_until(Duration::from_secs(5), || {
        let m = server.operator_metrics();
        m["instanceCount"] == 3 && m["subscribeCount"] == 1
    });
    assert!(ok, "{}", server.operator_metrics());

    // Close without deregistering (nacos-sdk-python's shutdown does exactly this).
    drop(leaves);
    server.wait_endpoints("shared", &["10.0.4.1:1"], Duration::from_secs(5));
    server.wait_endpoints("mine", &[], Duration::from_secs(5));
    let ok = common::wait_until(Duration::from_secs(5), || {
        let m = server.operator_metrics();
        m["instanceCount"] == 1 && m["subscribeCount"] == 0
    });
    assert!(ok, "{}", server.operator_metrics());
    let (kind, v) = stays.query("shared").await;
    assert_eq!(kind, "QueryServiceResponse");
    assert_eq!(service_info_endpoints(&v["serviceInfo"]), ["10.0.4.1:1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_register_concurrently_and_all_are_listed() {
    let server = Server::start(&[]);
    let mut tasks = Vec::new();
    for i in 0..16u16 {
        let grpc = server.grpc;
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(grpc).await;
            let (kind, v) = c
                .register("crowd", &format!("10.0.5.{}", i + 1), 9000 + i)
                .await;
            assert_eq!(kind, "InstanceResponse", "{v}");
            c
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    assert_eq!(server.hosts("crowd").len(), 16);
    let (_, v) = conns[0].query("crowd").await;
    assert_eq!(service_info_endpoints(&v["serviceInfo"]).len(), 16);
    drop(conns);
    server.wait_endpoints("crowd", &[], Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_filtered_subscription_is_pushed_only_its_clusters_and_namespaces_are_separate() {
    let server = Server::start(&[]);
    let mut sub = Conn::open(server.grpc).await;
    let (kind, v) = sub
        .call(
            "SubscribeServiceRequest",
            &naming_body("zoned", json!({"subscribe": true, "clusters": "east"})),
        )
        .await;
    assert_eq!(kind, "SubscribeServiceResponse", "{v}");
    assert_eq!(v["serviceInfo"]["clusters"], "east");

    let mut publisher = Conn::open(server.grpc).await;
    let mut east = instance("10.0.6.1", 1);
    east["clusterName"] = json!("east");
    // An empty cluster name means DEFAULT.
    let mut default = instance("10.0.6.2", 2);
    default["clusterName"] = json!("");
    let (kind, v) = publisher
        .call(
            "BatchInstanceRequest",
            &naming_body(
                "zoned",
                json!({"type": "batchRegisterInstance", "instances": [east, default]}),
            ),
        )
        .await;
    assert_eq!(kind, "BatchInstanceResponse", "{v}");
    let (_, push) = sub
        .wait_push(Duration::from_secs(5), |k, _| {
            k == "NotifySubscriberRequest"
        })
        .await
        .expect("no push");
    assert_eq!(push["serviceInfo"]["clusters"], "east");
    assert_eq!(
        service_info_endpoints(&push["serviceInfo"]),
        ["10.0.6.1:1"],
        "{push}"
    );
    let all = server.hosts("zoned");
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|h| h["clusterName"] == "DEFAULT"));

    // The same service name in another namespace is another service.
    let (kind, v) = publisher
        .call(
            "InstanceRequest",
            &json!({"headers": {}, "namespace": "dev", "serviceName": "zoned",
                    "groupName": "DEFAULT_GROUP", "type": "registerInstance",
                    "instance": instance("10.0.6.3", 3), "module": "naming"}),
        )
        .await;
    assert_eq!(kind, "InstanceResponse", "{v}");
    let (_, v) = publisher
        .call(
            "ServiceQueryRequest",
            &json!({"namespace": "dev", "serviceName": "zoned", "groupName": "DEFAULT_GROUP"}),
        )
        .await;
    assert_eq!(service_info_endpoints(&v["serviceInfo"]), ["10.0.6.3:3"]);
    assert_eq!(server.hosts("zoned").len(), 2);
    let (_, v) = publisher
        .call(
            "ServiceListRequest",
            &json!({"namespace": "dev", "groupName": "DEFAULT_GROUP", "pageNo": 1, "pageSize": 10}),
        )
        .await;
    assert_eq!(v["serviceNames"], json!(["DEFAULT_GROUP@@zoned"]));
    // The subscriber of `public` was not pushed the `dev` change.
    let late = sub
        .wait_push(Duration::from_millis(400), |k, _| {
            k == "NotifySubscriberRequest"
        })
        .await;
    assert!(
        late.is_none(),
        "pushed a change of another namespace: {late:?}"
    );
}
