//! What a node says about itself and its cluster: `GET /nacos/v1/core/cluster/nodes` (and
//! v2's `/nacos/v2/core/cluster/node/list`) as Nacos answers them, and
//! `GET /nacos/v{1,2}/ns/operator/metrics`.
//!
//! A member is Nacos's `Member` JSON (`core/cluster/Member.java` in Nacos 2.5.1): `ip`,
//! `port`, `state`, `extendInfo`, `address`, `failAccessCnt`, `abilities`,
//! `grpcReportEnabled`; the list is sorted by address and wrapped in `RestResult`
//! (`{"code":200,"message":null,"data":[…]}`) on v1, in `Result` (`{"code":0,…}`) on v2.
//! States come from this node's cluster view (its own failure detector), not from a vote.
//!
//! # Raft metadata
//! Nacos puts, in its own member's `extendInfo.raftMetaData.metaDataMap`, one entry per
//! JRaft group: `{leader, term, raftGroupMember}`. Nacelle has one Raft group holding what
//! Nacos spreads over three naming groups (persistent instances, service metadata, instance
//! metadata), so the three names carry the same entry: tools that look for a group's leader
//! find it. Nacos names Raft peers `ip:raftPort` (HTTP port − 1000); Nacelle's Raft has no
//! port of its own (it rides on the peer transport), so peers are named by their member
//! address `ip:httpPort`. Only this node's own member carries Raft metadata, as in Nacos
//! (another member's would be whatever it last reported; here nobody reports it).

use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::{json, Map, Value};
use wire::http_params::{Api, Params};

use super::{json as json_resp, wrap_v2, Resp};
use crate::core::with_core;

/// The Nacos Raft groups whose content Nacelle's one group holds.
const NACOS_NAMING_GROUPS: [&str; 3] = [
    "naming_persistent_service_v2",
    "naming_service_metadata",
    "naming_instance_metadata",
];

/// The Raft id of a standalone node (`cp` starts a one-voter group under it).
const STANDALONE_RAFT_ID: raft::NodeId = 1;

/// `GET /nacos/v1/core/cluster/nodes[?keyword=prefix]`: every member whose address equals
/// or starts with `keyword`.
pub fn cluster_nodes_v1(p: &Params<'_>) -> Resp {
    let keyword = p.get("keyword").filter(|k| !k.is_empty());
    let members: Vec<Value> = members()
        .into_iter()
        .filter(|m| keyword.is_none_or(|k| m.address.starts_with(k)))
        .map(Node::into_json)
        .collect();
    let body = json!({"code": 200, "message": null, "data": members});
    json_resp(StatusCode::OK, body.to_string())
}

/// `GET /nacos/v2/core/cluster/node/list[?address=prefix&state=UP]`.
pub fn cluster_nodes_v2(p: &Params<'_>) -> Resp {
    let address = p.get("address").filter(|k| !k.is_empty());
    let state = match p.get("state").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            let s = s.to_ascii_uppercase();
            if !["STARTING", "UP", "SUSPICIOUS", "DOWN", "ISOLATION"].contains(&s.as_str()) {
                // Nacos: NacosApiException(400, ErrorCode.ILLEGAL_STATE = 23000, "Illegal state: x").
                let msg = format!("Illegal state: {}", p.get("state").unwrap_or_default());
                return json_resp(StatusCode::BAD_REQUEST, wrap_v2(23000, &msg, "null"));
            }
            Some(s)
        }
    };
    let members: Vec<Value> = members()
        .into_iter()
        .filter(|m| address.is_none_or(|a| m.address.starts_with(a)))
        .filter(|m| state.as_deref().is_none_or(|s| m.state == s))
        .map(Node::into_json)
        .collect();
    let data = Value::Array(members).to_string();
    json_resp(StatusCode::OK, wrap_v2(0, "success", &data))
}

/// One member as this node sees it.
struct Node {
    address: String,
    state: &'static str,
    /// This node's Raft state (its own member only).
    raft: Option<Value>,
}

impl Node {
    fn into_json(self) -> Value {
        let (ip, port) = match self.address.rsplit_once(':') {
            Some((ip, port)) => (ip.to_owned(), port.parse::<u16>().unwrap_or(0)),
            None => (self.address.clone(), 0),
        };
        let mut extend = Map::new();
        if let Some(Value::Object(raft)) = self.raft {
            extend.extend(raft);
        }
        json!({
            "ip": ip,
            "port": port,
            "state": self.state,
            "extendInfo": extend,
            "address": self.address,
            // Nacos counts failed member reports; Nacelle's failure detector states the
            // outcome instead (`state`).
            "failAccessCnt": 0,
            "abilities": {
                "remoteAbility": {"supportRemoteConnection": true, "grpcReportEnabled": true},
                "configAbility": {"supportRemoteMetrics": false},
                "namingAbility": {"supportJraft": true},
            },
            "grpcReportEnabled": true,
        })
    }
}

