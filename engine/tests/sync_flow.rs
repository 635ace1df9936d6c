//! Sync flow control under load (issue 19): a deterministic simulation of two nodes whose
//! replication is limited by the receiver's apply time, with big connection clients.
//!
//! The fault simulator (`sim/`) delivers a message in a few milliseconds whatever its size;
//! this one models what made the 3-node, 10,000,000-instance run collapse: one ordered stream
//! per peer, a receiving core that applies one message at a time at a cost per instance, and
//! bounded queues on the way (the transport's 64 MiB send queue and 64 MiB receive buffer: a
//! frame that does not fit is lost, as the server drops it on `SendError::Full`). Both nodes
//! run real shards; the clock is virtual, in microseconds.
//!
//! What it checks: every instance reaches the peer within a time set by the apply cost of
//! sending each instance about once, the owner does not send much more than it registered
//! (retries of batches still queued at the peer resend work the peer is doing), and no frame
//! is lost to a full queue.

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use engine::distro::{DistroConfig, Health, Members, NodeId, PeerMsg, SyncItem};
use engine::shard::{conn_id, ClientOp, ShardMsg};
use engine::{ClientId, Command, Host, Instance, Now, ReadIndex, ServiceKey, Shard, ShardConfig};

/// Bytes on the wire per instance (address, port, cluster, two short metadata entries),
/// per item and per message: rough, only their order of magnitude matters here.
const WIRE_INSTANCE: u64 = 100;
const WIRE_ITEM: u64 = 40;
const WIRE_MSG: u64 = 60;
/// The transport's bounds: frames queued at the sender plus bytes buffered at the receiver.
const PIPE_BYTES: u64 = 128 << 20;
/// Link: 1 ms one way, 1 Gbit/s.
const LATENCY_US: u64 = 1_000;
const BYTES_PER_US: u64 = 125;

fn now(us: u64) -> Now {
    Now {
        mono_ms: us / 1_000,
        unix_ms: 1_700_000_000_000 + us / 1_000,
    }
}

fn instances_of(msg: &PeerMsg) -> (u64, u64) {
    match msg {
        PeerMsg::Sync { items, .. } => {
            let n = items
                .iter()
                .map(|i| match i {
                    SyncItem::Upsert { entry, .. } => entry.publish.len() as u64,
                    SyncItem::Full(state) => {
                        state.entries.iter().map(|e| e.publish.len() as u64).sum()
                    }
                    _ => 0,
                })
                .sum();
            (n, items.len() as u64)
        }
        PeerMsg::SnapshotChunk { clients, .. } => {
            let n = clients
                .iter()
                .map(|(_, c)| {
                    c.entries
                        .iter()
                        .map(|e| e.publish.len() as u64)
                        .sum::<u64>()
                })
                .sum();
            (n, clients.len() as u64)
        }
        _ => (0, 0),
    }
}

struct Node {
    id: NodeId,
    shard: Shard,
    /// The core is busy applying messages until then (us).
    busy_until: u64,
}

/// A message on its way: handled by `to` at `at` (arrival, then its turn on the core).
struct Delivery {
    from: usize,
    to: usize,
    partition: u16,
    msg: PeerMsg,
}

#[derive(Default)]
struct Counters {
    instances_sent: u64,
    sync_msgs: u64,
    lost_frames: u64,
    max_pipe_bytes: u64,
}

struct World {
    nodes: Vec<Node>,
    /// Pending deliveries by (time, sequence).
    events: BinaryHeap<Reverse<(u64, u64, usize)>>,
    slots: Vec<Option<Delivery>>,
    seq: u64,
    /// Per (from, to): when the link is free again, and (handled at, bytes) of what is in
    /// the pipe (sent, not yet applied).
    link_free: Vec<Vec<u64>>,
    pipe: Vec<Vec<VecDeque<(u64, u64)>>>,
    /// Apply cost at the receiver: per message and per instance (us).
    cost_msg_us: u64,
    cost_instance_us: f64,
    counters: Counters,
    now_us: u64,
}

