//! The simulated clients: the truth the world keeps (every client it keeps alive and what
//! it should be publishing), the instances they publish, and what they do: gRPC
//! connections register, update and leave on the node holding them, HTTP clients register,
//! beat and deregister through a node of their choice and its router.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use engine::shard::{client_shard, conn_id};
use engine::{ClientId, ClientOp, Host, Instance, Metadata, ServiceKey, ShardMsg};

use super::invariants::DeadClient;
use super::nodes::Waiter;
use super::World;

/// A client the simulated world keeps alive, and what it should be publishing.
#[derive(Clone, Debug)]
pub(super) struct TruthClient {
    /// The node holding the connection (gRPC only).
    pub(super) node: Option<usize>,
    pub(super) publishes: BTreeMap<ServiceKey, (Instance, u64)>,
    pub(super) next_beat_ms: u64,
    /// HTTP only: the node the client talks to while it is up (the SDKs stick to one server
    /// and fail over to the next), and its beat period.
    pub(super) home: usize,
    pub(super) beat_ms: u64,
}

pub(super) const BEAT_MS: u64 = 5_000;
/// Beat period of the clients with short preserved timings (timeout 3×, deletion 6×).
const FAST_BEAT_MS: u64 = 1_000;

impl World {
    fn new_instance(&mut self) -> Instance {
        self.next_ip += 1;
        let ip = Ipv4Addr::from(0x0A01_0000 + self.next_ip);
        let port = 8000 + (self.rng.below(1000) as u16);
        let mut inst = Instance::new(Host::V4(ip), port, Arc::from("DEFAULT"));
        inst.weight = 1.0 + self.rng.below(5) as f64;
        if self.next_ip.is_multiple_of(2) {
            // Short preserved timings (as the chaos harness uses): an instance expires
            // within the time a dead node takes to be declared DOWN, so who expires it while
            // its owner is only SUSPICIOUS matters.
            let fast = Metadata::from_pairs([
                ("preserved.heart.beat.interval", FAST_BEAT_MS.to_string()),
                (
                    "preserved.heart.beat.timeout",
                    (3 * FAST_BEAT_MS).to_string(),
                ),
                (
                    "preserved.ip.delete.timeout",
                    (6 * FAST_BEAT_MS).to_string(),
                ),
            ])
            .expect("valid metadata");
            inst.set_metadata(fast).expect("valid timings");
        }
        inst
    }

    /// Where an HTTP client sends its next request: its home node while it is up, else the
    /// next live node after it (the SDKs' failover); now and then a random node (a client
    /// behind a load balancer).
    fn http_entry(&mut self, home: usize, alive: &[usize]) -> usize {
        // An isolated node does not answer clients (while another one does).
        let reachable: Vec<usize>;
        let alive = match self.isolated {
            Some(x) if alive.iter().any(|n| *n != x) => {
                reachable = alive.iter().copied().filter(|n| *n != x).collect();
                &reachable[..]
            }
            _ => alive,
        };
        if self.rng.chance(0.1) {
            return alive[self.rng.below(alive.len() as u64) as usize];
        }
        let count = self.nodes.len();
        (0..count)
            .map(|k| (home + k) % count)
            .find(|n| alive.contains(n))
            .unwrap_or(alive[0])
    }

    fn apply_op(&mut self, node: usize, client: ClientId, op: ClientOp) {
        let n = self.nodes[node].shard_count;
        let shard = client_shard(&client, n);
        let now = self.nodes[node].now(self.now_ms);
        self.nodes[node].shards[shard].handle(
            now,
            ShardMsg::Client {
                client,
                op,
                reply: None,
            },
        );
        self.collect(node);
    }

    /// An HTTP write enters the cluster at node `entry`: the server's router decides where
    /// it goes (forwards, detours, deferred deregistrations and fallbacks travel and wait
    /// as they do between real nodes).
    fn apply_http(&mut self, entry: usize, client: ClientId, op: ClientOp) {
        let token = self.new_token(entry, Waiter::Client);
        self.http_pending
            .insert((entry, token), (client.clone(), self.now_ms));
        self.http_busy.insert(client.clone(), self.now_ms);
        let deregister = matches!(op, ClientOp::Deregister { .. });
        if !deregister {
            self.beat_entry.insert(client.clone(), entry);
        }
        let route =
            self.nodes[entry]
                .router
                .handle_client_write(self.now_ms, token, client.clone(), op);
        if deregister {
            self.say(format!("{client} deregisters at node {entry}: {route:?}"));
        }
        self.collect(entry);
    }