/// This node first, then the others, sorted by address (Nacos sorts `Member`s by address).
fn members() -> Vec<Node> {
    with_core(|c| {
        let s = &c.shared;
        let loaded = c.all_loaded();
        let me = match &s.cluster {
            Some(info) => info.me.as_str().to_owned(),
            None => standalone_address(s.cfg.bind, s.cfg.http_port),
        };
        let mut peers: Vec<(String, &'static str)> = Vec::new();
        if let Some(info) = &s.cluster {
            let health = info
                .stats
                .health
                .lock()
                .map(|h| h.clone())
                .unwrap_or_default();
            if health.is_empty() {
                // Before the first membership round: Nacos too starts every member UP.
                for m in &info.members {
                    let a = m.to_string();
                    if a != me {
                        peers.push((a, "UP"));
                    }
                }
            } else {
                for (node, code) in health {
                    peers.push((node, ["UP", "SUSPICIOUS", "DOWN"][usize::from(code).min(2)]));
                }
            }
        }
        let raft = {
            let m = s.cp.raft().metrics();
            let known = known_members(s, &me);
            let name = |id: raft::NodeId| raft_member(id, &known);
            let mut meta = raft_meta(&m, &name);
            if let Value::Object(o) = &mut meta {
                // Nacos's `extendInfo.version`; `holds` is Nacelle's (the console shows it).
                o.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
                let r = Ordering::Relaxed;
                o.insert(
                    "holds".into(),
                    json!({
                        "services": s.stat(|x| x.services.load(r)),
                        "instances": s.stat(|x| x.instances.load(r)),
                        "clients": s.stat(|x| x.clients.load(r)),
                        "raftRecords": m.records,
                    }),
                );
            }
            Some(meta)
        };
        let mut nodes = vec![Node {
            address: me.clone(),
            // Nacos's ServerStatusManager: STARTING until the data is loaded.
            state: if loaded { "UP" } else { "STARTING" },
            raft,
        }];
        nodes.extend(peers.into_iter().map(|(address, state)| Node {
            address,
            state,
            raft: None,
        }));
        nodes.sort_by(|a, b| a.address.cmp(&b.address));
        nodes
    })
}

/// A standalone node's member address: its bind address, or (bound to every address) the
/// loopback one, which is where a local console or script reaches it.
fn standalone_address(bind: std::net::IpAddr, http_port: u16) -> String {
    let ip = if bind.is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        bind
    };
    std::net::SocketAddr::new(ip, http_port).to_string()
}

/// Every member this node knows with its Raft id: a standalone node is the one voter of its
/// group (id 1); a cluster member's id is derived from its address (`cp::peers::raft_id`), so
/// this node, the members at start and those its failure detector has seen (`cluster.conf`
/// changes) can all be named.
fn known_members(s: &crate::core::Shared, me: &str) -> Vec<(raft::NodeId, String)> {
    let Some(info) = &s.cluster else {
        return vec![(STANDALONE_RAFT_ID, me.to_owned())];
    };
    let mut names: Vec<String> = info.members.iter().map(|m| m.to_string()).collect();
    names.push(me.to_owned());
    if let Ok(h) = info.stats.health.lock() {
        names.extend(h.iter().map(|(n, _)| n.clone()));
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            (
                crate::cp::peers::raft_id(&engine::distro::NodeId::new(&n)),
                n,
            )
        })
        .collect()
}

/// The member a Raft id stands for; an id no known member has is shown as `raft:<id>` rather
/// than guessed (a member removed from `cluster.conf` that the group still lists).
fn raft_member(id: raft::NodeId, known: &[(raft::NodeId, String)]) -> String {
    known
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| format!("raft:{id}"))
}

fn role_name(role: raft::Role) -> &'static str {
    match role {
        raft::Role::Leader => "LEADER",
        raft::Role::Follower => "FOLLOWER",
        raft::Role::Candidate => "CANDIDATE",
        raft::Role::Learner => "LEARNER",
        raft::Role::Shutdown => "SHUTDOWN",
    }
}

/// `extendInfo` entries for this node's Raft state: Nacos's `raftMetaData`, plus Nacelle's
/// `raft` object (role, indexes) that Nacos does not have.
fn raft_meta(m: &raft::Metrics, name: &dyn Fn(raft::NodeId) -> String) -> Value {
    let members: Vec<String> = m
        .voters
        .iter()
        .chain(&m.learners)
        .map(|id| name(*id))
        .collect();
    let mut group = Map::new();
    // Nacos leaves out an unknown leader (MapUtil.putIfValNoEmpty).
    if let Some(l) = m.leader {
        group.insert("leader".into(), Value::String(name(l)));
    }
    group.insert("term".into(), json!(m.term));
    group.insert("raftGroupMember".into(), json!(members));
    let mut map = Map::new();
    for g in NACOS_NAMING_GROUPS {
        map.insert(g.into(), Value::Object(group.clone()));
    }
    json!({
        "raftMetaData": {"metaDataMap": map},
        "raft": raft_json(m, name),
    })
}

