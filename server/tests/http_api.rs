//! The Nacos HTTP OpenAPI (v1 and v2) and Prometheus `/metrics` against the real binary,
//! through a raw HTTP/1.1 client.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{enc, read_response, wait_until, HttpResp, Server};
use serde_json::{json, Value};

const NS: &str = "/nacos/v1/ns";
const NS2: &str = "/nacos/v2/ns";

fn ok(r: &HttpResp) {
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
}

fn list(s: &Server, query: &str) -> Value {
    let r = s.http("GET", &format!("{NS}/instance/list?{query}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.headers["content-type"].starts_with("application/json"),
        "{:?}",
        r.headers
    );
    r.json()
}

fn host_list(v: &Value) -> Vec<Value> {
    v["hosts"].as_array().cloned().unwrap_or_default()
}

#[test]
fn v1_register_list_detail_and_deregister_an_instance() {
    let s = Server::start(&[]);
    let meta = enc(r#"{"k":"v","n":2}"#);
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=web&ip=10.1.0.1&port=8080&clusterName=c1&weight=2&metadata={meta}"),
    ));
    let v = list(&s, "serviceName=web");
    assert_eq!(v["name"], "DEFAULT_GROUP@@web");
    assert_eq!(v["groupName"], "DEFAULT_GROUP");
    assert_eq!(v["clusters"], "");
    assert_eq!(v["cacheMillis"], 10000);
    assert!(v["lastRefTime"].as_u64().unwrap() > 1_600_000_000_000);
    let hosts = host_list(&v);
    assert_eq!(hosts.len(), 1, "{v}");
    let h = &hosts[0];
    assert_eq!(h["instanceId"], "10.1.0.1#8080#c1#DEFAULT_GROUP@@web");
    assert_eq!(h["ip"], "10.1.0.1");
    assert_eq!(h["port"], 8080);
    assert_eq!(h["weight"], 2.0);
    assert_eq!(h["healthy"], true);
    assert_eq!(h["enabled"], true);
    assert_eq!(h["ephemeral"], true);
    assert_eq!(h["clusterName"], "c1");
    assert_eq!(h["serviceName"], "DEFAULT_GROUP@@web");
    assert_eq!(h["metadata"], json!({"k": "v", "n": "2"}));

    // `clusters` is echoed exactly as asked (the Node SDK keys its cache on it) and filters.
    let v = list(&s, "serviceName=web&clusters=c1");
    assert_eq!(
        (v["clusters"].as_str(), host_list(&v).len()),
        (Some("c1"), 1)
    );
    let v = list(&s, "serviceName=web&clusters=c2");
    assert_eq!(
        (v["clusters"].as_str(), host_list(&v).len()),
        (Some("c2"), 0)
    );

    // Parameters in a form body work as well as in the query.
    ok(&s.http_form(
        "POST",
        &format!("{NS}/instance"),
        "serviceName=web&ip=10.1.0.2&port=8081&healthy=true&ephemeral=true",
    ));
    assert_eq!(s.endpoints("web"), ["10.1.0.1:8080", "10.1.0.2:8081"]);

    // Detail of one instance.
    let r = s.http(
        "GET",
        &format!("{NS}/instance?serviceName=web&ip=10.1.0.1&port=8080&clusterName=c1"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    assert_eq!(d["service"], "DEFAULT_GROUP@@web");
    assert_eq!(d["ip"], "10.1.0.1");
    assert_eq!(d["port"], 8080);
    assert_eq!(d["clusterName"], "c1");
    assert_eq!(d["weight"], 2.0);
    assert_eq!(d["healthy"], true);
    assert_eq!(d["instanceId"], "10.1.0.1#8080#c1#DEFAULT_GROUP@@web");
    assert_eq!(d["metadata"]["k"], "v");
    // It is in c1, not in DEFAULT.
    let r = s.http(
        "GET",
        &format!("{NS}/instance?serviceName=web&ip=10.1.0.1&port=8080"),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    ok(&s.http(
        "DELETE",
        &format!("{NS}/instance?serviceName=web&ip=10.1.0.1&port=8080&clusterName=c1"),
    ));
    assert_eq!(s.endpoints("web"), ["10.1.0.2:8081"]);
    let r = s.http(
        "GET",
        &format!("{NS}/instance?serviceName=web&ip=10.1.0.1&port=8080&clusterName=c1"),
    );
    assert_eq!(r.status, 404);

    // A grouped service name carries its group (the Node SDK sends `G@@svc`, no groupName).
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=G1%40%40api&ip=10.1.0.3&port=1"),
    ));
    let v = list(&s, "serviceName=G1%40%40api");
    assert_eq!(
        (v["name"].as_str(), v["groupName"].as_str()),
        (Some("G1@@api"), Some("G1"))
    );
    assert_eq!(host_list(&v).len(), 1);
    let v = list(&s, "serviceName=api&groupName=G1");
    assert_eq!(host_list(&v).len(), 1);
    assert!(host_list(&list(&s, "serviceName=api")).is_empty());
    ok(&s.http(
        "DELETE",
        &format!("{NS}/instance?serviceName=G1%40%40api&ip=10.1.0.3&port=1"),
    ));
    assert!(host_list(&list(&s, "serviceName=api&groupName=G1")).is_empty());

    // Namespaces are separate.
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?namespaceId=dev&serviceName=web&ip=10.1.0.9&port=9"),
    ));
    assert_eq!(s.endpoints("web"), ["10.1.0.2:8081"]);
    let v = list(&s, "namespaceId=dev&serviceName=web");
    assert_eq!(host_list(&v).len(), 1);
    assert_eq!(host_list(&v)[0]["ip"], "10.1.0.9");
}