    /// One random client write (or none): a roll picks which, then the action draws what it
    /// needs. A seed replays only if the draws keep their order.
    pub(super) fn random_action(&mut self) {
        let alive = self.alive_nodes();
        if alive.is_empty() {
            return;
        }
        let grpc_open = self.truth.keys().filter(|c| !c.is_heartbeat()).count();
        let http_live = self.truth.keys().filter(|c| c.is_heartbeat()).count();
        // Clients that leave are replaced, up to twice the scenario's number over a run.
        let http_room = http_live < self.scenario.http_clients
            && self.http_ids.len() < 2 * self.scenario.http_clients;
        let roll = self.rng.below(100);
        if roll < 35 && grpc_open < self.scenario.grpc_clients {
            self.grpc_connects(&alive);
        } else if roll < 50 {
            self.grpc_leaves();
        } else if roll < 70 && http_room {
            self.http_registers(&alive);
        } else if roll < 78 {
            self.grpc_reweighs();
        } else if roll < 86 {
            if self.scenario.http_deregistrations {
                self.http_deregisters(&alive);
            }
        } else if roll < 89 && self.scenario.http_deaths {
            self.http_dies();
        }
    }

    /// The world stops keeping `client` alive at this moment: it never beats again (I8).
    fn bury_later(&mut self, client: &ClientId, t: &TruthClient, how: &'static str) {
        let delete_ms = t
            .publishes
            .values()
            .map(|(inst, _)| u64::from(inst.timing().delete_ms))
            .max()
            .unwrap_or(0);
        self.say(format!("{client} {how} (deletion timeout {delete_ms} ms)"));
        self.dead.insert(
            client.clone(),
            DeadClient {
                at_ms: self.now_ms,
                delete_ms,
                how,
                buried: false,
            },
        );
    }

    /// An HTTP client dies silently (its process is killed): no deregistration, its beats
    /// just stop, wherever it was sending them and whatever the network is doing.
    fn http_dies(&mut self) {
        let ids: Vec<ClientId> = self
            .truth
            .keys()
            .filter(|c| c.is_heartbeat())
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        let client = ids[self.rng.below(ids.len() as u64) as usize].clone();
        if let Some(t) = self.truth.remove(&client) {
            self.bury_later(&client, &t, "dies silently");
        }
    }

    /// A gRPC connection registers in one to three services.
    fn grpc_connects(&mut self, alive: &[usize]) {
        let node = alive[self.rng.below(alive.len() as u64) as usize];
        let n = self.nodes[node].shard_count;
        self.nodes[node].conn_seq += 1;
        let shard = self.rng.below(n as u64) as usize;
        let id = conn_id(
            self.nodes[node].conn_prefix,
            shard,
            n,
            self.nodes[node].conn_seq,
        );
        let client = ClientId::Conn(id);
        let mut truth = TruthClient {
            node: Some(node),
            publishes: BTreeMap::new(),
            next_beat_ms: u64::MAX,
            home: node,
            beat_ms: 0,
        };
        for _ in 0..self.rng.range(1, 3) {
            let service =
                self.services[self.rng.below(self.services.len() as u64) as usize].clone();
            let instance = self.new_instance();
            truth
                .publishes
                .insert(service.clone(), (instance.clone(), self.now_ms));
            self.apply_op(
                node,
                client.clone(),
                ClientOp::Register { service, instance },
            );
        }
        self.truth.insert(client, truth);
    }

    /// A gRPC client leaves a service or disconnects.
    fn grpc_leaves(&mut self) {
        let conns: Vec<ClientId> = self
            .truth
            .keys()
            .filter(|c| !c.is_heartbeat())
            .cloned()
            .collect();
        if conns.is_empty() {
            return;
        }
        let client = conns[self.rng.below(conns.len() as u64) as usize].clone();
        let node = self.truth[&client].node.unwrap();
        if !self.running(node) {
            return;
        }
        if self.rng.chance(0.5) {
            self.truth.remove(&client);
            self.apply_op(node, client, ClientOp::Disconnect);
        } else {
            let Some((service, (inst, _))) = self
                .truth
                .get(&client)
                .and_then(|t| t.publishes.iter().next())
                .map(|(s, v)| (s.clone(), v.clone()))
            else {
                return;
            };
            self.truth
                .get_mut(&client)
                .unwrap()
                .publishes
                .remove(&service);
            self.apply_op(
                node,
                client,
                ClientOp::Deregister {
                    service,
                    host: inst.host.clone(),
                    port: inst.port,
                    cluster: inst.cluster.clone(),
                },
            );
        }
    }