impl World {
    fn new(distro: &DistroConfig, cost_instance_us: f64) -> World {
        let ids = [NodeId::new("10.0.0.1:8848"), NodeId::new("10.0.0.2:8848")];
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let cfg = ShardConfig {
                    shard_count: 1,
                    distro: Some(distro.clone()),
                    ..ShardConfig::default()
                };
                let mut shard = Shard::new(0, cfg, ReadIndex::new(1, 1 << 20), now(0));
                shard.handle_members(
                    now(0),
                    Members {
                        me: Some(id.clone()),
                        peers: vec![(ids[1 - i].clone(), Health::Up)],
                    },
                );
                Node {
                    id: id.clone(),
                    shard,
                    busy_until: 0,
                }
            })
            .collect();
        let mut w = World {
            nodes,
            events: BinaryHeap::new(),
            slots: Vec::new(),
            seq: 0,
            link_free: vec![vec![0; 2]; 2],
            pipe: vec![vec![VecDeque::new(), VecDeque::new()]; 2],
            cost_msg_us: 20,
            cost_instance_us,
            counters: Counters::default(),
            now_us: 0,
        };
        w.drain(0);
        w.drain(1);
        w
    }

    /// Routes what node `i` wants to send.
    fn drain(&mut self, i: usize) {
        while let Some(cmd) = self.nodes[i].shard.poll_command() {
            let Command::Peer { to, partition, msg } = cmd else {
                continue;
            };
            let j = self.nodes.iter().position(|n| n.id == to).unwrap();
            let (instances, items) = instances_of(&msg);
            if matches!(msg, PeerMsg::Sync { .. }) {
                self.counters.instances_sent += instances;
                self.counters.sync_msgs += 1;
            }
            let bytes = WIRE_MSG + items * WIRE_ITEM + instances * WIRE_INSTANCE;
            let pipe = &mut self.pipe[i][j];
            while pipe.front().is_some_and(|(at, _)| *at <= self.now_us) {
                pipe.pop_front();
            }
            let queued: u64 = pipe.iter().map(|(_, b)| b).sum();
            if queued + bytes > PIPE_BYTES {
                self.counters.lost_frames += 1;
                continue;
            }
            self.counters.max_pipe_bytes = self.counters.max_pipe_bytes.max(queued + bytes);
            let start = self.now_us.max(self.link_free[i][j]);
            self.link_free[i][j] = start + bytes / BYTES_PER_US;
            let arrive = self.link_free[i][j] + LATENCY_US;
            let cost = self.cost_msg_us + (instances as f64 * self.cost_instance_us) as u64;
            let node = &mut self.nodes[j];
            let done = arrive.max(node.busy_until) + cost;
            node.busy_until = done;
            self.pipe[i][j].push_back((done, bytes));
            self.slots.push(Some(Delivery {
                from: i,
                to: j,
                partition,
                msg,
            }));
            self.seq += 1;
            self.events
                .push(Reverse((done, self.seq, self.slots.len() - 1)));
        }
    }

    /// Runs every delivery and timer due up to `until_us`.
    fn run_until(&mut self, until_us: u64) {
        loop {
            let next_msg = self.events.peek().map(|Reverse((t, _, _))| *t);
            let next_timer = (0..2)
                .filter_map(|i| self.nodes[i].shard.poll_timeout().map(|ms| (ms * 1_000, i)))
                .min();
            let msg_first = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) => m <= t,
                (Some(_), None) => true,
                _ => false,
            };
            let at = if msg_first {
                next_msg.unwrap()
            } else {
                next_timer.map_or(u64::MAX, |(t, _)| t)
            };
            if at > until_us {
                break;
            }
            self.now_us = self.now_us.max(at);
            if msg_first {
                let Reverse((_, _, slot)) = self.events.pop().unwrap();
                let d = self.slots[slot].take().unwrap();
                let from = self.nodes[d.from].id.clone();
                let node = &mut self.nodes[d.to].shard;
                node.handle_peer(now(self.now_us), from, d.partition, d.msg);
                node.flush(now(self.now_us));
                self.drain(d.to);
            } else {
                let i = next_timer.unwrap().1;
                self.nodes[i].shard.handle_timeout(now(self.now_us));
                self.drain(i);
            }
        }
        self.now_us = self.now_us.max(until_us);
    }

    /// Whether node 1 holds every publish node 0 holds, at node 0's revisions.
    fn converged(&self) -> bool {
        let mut owner = BTreeSet::new();
        self.nodes[0].shard.visit_entries(|c, s, rev, origin| {
            if origin.is_none() {
                owner.insert((c.clone(), s.name().to_string(), rev));
            }
        });
        let mut copy = BTreeSet::new();
        self.nodes[1].shard.visit_entries(|c, s, rev, origin| {
            if origin.is_some() {
                copy.insert((c.clone(), s.name().to_string(), rev));
            }
        });
        owner == copy
    }
}