#[test]
fn v1_patch_changes_only_the_given_fields_and_put_replaces_the_instance() {
    let s = Server::start(&[]);
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=p&ip=10.2.0.1&port=80&metadata=a%3D1"),
    ));
    let host = || host_list(&list(&s, "serviceName=p"));
    assert_eq!(host()[0]["metadata"], json!({"a": "1"}));

    ok(&s.http(
        "PATCH",
        &format!("{NS}/instance?serviceName=p&ip=10.2.0.1&port=80&weight=3"),
    ));
    let h = &host()[0];
    assert_eq!(h["weight"], 3.0);
    assert_eq!(h["metadata"], json!({"a": "1"}));

    // Disabled instances are not listed (enabled-only selection), but the detail shows them.
    ok(&s.http(
        "PATCH",
        &format!("{NS}/instance?serviceName=p&ip=10.2.0.1&port=80&enabled=false"),
    ));
    assert!(host().is_empty());
    let d = s
        .http(
            "GET",
            &format!("{NS}/instance?serviceName=p&ip=10.2.0.1&port=80"),
        )
        .json();
    assert_eq!(d["enabled"], false);
    assert_eq!(d["weight"], 3.0);

    let meta = enc(r#"{"b":"2"}"#);
    ok(&s.http(
        "PATCH",
        &format!("{NS}/instance?serviceName=p&ip=10.2.0.1&port=80&enable=true&metadata={meta}"),
    ));
    let h = &host()[0];
    assert_eq!(h["metadata"], json!({"b": "2"}));
    assert_eq!(h["enabled"], true);

    let r = s.http(
        "PATCH",
        &format!("{NS}/instance?serviceName=p&ip=10.2.0.99&port=80&weight=3"),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.http(
        "PATCH",
        &format!("{NS}/instance?serviceName=p&ip=10.2.0.1&port=80&healthy=maybe"),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    ok(&s.http(
        "PUT",
        &format!("{NS}/instance?serviceName=p&ip=10.2.0.1&port=80&weight=5"),
    ));
    assert_eq!(host()[0]["weight"], 5.0);
}

#[test]
fn v1_beat_renews_known_instances_recreates_from_the_beat_body_and_reports_unknown_ones() {
    let s = Server::start(&[]);
    let r = s.http(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=b&ip=10.3.0.1&port=1"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["code"], 20404, "{v}");
    assert_eq!(v["clientBeatInterval"], 5000);
    assert!(s.hosts("b").is_empty());

    // The Node SDK's beat: RsInfo JSON in `beat`, grouped service name; the server re-creates
    // the instance from it.
    let beat = enc(
        r#"{"serviceName":"DEFAULT_GROUP@@b","ip":"10.3.0.1","port":1,"cluster":"DEFAULT","weight":1,"metadata":{"m":"1"},"scheduled":true}"#,
    );
    let r = s.http(
        "PUT",
        &format!(
            "{NS}/instance/beat?serviceName=DEFAULT_GROUP%40%40b&namespaceId=public&beat={beat}"
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["code"], 10200, "{v}");
    assert_eq!(v["lightBeatEnabled"], true);
    let hosts = s.hosts("b");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["metadata"], json!({"m": "1"}));

    let r = s.http(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=b&ip=10.3.0.1&port=1"),
    );
    assert_eq!(r.json()["code"], 10200);
    // The v2 beat answers the same bare object.
    let r = s.http(
        "PUT",
        &format!("{NS2}/instance/beat?serviceName=b&ip=10.3.0.1&port=1"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["code"], 10200, "{}", r.text());

    let r = s.http(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=b&beat=%7Bnot-json"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.http("PUT", &format!("{NS}/instance/beat?ip=10.3.0.1&port=1"));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.http(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=b&ip=10.3.0.1&port=99999"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn a_heartbeat_instance_becomes_unhealthy_then_disappears_when_its_beats_stop() {
    let s = Server::start(&["--beat-check-interval-ms", "200"]);
    let fast = enc(
        r#"{"preserved.heart.beat.timeout":"1000","preserved.ip.delete.timeout":"2000","preserved.heart.beat.interval":"500"}"#,
    );
    let lingering = enc(
        r#"{"preserved.heart.beat.timeout":"1000","preserved.ip.delete.timeout":"20000","preserved.heart.beat.interval":"500"}"#,
    );
    // An anchor with default timing keeps the service above its protection threshold, so the
    // unhealthy instance is shown as unhealthy (not protected).
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=hb&ip=10.4.0.1&port=1"),
    ));
    let registered = Instant::now();
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=hb&ip=10.4.0.2&port=2&metadata={fast}"),
    ));
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=hb&ip=10.4.0.3&port=3&metadata={lingering}"),
    ));
    // A lone instance: when it is unhealthy the protection threshold (0) is reached.
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=lone&ip=10.4.0.4&port=4&metadata={fast}"),
    ));
    // The beat answer carries the instance's own interval.
    let r = s.http(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=hb&ip=10.4.0.2&port=2"),
    );
    assert_eq!(r.json()["clientBeatInterval"], 500, "{}", r.text());

    let health = |v: &Value, ip: &str| -> Option<bool> {
        host_list(v)
            .iter()
            .find(|h| h["ip"] == ip)
            .map(|h| h["healthy"].as_bool().unwrap())
    };
    let mut lone_protected = false;
    let mut fast_unhealthy = false;
    let unhealthy = wait_until(Duration::from_secs(6), || {
        let lone = list(&s, "serviceName=lone");
        if lone["reachProtectionThreshold"] == true {
            // Nacos answers all instances as healthy when the threshold is reached.
            assert_eq!(health(&lone, "10.4.0.4"), Some(true), "{lone}");
            lone_protected = true;
        }
        let v = list(&s, "serviceName=hb");
        // Both services are polled until both are seen: shards check beats at their own
        // phase, so the lone instance may turn unhealthy a check after the others.
        // Sticky, because the fast one is deleted a second after it turns unhealthy.
        fast_unhealthy |= health(&v, "10.4.0.2") == Some(false);
        lone_protected && fast_unhealthy && health(&v, "10.4.0.3") == Some(false)
    });
    assert!(
        unhealthy,
        "lone protected: {lone_protected}, fast unhealthy: {fast_unhealthy}; {}",
        list(&s, "serviceName=hb")
    );
    assert!(registered.elapsed() >= Duration::from_millis(900));
    let v = list(&s, "serviceName=hb");
    assert_eq!(health(&v, "10.4.0.1"), Some(true));
    assert_eq!(v["reachProtectionThreshold"], false);
    let healthy_only = list(&s, "serviceName=hb&healthyOnly=true");
    assert_eq!(host_list(&healthy_only).len(), 1, "{healthy_only}");
    assert_eq!(host_list(&healthy_only)[0]["ip"], "10.4.0.1");

    // A beat brings an unhealthy instance back.
    let r = s.http(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=hb&ip=10.4.0.3&port=3"),
    );
    assert_eq!(r.json()["code"], 10200);
    assert_eq!(health(&list(&s, "serviceName=hb"), "10.4.0.3"), Some(true));

    // The silent one is removed after its delete timeout; the others stay.
    s.wait_endpoints("hb", &["10.4.0.1:1", "10.4.0.3:3"], Duration::from_secs(6));
    assert!(registered.elapsed() >= Duration::from_millis(1900));
    s.wait_endpoints("lone", &[], Duration::from_secs(6));
    assert!(s.prometheus("nacelle_expired_instances_total") >= 2.0);
}

