//! The status endpoints against the real binary: `GET /nacos/v1/core/cluster/nodes` (and
//! v2's `/core/cluster/node/list`) in Nacos's `Member` shape with this node's Raft state,
//! and `/operator/metrics`'s client counts, persistent ones included (Nacos's
//! `persistentIpPortClientCount`), across a `kill -9`. Persistent instances only on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use common::{wait_until, Server};
use serde_json::Value;

const NS: &str = "/nacos/v1/ns";

fn nodes(s: &Server, query: &str) -> Value {
    let r = s.http("GET", &format!("/nacos/v1/core/cluster/nodes{query}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A port on 127.0.0.1 nothing listens on (a connect is refused).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_standalone_node_lists_itself_as_nacos_does_with_its_raft_state() {
    let s = Server::start(&[]);
    let me = format!("127.0.0.1:{}", s.http);
    // Ready to serve comes a moment before the one-voter group has elected itself.
    let led = wait_until(Duration::from_secs(5), || {
        nodes(&s, "")["data"][0]["extendInfo"]["raft"]["role"] == "LEADER"
    });
    assert!(led, "no Raft leader: {}", nodes(&s, ""));
    let v = nodes(&s, "");
    assert_eq!(v["code"], 200, "{v}");
    assert!(
        v["message"].is_null(),
        "Nacos's RestResult: message null: {v}"
    );
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{v}");
    let m = &data[0];
    assert_eq!(m["address"], me.as_str());
    assert_eq!(m["ip"], "127.0.0.1");
    assert_eq!(m["port"], s.http);
    assert_eq!(m["state"], "UP");
    assert_eq!(m["failAccessCnt"], 0);
    assert_eq!(m["abilities"]["namingAbility"]["supportJraft"], true);
    assert_eq!(
        m["abilities"]["remoteAbility"]["supportRemoteConnection"],
        true
    );
    for group in [
        "naming_persistent_service_v2",
        "naming_service_metadata",
        "naming_instance_metadata",
    ] {
        let g = &m["extendInfo"]["raftMetaData"]["metaDataMap"][group];
        assert_eq!(g["leader"], me.as_str(), "{group}: {m}");
        assert_eq!(
            g["raftGroupMember"],
            serde_json::json!([me]),
            "{group}: {m}"
        );
        assert!(g["term"].as_u64().unwrap() >= 1, "{group}: {m}");
    }
    let raft = &m["extendInfo"]["raft"];
    assert_eq!(raft["role"], "LEADER", "{m}");
    assert_eq!(raft["voters"], serde_json::json!([me]));

    // The Raft indexes are live: a persistent write moves the committed and applied index.
    let before = raft["committedIndex"].as_u64().unwrap_or(0);
    s.ok(
        "POST",
        &format!(
            "{NS}/instance?serviceName=st&ip=127.0.0.1&port={}&ephemeral=false",
            closed_port()
        ),
    );
    let after = &nodes(&s, "")["data"][0]["extendInfo"]["raft"];
    assert!(
        after["committedIndex"].as_u64().unwrap() > before,
        "{after}"
    );
    assert!(after["appliedIndex"].as_u64().unwrap() > before, "{after}");

    // keyword: the members whose address starts with it.
    assert_eq!(
        nodes(&s, "?keyword=127.0.0")["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        nodes(&s, "?keyword=10.")["data"].as_array().unwrap().len(),
        0
    );

    // v2: Result-wrapped, filtered by address and state; a state Nacos does not know is 400.
    let r = s.http("GET", "/nacos/v2/core/cluster/node/list");
    let v2 = r.json();
    assert_eq!((r.status, v2["code"].as_i64()), (200, Some(0)), "{v2}");
    assert_eq!(v2["data"][0]["address"], me.as_str());
    let r = s.http("GET", "/nacos/v2/core/cluster/node/list?state=down");
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 0);
    let r = s.http("GET", "/nacos/v2/core/cluster/node/list?state=up");
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);
    let r = s.http("GET", "/nacos/v2/core/cluster/node/list?state=sleepy");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], 23000);
    assert_eq!(r.json()["message"], "Illegal state: sleepy");
}