/// One write of the load: `client` publishes `instances` instances in `service`.
fn batch_register(w: &mut World, client: &ClientId, service: &ServiceKey, n: u32, base: u32) {
    let instances: Vec<Instance> = (0..n)
        .map(|k| {
            let a = base + k;
            let host = Host::V4([10, (a >> 16) as u8, (a >> 8) as u8, a as u8].into());
            Instance::new(host, 8080, Arc::from("DEFAULT"))
        })
        .collect();
    let t = now(w.now_us);
    let shard = &mut w.nodes[0].shard;
    shard.handle(
        t,
        ShardMsg::Client {
            client: client.clone(),
            op: ClientOp::BatchRegister {
                service: service.clone(),
                instances,
            },
            reply: None,
        },
    );
}

struct Outcome {
    registered: u64,
    last_write_us: u64,
    converged_after_us: Option<u64>,
    counters: Counters,
    retries: u64,
}

/// `clients` connections on node 0 each publish `services` services of `per_service`
/// instances, `rate` instances per second; node 1 applies `1e6 / cost_instance_us`
/// instances per second. Runs until node 1 holds everything or `horizon_s` after the last
/// write.
fn run(
    distro: DistroConfig,
    clients: u64,
    services: u32,
    per_service: u32,
    rate: u64,
    cost_instance_us: f64,
    horizon_s: u64,
) -> Outcome {
    let mut w = World::new(&distro, cost_instance_us);
    // Let both load their (empty) snapshots from each other.
    w.run_until(500_000);
    assert!(w.nodes.iter().all(|n| n.shard.is_loaded()));
    let keys: Vec<ServiceKey> = (0..services)
        .map(|s| ServiceKey::new("public", "DEFAULT_GROUP", &format!("svc-{s}")).unwrap())
        .collect();
    let ids: Vec<ClientId> = (0..clients)
        .map(|c| ClientId::Conn(conn_id(7, 0, 1, c)))
        .collect();
    // Writes in 10 ms steps at `rate`, client by client, service by service.
    let per_step = (rate / 100).max(u64::from(per_service));
    let mut registered = 0u64;
    let mut step_budget = 0u64;
    let mut base = 0u32;
    for id in &ids {
        for key in &keys {
            if step_budget >= per_step {
                step_budget = 0;
                w.nodes[0].shard.flush(now(w.now_us));
                w.drain(0);
                let t = w.now_us + 10_000;
                w.run_until(t);
            }
            batch_register(&mut w, id, key, per_service, base);
            base += per_service;
            registered += u64::from(per_service);
            step_budget += u64::from(per_service);
        }
    }
    w.nodes[0].shard.flush(now(w.now_us));
    w.drain(0);
    let last_write_us = w.now_us;
    let mut converged_after_us = None;
    while w.now_us < last_write_us + horizon_s * 1_000_000 {
        let t = w.now_us + 100_000;
        w.run_until(t);
        if w.converged() {
            converged_after_us = Some(w.now_us - last_write_us);
            break;
        }
    }
    let retries = w.nodes[0]
        .shard
        .stats()
        .distro
        .sync_retries
        .load(std::sync::atomic::Ordering::Relaxed);
    Outcome {
        registered,
        last_write_us,
        converged_after_us,
        counters: w.counters,
        retries,
    }
}