#[test]
fn v1_service_crud_and_paged_service_list() {
    let s = Server::start(&[]);
    ok(&s.http(
        "POST",
        &format!("{NS}/service?serviceName=catalog&protectThreshold=0.5&metadata=owner%3Dteam-a"),
    ));
    let r = s.http("GET", &format!("{NS}/service?serviceName=catalog"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["name"], "catalog");
    assert_eq!(v["groupName"], "DEFAULT_GROUP");
    assert_eq!(v["namespaceId"], "public");
    assert_eq!(v["protectThreshold"], 0.5);
    assert_eq!(v["metadata"], json!({"owner": "team-a"}));

    // Creating it again is a conflict; updating works; updating a missing one is 404.
    let r = s.http("POST", &format!("{NS}/service?serviceName=catalog"));
    assert_eq!(r.status, 400, "{}", r.text());
    ok(&s.http(
        "PUT",
        &format!("{NS}/service?serviceName=catalog&protectThreshold=0.75"),
    ));
    assert_eq!(
        s.http("GET", &format!("{NS}/service?serviceName=catalog"))
            .json()["protectThreshold"],
        0.75
    );
    let r = s.http(
        "PUT",
        &format!("{NS}/service?serviceName=nosuch&protectThreshold=0.1"),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.http(
        "POST",
        &format!("{NS}/service?serviceName=bad&protectThreshold=2"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.http(
        "POST",
        &format!("{NS}/service?serviceName=bad&protectThreshold=abc"),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // A service with instances cannot be deleted.
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=catalog&ip=10.5.0.1&port=1"),
    ));
    let r = s.http("DELETE", &format!("{NS}/service?serviceName=catalog"));
    assert_eq!(r.status, 400, "{}", r.text());
    ok(&s.http(
        "DELETE",
        &format!("{NS}/instance?serviceName=catalog&ip=10.5.0.1&port=1"),
    ));
    ok(&s.http("DELETE", &format!("{NS}/service?serviceName=catalog")));
    let ok_gone = wait_until(Duration::from_secs(3), || {
        s.http("GET", &format!("{NS}/service?serviceName=catalog"))
            .status
            == 404
    });
    assert!(ok_gone, "service still there after DELETE");
    let r = s.http("DELETE", &format!("{NS}/service?serviceName=catalog"));
    assert_eq!(r.status, 404, "{}", r.text());

    // Paging over grouped names, per group.
    for name in ["s-a", "s-b", "s-c"] {
        ok(&s.http("POST", &format!("{NS}/service?serviceName={name}")));
    }
    ok(&s.http(
        "POST",
        &format!("{NS}/service?serviceName=s-x&groupName=OTHER"),
    ));
    let page = |q: &str| {
        let r = s.http("GET", &format!("{NS}/service/list?{q}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let v = page("pageNo=1&pageSize=2");
    assert_eq!(v["count"], 3, "{v}");
    assert_eq!(
        v["doms"],
        json!(["DEFAULT_GROUP@@s-a", "DEFAULT_GROUP@@s-b"])
    );
    let v = page("pageNo=2&pageSize=2");
    assert_eq!(v["doms"], json!(["DEFAULT_GROUP@@s-c"]));
    let v = page("pageNo=9&pageSize=2");
    assert_eq!(
        (v["count"].as_u64(), v["doms"].as_array().map(Vec::len)),
        (Some(3), Some(0))
    );
    let v = page("pageNo=1&pageSize=10&groupName=OTHER");
    assert_eq!(v["doms"], json!(["OTHER@@s-x"]));
    for bad in [
        "pageSize=2",
        "pageNo=1",
        "pageNo=0&pageSize=2",
        "pageNo=1&pageSize=0",
        "pageNo=x&pageSize=2",
    ] {
        let r = s.http("GET", &format!("{NS}/service/list?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
}

#[test]
fn operator_metrics_and_prometheus_metrics_reflect_the_registry() {
    let s = Server::start(&[]);
    let m = s.operator_metrics();
    assert_eq!(m["status"], "UP");
    assert_eq!(m["instanceCount"], 0);
    for i in 1..=2 {
        ok(&s.http(
            "POST",
            &format!("{NS}/instance?serviceName=m&ip=10.6.0.{i}&port=1"),
        ));
    }
    ok(&s.http(
        "POST",
        &format!("{NS}/instance?serviceName=m2&ip=10.6.0.9&port=1"),
    ));
    let m = s.operator_metrics();
    assert_eq!(m["instanceCount"], 3, "{m}");
    assert_eq!(m["serviceCount"], 2, "{m}");
    assert_eq!(m["clientCount"], 3, "{m}");
    assert_eq!(m["ephemeralIpPortClientCount"], 3, "{m}");
    for field in [
        "subscribeCount",
        "responsibleClientCount",
        "cpu",
        "load",
        "mem",
    ] {
        assert!(m[field].is_number(), "{field}: {m}");
    }
    let r = s.http("GET", &format!("{NS2}/operator/metrics"));
    let v2 = r.json();
    assert_eq!(
        (v2["code"].as_i64(), v2["message"].as_str()),
        (Some(0), Some("success"))
    );
    assert_eq!(v2["data"]["instanceCount"], 3);

    let r = s.http("GET", "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"].starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    let text = r.text();
    // Every sample line is `name{labels} value` with a number, and has a TYPE line.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample {line:?}");
        let family = name.split('{').next().unwrap();
        let base = family
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            text.contains(&format!("# TYPE {family} "))
                || text.contains(&format!("# TYPE {base} ")),
            "no TYPE for {line:?}"
        );
    }
    let sample = |n: &str| common::prometheus_sample(&text, n).unwrap_or_else(|| panic!("no {n}"));
    assert_eq!(sample("nacelle_instances"), 3.0);
    assert_eq!(sample("nacelle_services"), 2.0);
    assert!(sample("nacelle_requests_total{kind=\"http_instance\"}") >= 3.0);
    assert!(sample("nacelle_request_duration_seconds_count{kind=\"http_instance\"}") >= 3.0);
    assert_eq!(
        sample("nacelle_request_duration_seconds_bucket{kind=\"http_instance\",le=\"+Inf\"}"),
        sample("nacelle_request_duration_seconds_count{kind=\"http_instance\"}")
    );

    let r = s.http("GET", "/nacos/v1/console/health/liveness");
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    let r = s.http("GET", "/nacos/v1/console/health/readiness");
    assert_eq!(r.status, 200);
}

#[test]
fn missing_or_invalid_parameters_are_answered_with_400() {
    let s = Server::start(&[]);
    let bad = [
        ("POST", "/instance?ip=10.7.0.1&port=1", "serviceName"),
        ("POST", "/instance?serviceName=v&port=1", "ip"),
        ("POST", "/instance?serviceName=v&ip=10.7.0.1", "port"),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=abc",
            "port",
        ),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=70000",
            "port",
        ),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=-1",
            "port",
        ),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=1&healthy=maybe",
            "healthy",
        ),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=1&weight=heavy",
            "weight",
        ),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=1&weight=-2",
            "weight",
        ),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=1&metadata=%7Bbad",
            "metadata",
        ),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=1&metadata=novalue",
            "metadata",
        ),
        (
            "POST",
            "/instance?serviceName=v&ip=10.7.0.1&port=1&clusterName=bad_name",
            "cluster",
        ),
        (
            "POST",
            "/instance?serviceName=a%40%40b%40%40c&ip=10.7.0.1&port=1",
            "serviceName",
        ),
        ("DELETE", "/instance?serviceName=v&port=1", "ip"),
        ("DELETE", "/instance?serviceName=v&ip=10.7.0.1", "port"),
        ("PATCH", "/instance?serviceName=v&ip=10.7.0.1", "port"),
        ("GET", "/instance/list", "serviceName"),
        (
            "GET",
            "/instance/list?serviceName=v&healthyOnly=perhaps",
            "healthyOnly",
        ),
        ("GET", "/instance?serviceName=v&ip=10.7.0.1", "port"),
        ("GET", "/service", "serviceName"),
        ("POST", "/service", "serviceName"),
    ];
    for (method, route, what) in bad {
        let r = s.http(method, &format!("{NS}{route}"));
        assert_eq!(r.status, 400, "v1 {method} {route} ({what}): {}", r.text());
        assert!(!r.body.is_empty());
        // v2 answers the same status with a wrapped error.
        let r = s.http(method, &format!("{NS2}{route}"));
        assert_eq!(r.status, 400, "v2 {method} {route} ({what}): {}", r.text());
        let v = r.json();
        assert_ne!(v["code"], 0, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["data"].is_null(), "{v}");
    }
    let r = s.http("POST", &format!("{NS}/instance?ip=10.7.0.1&port=1"));
    assert!(r.text().contains("serviceName"), "{}", r.text());
    let r = s.http("POST", &format!("{NS2}/instance?ip=10.7.0.1&port=1"));
    assert_eq!(r.json()["code"], 10000);
    // Nothing got in.
    assert!(s.hosts("v").is_empty());
    assert_eq!(s.operator_metrics()["instanceCount"], 0);
}