#[test]
fn operator_metrics_count_persistent_clients_and_keep_them_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data-dir", dir.path().to_str().unwrap()];
    let mut s = Server::start(&args);
    let (p1, p2) = (closed_port(), closed_port());
    // Nacos's client is `ip:port#false`: one per address, whatever the services it publishes.
    for (svc, port) in [("pa", p1), ("pa", p2), ("pb", p1)] {
        s.ok(
            "POST",
            &format!("{NS}/instance?serviceName={svc}&ip=127.0.0.1&port={port}&ephemeral=false"),
        );
    }
    s.ok(
        "POST",
        &format!("{NS}/instance?serviceName=eph&ip=10.0.0.1&port=80"),
    );
    let m = s.operator_metrics();
    assert_eq!(m["persistentIpPortClientCount"], 2, "{m}");
    assert_eq!(m["ephemeralIpPortClientCount"], 1, "{m}");
    assert_eq!(m["clientCount"], 3, "{m}");
    assert_eq!(m["instanceCount"], 4, "{m}");
    assert_eq!(m["raft"]["role"], "LEADER", "{m}");
    assert!(m["raft"]["records"].as_u64().unwrap() >= 3, "{m}");

    // Nothing listens on those ports: a refused connect flips at once, and the counters
    // of the checker say so.
    let flipped = wait_until(Duration::from_secs(15), || {
        let h = &s.operator_metrics()["healthCheck"];
        h["flips"].as_u64().unwrap_or(0) >= 1 && h["failures"].as_u64().unwrap_or(0) >= 1
    });
    assert!(flipped, "no flip counted: {}", s.operator_metrics());
    assert_eq!(s.operator_metrics()["healthCheck"]["checkedInstances"], 3);

    s.kill();
    let mut s = Server::start(&args);
    // Replayed from the Raft store: the persistent clients are back, the ephemeral one is not.
    let m = s.operator_metrics();
    assert_eq!(m["persistentIpPortClientCount"], 2, "after restart: {m}");
    assert_eq!(m["ephemeralIpPortClientCount"], 0, "after restart: {m}");

    // A client goes with its last instance.
    s.ok(
        "DELETE",
        &format!("{NS}/instance?serviceName=pa&ip=127.0.0.1&port={p1}&ephemeral=false"),
    );
    assert_eq!(s.operator_metrics()["persistentIpPortClientCount"], 2);
    s.ok(
        "DELETE",
        &format!("{NS}/instance?serviceName=pb&ip=127.0.0.1&port={p1}&ephemeral=false"),
    );
    assert_eq!(s.operator_metrics()["persistentIpPortClientCount"], 1);
    s.ok(
        "DELETE",
        &format!("{NS}/instance?serviceName=pa&ip=127.0.0.1&port={p2}&ephemeral=false"),
    );
    let m = s.operator_metrics();
    assert_eq!(m["persistentIpPortClientCount"], 0, "{m}");
    assert_eq!(m["clientCount"], 0, "{m}");
    s.kill();
}

/// Two free HTTP ports on 127.0.0.1 whose gRPC (+500) and peer (+1001, UDP) ports are free.
fn two_nodes_ports() -> [(u16, u16); 2] {
    let mut out = Vec::new();
    while out.len() < 2 {
        let http = closed_port();
        let Some(peer) = http.checked_add(1001) else {
            continue;
        };
        let Some(grpc) = http.checked_add(500) else {
            continue;
        };
        let clash = out.iter().any(|(h, _): &(u16, u16)| {
            [*h, h + 500, h + 1001]
                .iter()
                .any(|p| [http, grpc, peer].contains(p))
        });
        if !clash
            && TcpListener::bind(("127.0.0.1", grpc)).is_ok()
            && UdpSocket::bind(("127.0.0.1", peer)).is_ok()
        {
            out.push((http, grpc));
        }
    }
    [out[0], out[1]]
}

#[test]
fn a_cluster_member_lists_every_member_with_the_state_its_failure_detector_gives() {
    let ports = two_nodes_ports();
    let members = ports
        .iter()
        .map(|(h, _)| format!("127.0.0.1:{h}"))
        .collect::<Vec<_>>()
        .join(",");
    let args = ["--members", members.as_str(), "--insecure"];
    let a = Server::spawn("127.0.0.1", ports[0].0, ports[0].1, &args).unwrap();
    let mut b = Server::spawn("127.0.0.1", ports[1].0, ports[1].1, &args).unwrap();
    let states = |s: &Server| -> Vec<(String, String)> {
        nodes(s, "")["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["address"].as_str().unwrap().to_owned(),
                    m["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let mut expected: Vec<String> = ports
        .iter()
        .map(|(h, _)| format!("127.0.0.1:{h}"))
        .collect();
    expected.sort();
    let all_up = wait_until(Duration::from_secs(20), || {
        states(&a)
            == expected
                .iter()
                .map(|e| (e.clone(), "UP".to_owned()))
                .collect::<Vec<_>>()
    });
    assert!(
        all_up,
        "members not all UP, sorted by address: {:?}",
        states(&a)
    );
    let m = &nodes(&a, "")["data"];
    for member in m.as_array().unwrap() {
        let (ip, port) = member["address"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap();
        assert_eq!(
            (member["ip"].as_str().unwrap(), member["port"].to_string()),
            (ip, port.to_owned())
        );
    }
    // This node's Raft state names the members by address (raft ids are derived from them):
    // both voters, and a leader that is one of them, under every Nacos naming group.
    let me = format!("127.0.0.1:{}", ports[0].0);
    let sorted = |v: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let named = wait_until(Duration::from_secs(20), || {
        let data = nodes(&a, "")["data"].clone();
        let Some(mine) = data
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["address"] == me.as_str()).cloned())
        else {
            return false;
        };
        let g = &mine["extendInfo"]["raftMetaData"]["metaDataMap"]["naming_persistent_service_v2"];
        let leader = g["leader"].as_str().unwrap_or("").to_owned();
        sorted(&g["raftGroupMember"]) == expected
            && expected.contains(&leader)
            && sorted(&mine["extendInfo"]["raft"]["voters"]) == expected
    });
    assert!(
        named,
        "raft members not named by address: {}",
        nodes(&a, "")
    );
    // keyword narrows to one member.
    let one = nodes(&a, &format!("?keyword=127.0.0.1:{}", ports[1].0));
    assert_eq!(one["data"].as_array().unwrap().len(), 1, "{one}");

    b.kill();
    let gone = format!("127.0.0.1:{}", ports[1].0);
    let seen_down = wait_until(Duration::from_secs(30), || {
        states(&a)
            .iter()
            .any(|(addr, state)| *addr == gone && state != "UP")
    });
    assert!(seen_down, "a killed member still UP: {:?}", states(&a));
    let me = format!("127.0.0.1:{}", ports[0].0);
    assert!(states(&a).contains(&(me, "UP".to_owned())));
}