    /// A new HTTP client registers through a random node.
    fn http_registers(&mut self, alive: &[usize]) {
        let instance = self.new_instance();
        let client = ClientId::for_address(&instance.host, instance.port);
        let service = self.services[self.rng.below(self.services.len() as u64) as usize].clone();
        let home = self.rng.below(self.nodes.len() as u64) as usize;
        let entry = self.http_entry(home, alive);
        let beat_ms = if instance.timing().interval_ms == FAST_BEAT_MS as u32 {
            FAST_BEAT_MS
        } else {
            BEAT_MS
        };
        let mut truth = TruthClient {
            node: None,
            publishes: BTreeMap::new(),
            next_beat_ms: self.now_ms + beat_ms,
            home,
            beat_ms,
        };
        truth
            .publishes
            .insert(service.clone(), (instance.clone(), self.now_ms));
        self.http_ids.push(client.clone());
        self.truth.insert(client.clone(), truth);
        self.apply_http(entry, client, ClientOp::Register { service, instance });
    }

    /// A weight change of a gRPC instance (an update must win over older copies).
    fn grpc_reweighs(&mut self) {
        let conns: Vec<ClientId> = self
            .truth
            .keys()
            .filter(|c| !c.is_heartbeat())
            .cloned()
            .collect();
        if conns.is_empty() {
            return;
        }
        let client = conns[self.rng.below(conns.len() as u64) as usize].clone();
        let node = self.truth[&client].node.unwrap();
        if !self.running(node) {
            return;
        }
        let Some((service, (mut inst, _))) = self
            .truth
            .get(&client)
            .and_then(|t| t.publishes.iter().next())
            .map(|(s, v)| (s.clone(), v.clone()))
        else {
            return;
        };
        inst.weight = 1.0 + self.rng.below(50) as f64;
        self.truth
            .get_mut(&client)
            .unwrap()
            .publishes
            .insert(service.clone(), (inst.clone(), self.now_ms));
        self.apply_op(
            node,
            client,
            ClientOp::Register {
                service,
                instance: inst,
            },
        );
    }

    /// An HTTP client deregisters (through its home node or the next live one) and
    /// stops beating.
    fn http_deregisters(&mut self, alive: &[usize]) {
        // An SDK times a request out after 3 s.
        let now = self.now_ms;
        let busy = &self.http_busy;
        let ids: Vec<ClientId> = self
            .truth
            .keys()
            .filter(|c| c.is_heartbeat() && busy.get(*c).is_none_or(|at| at + 3_000 < now))
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        let client = ids[self.rng.below(ids.len() as u64) as usize].clone();
        let Some(t) = self.truth.remove(&client) else {
            return;
        };
        self.bury_later(&client, &t, "deregisters");
        let entry = self.http_entry(t.home, alive);
        for (service, (inst, _)) in t.publishes {
            self.apply_http(
                entry,
                client.clone(),
                ClientOp::Deregister {
                    service,
                    host: inst.host.clone(),
                    port: inst.port,
                    cluster: inst.cluster.clone(),
                },
            );
        }
    }

    /// HTTP clients beat through their home node (or the next live one); a beat re-registers
    /// an unknown instance.
    pub(super) fn beats(&mut self) {
        let alive = self.alive_nodes();
        if alive.is_empty() {
            return;
        }
        let due: Vec<ClientId> = self
            .truth
            .iter()
            .filter(|(c, t)| c.is_heartbeat() && t.next_beat_ms <= self.now_ms)
            .map(|(c, _)| c.clone())
            .collect();
        for client in due {
            let Some(home) = self.truth.get(&client).map(|t| t.home) else {
                continue;
            };
            let entry = self.http_entry(home, &alive);
            let Some(t) = self.truth.get_mut(&client) else {
                continue;
            };
            t.next_beat_ms = self.now_ms + t.beat_ms;
            let Some((service, (inst, _))) = t
                .publishes
                .iter()
                .next()
                .map(|(s, v)| (s.clone(), v.clone()))
            else {
                continue;
            };
            self.apply_http(
                entry,
                client,
                ClientOp::Beat {
                    service,
                    host: inst.host.clone(),
                    port: inst.port,
                    cluster: inst.cluster.clone(),
                    reregister: Some(inst),
                },
            );
        }
    }
}