#[test]
fn unknown_routes_and_methods_are_answered_with_404() {
    let s = Server::start(&[]);
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/nacos/v1/cs/configs"),
        ("GET", "/nacos/v1/ns/nope"),
        ("POST", "/nacos/v1/ns/instance/list"),
        ("DELETE", "/nacos/v1/ns/operator/metrics"),
        ("GET", "/nacos/v1/ns/instance/beat"),
        ("POST", "/metrics"),
    ] {
        let r = s.http(method, path);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
    }
    let r = s.http("GET", "/nacos/v2/ns/nope");
    assert_eq!(r.status, 404);
    let v = r.json();
    assert_ne!(v["code"], 0);
    assert!(v["data"].is_null());
}

#[test]
fn an_oversized_body_is_answered_with_413_and_the_server_keeps_serving() {
    let s = Server::start(&["--max-message-bytes", "65536"]);
    let mut body = b"serviceName=big&ip=10.8.0.1&port=1&metadata=".to_vec();
    body.extend(std::iter::repeat_n(b'x', 200_000));
    let mut sock = TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST {NS}/instance HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut writer = sock.try_clone().unwrap();
    let write = std::thread::spawn(move || {
        // The server may stop reading once it has refused the body.
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let r = read_response(&mut sock).unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    let _ = write.join();
    assert!(s.hosts("big").is_empty());

    // Just under the limit is accepted.
    let form = format!(
        "serviceName=big&ip=10.8.0.1&port=1&metadata=pad%3D{}",
        "y".repeat(30_000)
    );
    ok(&s.http_form("POST", &format!("{NS}/instance"), &form));
    assert_eq!(s.endpoints("big"), ["10.8.0.1:1"]);
    assert_eq!(s.operator_metrics()["status"], "UP");
}

#[test]
fn v2_api_wraps_answers_in_code_message_data() {
    let s = Server::start(&[]);
    let r = s.http_form(
        "POST",
        &format!("{NS2}/instance"),
        "serviceName=v2svc&groupName=G2&ip=10.9.0.1&port=80&weight=1.5&metadata=%7B%22a%22%3A%22b%22%7D",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"code": 0, "message": "success", "data": "ok"})
    );

    let r = s.http(
        "GET",
        &format!("{NS2}/instance/list?serviceName=v2svc&groupName=G2"),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (v["code"].as_i64(), v["message"].as_str()),
        (Some(0), Some("success"))
    );
    assert_eq!(v["data"]["groupName"], "G2");
    assert_eq!(v["data"]["hosts"][0]["ip"], "10.9.0.1");
    assert_eq!(v["data"]["hosts"][0]["weight"], 1.5);

    let r = s.http(
        "GET",
        &format!("{NS2}/instance?serviceName=v2svc&groupName=G2&ip=10.9.0.1&port=80"),
    );
    let v = r.json();
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"]["ip"], "10.9.0.1");
    assert_eq!(v["data"]["metadata"], json!({"a": "b"}));

    let r = s.http("GET", &format!("{NS2}/service/list?groupName=G2"));
    let v = r.json();
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"]["count"], 1);
    assert_eq!(v["data"]["services"], json!(["v2svc"]));

    let r = s.http(
        "GET",
        &format!("{NS2}/service?serviceName=v2svc&groupName=G2"),
    );
    let v = r.json();
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"]["name"], "v2svc");

    let r = s.http(
        "PUT",
        &format!("{NS2}/instance?serviceName=v2svc&groupName=G2&ip=10.9.0.1&port=80&weight=4"),
    );
    assert_eq!(r.json()["data"], "ok");
    let r = s.http(
        "DELETE",
        &format!("{NS2}/instance?serviceName=v2svc&groupName=G2&ip=10.9.0.1&port=80"),
    );
    assert_eq!(
        r.json(),
        json!({"code": 0, "message": "success", "data": "ok"})
    );
    let v = s
        .http(
            "GET",
            &format!("{NS2}/instance/list?serviceName=v2svc&groupName=G2"),
        )
        .json();
    assert_eq!(v["data"]["hosts"], json!([]));

    let r = s.http(
        "GET",
        &format!("{NS2}/instance?serviceName=v2svc&groupName=G2&ip=10.9.0.1&port=80"),
    );
    assert_eq!(r.status, 404);
    let v = r.json();
    assert_ne!(v["code"], 0);
    assert!(v["data"].is_null());
}

