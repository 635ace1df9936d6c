//! The web console's files and APIs against the real binary: `/nacos/` (types, gzip, cache
//! headers), `/nacos/v1/ns/catalog/{services,service,instances}` (shapes, paging, filters,
//! refusals), `/nacos/v1/ns/service/subscribers`, `/nacos/v1/console/{server/state,
//! namespaces,metrics/history}`, and a console edit (`PUT /instance`) reaching a subscriber
//! as a push. Everything on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{enc, read_response, wait_until, HttpResp, Server};
use serde_json::Value;
use wire::udp_push::decode_push;

const NS: &str = "/nacos/v1/ns";

/// A request with extra header lines (`Name: value\r\n` each).
fn raw(server: &Server, method: &str, path: &str, headers: &str) -> HttpResp {
    let mut s = TcpStream::connect(("127.0.0.1", server.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    read_response(&mut s).unwrap()
}

fn get_json(server: &Server, path: &str) -> Value {
    let r = server.http("GET", path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

fn status(server: &Server, method: &str, path: &str) -> (u16, String) {
    let r = server.http(method, path);
    (r.status, r.text())
}

fn register(server: &Server, service: &str, group: &str, ip: &str, port: u16, extra: &str) {
    let path = format!(
        "{NS}/instance?serviceName={}&groupName={group}&ip={ip}&port={port}{extra}",
        enc(service)
    );
    let r = server.http("POST", &path);
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "POST {path}");
}

#[test]
fn the_console_is_served_with_types_compression_and_cache_headers() {
    let s = Server::start(&[]);
    let r = s.http("GET", "/nacos");
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "/nacos/");

    let index = s.http("GET", "/nacos/");
    assert_eq!(index.status, 200, "{}", index.text());
    assert!(index.headers["content-type"].starts_with("text/html"));
    assert_eq!(index.headers["cache-control"], "no-cache");
    assert!(
        !index.headers.contains_key("content-encoding"),
        "not asked for gzip"
    );
    assert_eq!(s.http("GET", "/nacos/index.html").body, index.body);
    let html = index.text();
    let at = html.find("assets/").expect("index names its assets");
    let tag: String = html[at + 7..].chars().take_while(|c| *c != '/').collect();
    assert_eq!(tag.len(), 8, "a hash names the assets: {html}");

    let js_path = format!("/nacos/assets/{tag}/app.js");
    let js = s.http("GET", &js_path);
    assert_eq!(js.status, 200);
    let ctype = &js.headers["content-type"];
    assert!(ctype.contains("javascript"), "{ctype}");
    assert!(js.headers["cache-control"].contains("immutable"));
    assert!(js.text().contains("import"), "the module itself");

    let gz = raw(&s, "GET", &js_path, "Accept-Encoding: br, gzip;q=0.8\r\n");
    assert_eq!(gz.status, 200);
    assert_eq!(gz.headers["content-encoding"], "gzip");
    assert_eq!(&gz.body[..2], &[0x1f, 0x8b], "a gzip stream");
    assert!(gz.body.len() < js.body.len());
    assert_eq!(gz.headers["vary"], "Accept-Encoding");
    let refused = raw(&s, "GET", &js_path, "Accept-Encoding: gzip;q=0\r\n");
    assert!(!refused.headers.contains_key("content-encoding"));

    let css = s.http("GET", &format!("/nacos/assets/{tag}/style.css"));
    assert!(css.headers["content-type"].starts_with("text/css"));
    let page = s.http("GET", &format!("/nacos/assets/{tag}/pages/services.js"));
    assert_eq!(page.status, 200, "modules in folders are found");

    assert_eq!(
        s.http("GET", "/nacos/assets/00000000/app.js").status,
        404,
        "a stale tag"
    );
    assert_eq!(
        s.http("GET", &format!("/nacos/assets/{tag}/nope.js"))
            .status,
        404
    );
    assert_eq!(
        s.http("GET", "/nacos/app.js").status,
        404,
        "assets only under their tag"
    );
    assert_eq!(s.http("POST", "/nacos/").status, 405);
    // HEAD: the head of a GET (the test client cannot parse a body-less answer).
    let mut c = TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"HEAD /nacos/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    std::io::Read::read_to_string(&mut c, &mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", index.body.len())),
        "HEAD tells the length: {head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "and sends no body: {head}");
    // The APIs are not shadowed by the console.
    assert_eq!(
        s.http("GET", "/nacos/v1/console/health/liveness").text(),
        "OK"
    );
}