fn report(o: &Outcome) -> String {
    format!(
        "registered {} instances (last write at {:.1} s), converged after {:?} s, {} instances sent in {} sync batches ({:.2} per instance), {} retries, {} frames lost to full queues, pipe peak {} MiB",
        o.registered,
        o.last_write_us as f64 / 1e6,
        o.converged_after_us.map(|us| us as f64 / 1e6),
        o.counters.instances_sent,
        o.counters.sync_msgs,
        o.counters.instances_sent as f64 / o.registered as f64,
        o.retries,
        o.counters.lost_frames,
        o.counters.max_pipe_bytes >> 20,
    )
}

/// Checks the outcome against what flow control must give: everything at the peer within
/// twice the time its core needs to apply every instance once (plus 5 s), at most
/// `max_ratio` instances sent per instance registered, and nothing lost to a full queue.
fn check(o: &Outcome, cost_instance_us: f64, max_ratio: f64) {
    let text = report(o);
    eprintln!("{text}");
    let apply_s = o.registered as f64 * cost_instance_us / 1e6;
    let bound_s = 2.0 * apply_s + 5.0;
    let after = o.converged_after_us.map(|us| us as f64 / 1e6);
    assert!(
        after.is_some_and(|s| s <= bound_s),
        "the peer must hold everything within {bound_s:.1} s of the last write: {text}"
    );
    assert!(
        o.counters.instances_sent as f64 <= max_ratio * o.registered as f64,
        "at most {max_ratio} instances sent per instance registered: {text}"
    );
    assert_eq!(o.counters.lost_frames, 0, "{text}");
}

/// Big clients (50 services × 100 instances each) and a peer that applies 100,000
/// instances a second: a window of 16 batches of 512 items holds 819,200 instances, eight
/// seconds of the peer's work, so every batch looked lost after 3 s and was sent again
/// behind the ones still queued.
#[test]
fn big_clients_and_a_slow_applier_converge_without_resending() {
    let cost = 10.0;
    let o = run(DistroConfig::default(), 400, 50, 100, 300_000, cost, 60);
    check(&o, cost, 1.2);
}

/// Small clients (one instance each, as HTTP-like connection clients) must still fill the
/// pipe: a window bounded in instances must not starve many small items.
#[test]
fn small_clients_still_converge_quickly() {
    let cost = 4.0;
    let o = run(DistroConfig::default(), 20_000, 1, 1, 100_000, cost, 60);
    check(&o, cost, 1.2);
}

/// A peer five times slower still (20,000 instances a second): even the bounded window is
/// more than 3 s of its work, so the acknowledgement timeout must follow the measured
/// times instead of retrying batches the peer is applying. (With a fixed 3 s timeout: 86
/// retries, 1.49 instances sent per instance.) Some sending twice remains: a verify round
/// that names a client only in batches older than `sync_timeout_ms` retires those batches as
/// lost (12 retries here). That is the price of I3's bound on repairs: waiting for the
/// measured timeout instead let a timeout raised by a paused peer hold a lost batch for 15 s
/// (simulator, seeds 36 of the short sweep and 140 of the standard one).
#[test]
fn a_very_slow_applier_gets_a_longer_timeout_not_retries() {
    let cost = 50.0;
    let o = run(DistroConfig::default(), 80, 50, 100, 300_000, cost, 120);
    check(&o, cost, 1.2);
    assert!(o.retries <= 20, "{}", report(&o));
}