#[test]
fn keep_alive_connections_serve_several_requests_in_order() {
    let s = Server::start(&[]);
    let mut sock = TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Three pipelined requests on one connection, the last one closing it.
    let reqs = format!(
        "POST {NS}/instance?serviceName=ka&ip=10.10.0.1&port=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\
         GET {NS}/instance/list?serviceName=ka HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /nacos/v1/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(reqs.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut sock, &mut raw);
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "404"], "{text}");
    assert!(text.contains("10.10.0.1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_metrics_count_http_clients_independently_of_idle_grpc_connections() {
    let s = Server::start(&[]);
    for i in 1..=2 {
        ok(&s.http(
            "POST",
            &format!("{NS}/instance?serviceName=mix&ip=10.11.0.{i}&port=1"),
        ));
    }
    // Three SDK connections that are set up but publish and subscribe nothing (yet).
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(common::Conn::open(s.grpc).await);
    }
    let m = s.operator_metrics();
    assert_eq!(m["connectionBasedClientCount"], 3, "{m}");
    assert_eq!(m["ephemeralIpPortClientCount"], 2, "{m}");
    assert!(
        m["clientCount"].as_i64().unwrap()
            >= m["connectionBasedClientCount"].as_i64().unwrap()
                + m["ephemeralIpPortClientCount"].as_i64().unwrap(),
        "{m}"
    );
    drop(conns);
}