/// Nacelle's view of its Raft node, as `/metrics` has it (`nacelle_raft_*`).
fn raft_json(m: &raft::Metrics, name: &dyn Fn(raft::NodeId) -> String) -> Value {
    let lag: Map<String, Value> = m
        .replication_lag
        .iter()
        .map(|(id, lag)| (name(*id), json!(lag)))
        .collect();
    json!({
        "role": role_name(m.role),
        "term": m.term,
        "leader": m.leader.map(name),
        "committedIndex": m.committed,
        "appliedIndex": m.applied,
        "lastLogIndex": m.last_log,
        "logEntries": m.log_entries,
        "snapshotIndex": m.snapshot,
        "voters": m.voters.iter().map(|id| name(*id)).collect::<Vec<_>>(),
        "learners": m.learners.iter().map(|id| name(*id)).collect::<Vec<_>>(),
        "replicationLag": lag,
        "records": m.records,
        "fsyncs": m.fsyncs,
        "snapshotsBuilt": m.snapshots_built,
        "snapshotsInstalled": m.snapshots_installed,
    })
}

/// `GET /nacos/v{1,2}/ns/operator/metrics`: Nacos's fields (OperatorController.metrics),
/// always in full (Nacos answers only `status` unless `onlyStatus=false`; the Node SDK reads
/// `status`, scripts read the counts), plus the members, the Raft state and the health
/// checker's counters.
pub fn operator_metrics(api: Api) -> Resp {
    let body = with_core(|c| {
        let s = &c.shared;
        let r = Ordering::Relaxed;
        let conns: i64 = s.metrics.iter().map(|m| m.connections.load(r) as i64).sum();
        let http_clients = s.stat(|x| x.heartbeat_clients.load(r));
        let persistent_clients = s.stat(|x| x.persistent_clients.load(r));
        let all_clients = s.stat(|x| x.clients.load(r));
        let replicas = s.stat(|x| x.replica_clients.load(r));
        // As Nacos counts them: every SDK connection is a client, and so is every ip:port
        // client, ephemeral (`ip:port#true`) or persistent (`ip:port#false`).
        let clients = conns + http_clients + persistent_clients;
        // Nacos's PersistentIpPortClientManager is responsible for every persistent client on
        // every node (they are in every node's store): they are not replicas here either.
        let responsible = (all_clients - replicas).max(0);
        // UP once the startup snapshot is loaded (Nacos: ServerStatusManager).
        let status = if c.all_loaded() { "UP" } else { "DOWN" };
        let mut out = json!({
            "status": status,
            "serviceCount": s.stat(|x| x.services.load(r)),
            "instanceCount": s.stat(|x| x.instances.load(r)),
            "subscribeCount": s.stat(|x| x.subscriptions.load(r)),
            "clientCount": clients,
            "connectionBasedClientCount": conns,
            "ephemeralIpPortClientCount": http_clients,
            "persistentIpPortClientCount": persistent_clients,
            "responsibleClientCount": responsible,
            "cpu": 0.0,
            "load": 0.0,
            "mem": 0.0,
        });
        let Value::Object(obj) = &mut out else {
            return out;
        };
        if let Some(info) = &s.cluster {
            let mut members =
                vec![json!({"address": info.me.as_str(), "state": "UP", "self": true})];
            if let Ok(h) = info.stats.health.lock() {
                for (node, code) in h.iter() {
                    let state = ["UP", "SUSPICIOUS", "DOWN"][usize::from(*code).min(2)];
                    members.push(json!({"address": node, "state": state}));
                }
            }
            obj.insert("members".into(), Value::Array(members));
        }
        {
            let me = match &s.cluster {
                Some(info) => info.me.as_str().to_owned(),
                None => standalone_address(s.cfg.bind, s.cfg.http_port),
            };
            let known = known_members(s, &me);
            let name = |id: raft::NodeId| raft_member(id, &known);
            obj.insert("raft".into(), raft_json(&s.cp.raft().metrics(), &name));
        }
        let sum = |get: fn(&crate::metrics::HealthGauges) -> &std::sync::atomic::AtomicU64| {
            s.metrics
                .iter()
                .map(|m| get(&m.health).load(r))
                .sum::<u64>()
        };
        obj.insert(
            "healthCheck".into(),
            json!({
                "checkedInstances": sum(|h| &h.targets),
                "probes": sum(|h| &h.probes),
                "checks": sum(|h| &h.checks),
                "failures": sum(|h| &h.failures),
                "flips": sum(|h| &h.flips),
                "probeLatencyMsTotal": sum(|h| &h.latency_sum_ms),
            }),
        );
        out
    })
    .to_string();
    match api {
        Api::V1 => json_resp(StatusCode::OK, body),
        Api::V2 => json_resp(StatusCode::OK, wrap_v2(0, "success", &body)),
    }
}