#[test]
fn catalog_services_pages_filters_and_counts() {
    let s = Server::start(&[]);
    for i in 0..25 {
        register(
            &s,
            &format!("cat-svc-{i:02}"),
            "G1",
            "127.0.0.1",
            9000 + i,
            "",
        );
    }
    register(&s, "cat-svc-00", "G1", "127.0.0.2", 9000, "&clusterName=B");
    register(&s, "other", "G2", "127.0.0.1", 9100, "");
    let list = |q: &str| get_json(&s, &format!("{NS}/catalog/services?{q}"));
    let names = |v: &Value| -> Vec<String> {
        v["serviceList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };

    let v = list("pageNo=1&pageSize=10&groupNameParam=G1");
    assert_eq!(v["count"], 25, "{v}");
    assert_eq!(
        names(&v),
        (0..10)
            .map(|i| format!("cat-svc-{i:02}"))
            .collect::<Vec<_>>()
    );
    let first = &v["serviceList"][0];
    assert_eq!(first["groupName"], "G1");
    assert_eq!(first["clusterCount"], 2, "{first}");
    assert_eq!(first["ipCount"], 2);
    assert_eq!(first["healthyInstanceCount"], 2);
    assert_eq!(first["triggerFlag"], "false");
    assert_eq!(first["ephemeral"], true);
    assert_eq!(v["serviceList"][1]["ipCount"], 1);

    let page3 = list("pageNo=3&pageSize=10&groupNameParam=G1");
    assert_eq!(
        names(&page3),
        (20..25)
            .map(|i| format!("cat-svc-{i:02}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        list("pageNo=4&pageSize=10&groupNameParam=G1")["serviceList"],
        serde_json::json!([])
    );

    // Substrings of the name and of the group, as Nacos's `.*x.*`.
    let v = list("pageNo=1&pageSize=100&serviceNameParam=svc-1");
    assert_eq!(v["count"], 10, "{v}");
    let v = list("pageNo=1&pageSize=100&groupNameParam=2");
    assert_eq!(names(&v), ["other"]);
    // Defaults: page 1 of 10, every group, namespace public.
    let v = list("");
    assert_eq!(v["count"], 26);
    assert_eq!(v["serviceList"].as_array().unwrap().len(), 10);
    assert_eq!(list("namespaceId=elsewhere")["count"], 0);

    for bad in [
        "pageSize=0",
        "pageSize=1001",
        "pageNo=0",
        "pageNo=abc",
        "hasIpCount=perhaps",
    ] {
        let (code, text) = status(&s, "GET", &format!("{NS}/catalog/services?{bad}"));
        assert_eq!(code, 400, "{bad}: {text}");
        assert!(!text.is_empty());
    }
}

#[test]
fn catalog_service_and_instances_show_clusters_metadata_and_filter() {
    let s = Server::start(&[]);
    let meta = enc(r#"{"color":"blue","zone":"a"}"#);
    register(
        &s,
        "detail",
        "DEFAULT_GROUP",
        "127.0.0.1",
        8001,
        &format!("&metadata={meta}"),
    );
    register(
        &s,
        "detail",
        "DEFAULT_GROUP",
        "127.0.0.1",
        8002,
        "&clusterName=B&weight=3",
    );
    register(
        &s,
        "detail",
        "DEFAULT_GROUP",
        "127.0.0.2",
        8001,
        "&metadata=color%3Dgreen",
    );

    let v = get_json(&s, &format!("{NS}/catalog/service?serviceName=detail"));
    assert_eq!(v["service"]["name"], "detail", "{v}");
    assert_eq!(v["service"]["groupName"], "DEFAULT_GROUP");
    assert_eq!(v["service"]["protectThreshold"], 0.0);
    assert_eq!(v["service"]["ephemeral"], true);
    let clusters: Vec<&str> = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["B", "DEFAULT"]);
    assert_eq!(v["clusters"][0]["healthChecker"]["type"], "TCP");
    assert_eq!(v["clusters"][0]["useIPPort4Check"], true);
    assert_eq!(v["clusters"][0]["serviceName"], "detail");

    let inst = |q: &str| get_json(&s, &format!("{NS}/catalog/instances?serviceName=detail{q}"));
    let v = inst("&pageNo=1&pageSize=2");
    assert_eq!(v["count"], 3, "{v}");
    let list = v["list"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    // Sorted by cluster, then address.
    assert_eq!(
        (list[0]["clusterName"].as_str(), list[0]["port"].as_u64()),
        (Some("B"), Some(8002))
    );
    assert_eq!(list[0]["weight"], 3.0);
    assert_eq!(list[1]["ip"], "127.0.0.1");
    assert_eq!(list[1]["metadata"]["color"], "blue");
    assert_eq!(list[1]["serviceName"], "DEFAULT_GROUP@@detail");
    assert_eq!(list[1]["enabled"], true);
    assert_eq!(
        list[1]["instanceId"],
        "127.0.0.1#8001#DEFAULT#DEFAULT_GROUP@@detail"
    );
    assert_eq!(
        inst("&pageNo=2&pageSize=2")["list"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(inst("&clusterName=DEFAULT")["count"], 2);
    let blue = inst("&metadataFilter=color%3Dblue");
    assert_eq!(blue["count"], 1, "{blue}");
    assert_eq!(blue["list"][0]["ip"], "127.0.0.1");
    assert_eq!(inst("&metadataFilter=color%3Dblue,zone%3Db")["count"], 0);
    assert_eq!(
        inst("&metadataFilter=color%3Dgreen")["list"][0]["ip"],
        "127.0.0.2"
    );

    for (path, want) in [
        (
            format!("{NS}/catalog/instances?serviceName=detail&metadataFilter=color"),
            400,
        ),
        (
            format!("{NS}/catalog/instances?serviceName=detail&pageSize=5000"),
            400,
        ),
        (format!("{NS}/catalog/instances"), 400),
        (format!("{NS}/catalog/instances?serviceName=missing"), 404),
        (format!("{NS}/catalog/service?serviceName=missing"), 404),
        (format!("{NS}/catalog/service"), 400),
    ] {
        let (code, text) = status(&s, "GET", &path);
        assert_eq!(code, want, "{path}: {text}");
    }
}

/// A console edit (weight, then offline) reaches a UDP subscriber as a push, and the
/// subscriber list names it.
#[test]
fn a_console_edit_is_pushed_and_the_subscriber_is_listed() {
    let s = Server::start(&[]);
    register(&s, "edited", "DEFAULT_GROUP", "127.0.0.1", 7001, "");
    register(&s, "edited", "DEFAULT_GROUP", "127.0.0.1", 7002, "");
    let sock = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let list = raw(
        &s,
        "GET",
        &format!(
            "{NS}/instance/list?serviceName=edited&udpPort={port}&clientIP=127.0.0.1&app=shop"
        ),
        "User-Agent: Nacos-Java-Client:v1.0.0\r\n",
    );
    assert_eq!(list.status, 200, "{}", list.text());

    // The subscription travels to the core owning the service as a message, so the listing
    // (answered through whichever core takes the next connection) may be a moment behind.
    let mut subs = Value::Null;
    wait_until(Duration::from_secs(3), || {
        subs = get_json(&s, &format!("{NS}/service/subscribers?serviceName=edited"));
        subs["count"] == 1
    });
    assert_eq!(subs["count"], 1, "{subs}");
    let sub = &subs["subscribers"][0];
    assert_eq!(sub["addrStr"], format!("127.0.0.1:{port}"));
    assert_eq!(sub["ip"], "127.0.0.1");
    assert_eq!(sub["port"], port);
    assert_eq!(sub["type"], "udp");
    assert_eq!(sub["app"], "shop");
    assert_eq!(sub["serviceName"], "DEFAULT_GROUP@@edited");
    assert_eq!(sub["namespaceId"], "public");
    let none = get_json(&s, &format!("{NS}/service/subscribers?serviceName=nobody"));
    assert_eq!(
        (
            none["count"].as_u64(),
            none["subscribers"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    assert_eq!(
        status(&s, "GET", &format!("{NS}/service/subscribers")).0,
        400
    );

    // What the console sends: every field of the instance, the changed one new.
    let put = |q: &str| {
        let r = s.http(
            "PUT",
            &format!(
                "{NS}/instance?serviceName=edited&ip=127.0.0.1&ephemeral=true&metadata=%7B%7D{q}"
            ),
        );
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{q}");
    };
    put("&port=7001&weight=7&enabled=true");
    let hosts = wait_push(&sock, |h| {
        h.iter().any(|x| x["port"] == 7001 && x["weight"] == 7.0)
    });
    assert_eq!(hosts.len(), 2);
    put("&port=7002&weight=1&enabled=false");
    let hosts = wait_push(&sock, |h| h.len() == 1);
    assert_eq!(
        hosts[0]["port"], 7001,
        "an offline instance is not pushed to consumers"
    );
    let v = get_json(&s, &format!("{NS}/catalog/instances?serviceName=edited"));
    let offline = v["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["port"] == 7002)
        .unwrap()
        .clone();
    assert_eq!(
        offline["enabled"], false,
        "the console still lists it, offline: {v}"
    );
}

/// The hosts of the first push on `sock` within 5 s whose hosts satisfy `want`.
fn wait_push(sock: &UdpSocket, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65_536];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let p = decode_push(&buf[..n]).unwrap();
            let v: Value = serde_json::from_str(&p.data).unwrap();
            let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
            if want(&hosts) {
                return hosts;
            }
            seen.push(v);
        }
    }
    panic!("no such push within 5 s; pushes seen: {seen:?}");
}

#[test]
fn server_state_namespaces_and_the_metrics_ring() {
    let s = Server::start(&[]);
    let st = get_json(&s, "/nacos/v1/console/server/state");
    for key in [
        "auth_enabled",
        "login_page_enabled",
        "auth_system_type",
        "auth_admin_request",
        "version",
        "standalone_mode",
    ] {
        assert!(
            st[key].is_string(),
            "{key} is a string in Nacos's map: {st}"
        );
    }
    assert_eq!(st["auth_enabled"], "false");
    assert_eq!(st["standalone_mode"], "standalone");

    register(
        &s,
        "in-ns",
        "DEFAULT_GROUP",
        "127.0.0.1",
        7100,
        "&namespaceId=team-a",
    );
    let ns = get_json(&s, "/nacos/v1/console/namespaces");
    assert_eq!(ns["code"], 200, "{ns}");
    let data = ns["data"].as_array().unwrap();
    assert_eq!(
        data[0]["namespace"], "",
        "public first, as Nacos 2.x names it"
    );
    assert_eq!(data[0]["namespaceShowName"], "public");
    assert_eq!(data[0]["type"], 0);
    assert!(data.iter().any(|n| n["namespace"] == "team-a"), "{ns}");
    for key in [
        "namespace",
        "namespaceShowName",
        "namespaceDesc",
        "quota",
        "configCount",
        "type",
    ] {
        assert!(data[0].get(key).is_some(), "{key}: {ns}");
    }

    // The ring fills at one sample a second; rates come from consecutive samples.
    let ok = wait_until(Duration::from_secs(6), || {
        get_json(&s, "/nacos/v1/console/metrics/history")["samples"]
            .as_array()
            .is_some_and(|a| a.len() >= 2)
    });
    assert!(ok, "two samples within 6 s");
    let h = get_json(&s, "/nacos/v1/console/metrics/history?last=1");
    assert_eq!(h["intervalMs"], 1000);
    assert_eq!(h["samples"].as_array().unwrap().len(), 1, "last=1: {h}");
    let sample = &h["samples"][0];
    assert!(sample["instances"].as_i64().unwrap() >= 1, "{sample}");
    assert!(sample["requestsPerSec"]["http_other"].is_number());
    assert!(sample["latencyMs"]["http_instance"].is_number());
    assert!(h["kinds"]
        .as_array()
        .unwrap()
        .contains(&Value::from("grpc_query")));
    assert_eq!(
        status(&s, "GET", "/nacos/v1/console/metrics/history?last=x").0,
        400
    );
}

#[test]
fn namespaces_are_created_edited_deleted_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut s = Server::start(&["--data-dir", &data]);
    let ns = "/nacos/v1/console/namespaces";
    let (code, text) = status(
        &s,
        "POST",
        &format!("{ns}?customNamespaceId=team-a&namespaceName=Team%20A&namespaceDesc=first"),
    );
    assert_eq!((code, text.as_str()), (200, "true"));
    assert_eq!(
        status(
            &s,
            "POST",
            &format!("{ns}?customNamespaceId=team-a&namespaceName=Again")
        )
        .0,
        409
    );
    assert_eq!(
        status(
            &s,
            "POST",
            &format!("{ns}?customNamespaceId=bad%20id&namespaceName=x")
        )
        .0,
        400
    );
    assert_eq!(
        status(
            &s,
            "POST",
            &format!("{ns}?customNamespaceId=public&namespaceName=x")
        )
        .0,
        400
    );
    assert_eq!(
        status(&s, "POST", &format!("{ns}?customNamespaceId=no-name")).0,
        400
    );
    assert_eq!(
        status(
            &s,
            "PUT",
            &format!("{ns}?namespace=nope&namespaceShowName=x")
        )
        .0,
        404
    );
    // Without an id, one is made.
    assert_eq!(
        status(&s, "POST", &format!("{ns}?namespaceName=Generated")).0,
        200
    );
    assert_eq!(
        status(
            &s,
            "PUT",
            &format!("{ns}?namespace=team-a&namespaceShowName=Team%20Alpha&namespaceDesc=renamed")
        ),
        (200, "true".into())
    );
    register(
        &s,
        "svc",
        "DEFAULT_GROUP",
        "127.0.0.1",
        7200,
        "&namespaceId=team-a",
    );

    let find = |s: &Server, id: &str| -> Option<Value> {
        get_json(s, ns)["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["namespace"] == id)
            .cloned()
    };
    let a = find(&s, "team-a").unwrap();
    assert_eq!(a["namespaceShowName"], "Team Alpha", "{a}");
    assert_eq!(a["namespaceDesc"], "renamed");
    assert_eq!(a["type"], 2);
    assert_eq!(a["serviceCount"], 1);
    let all = get_json(&s, ns);
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["namespaceShowName"] == "Generated"),
        "{all}"
    );

    s.kill();
    let s = Server::start(&["--data-dir", &data]);
    let a = find(&s, "team-a").expect("a namespace survives a restart");
    assert_eq!(a["namespaceShowName"], "Team Alpha");
    assert_eq!(
        status(&s, "DELETE", &format!("{ns}?namespaceId=team-a")),
        (200, "true".into())
    );
    assert!(find(&s, "team-a").is_none(), "deleted");
    assert_eq!(
        status(&s, "DELETE", &format!("{ns}?namespaceId=team-a")).0,
        200,
        "idempotent"
    );
}
