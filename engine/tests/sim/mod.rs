//! A deterministic simulator of a Nacelle cluster: N nodes of real [`Shard`]s on a virtual
//! clock, a network that loses, duplicates, delays and reorders messages and can be cut
//! (symmetrically or in one direction), nodes that crash, restart, join late and run with
//! skewed wall clocks, and clients (gRPC connections and HTTP heartbeat clients) that keep a
//! known set of instances alive. Everything random comes from one seed.
//!
//! The invariants of `DISTRO.md` are checked while it runs ([`World::check_safety`]) and
//! once the faults are over ([`World::check_converged`], [`World::check_quiet_verify`]).
//! Violations are collected as sentences, never panics, so a failing seed reports all of
//! them; `DISTRO_SEED=<n>` replays one seed with a log of every fault.

#![allow(dead_code, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use engine::distro::membership::{Membership, Reverted, REACHABLE_EVERY_MS};
use engine::distro::route::{RouteCommand, Router};
use engine::distro::{DistroConfig, Health, Members, NodeId, PeerMsg};
use engine::shard::{client_shard, conn_id};
use engine::{
    ClientId, ClientOp, Command, Host, Instance, Metadata, Now, OpResult, ReadIndex, ReplyTo,
    ServiceKey, Shard, ShardConfig, ShardMsg,
};

/// Wall-clock origin (unix ms at virtual mono 0).
const UNIX_ORIGIN_MS: u64 = 1_800_000_000_000;

/// splitmix64: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// What a run looks like.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Shards per node (its length is the number of nodes).
    pub shards: Vec<usize>,
    /// Nodes that start only at `join_at_ms` (a join).
    pub late: Vec<usize>,
    /// When late nodes start.
    pub join_at_ms: u64,
    /// gRPC connections opened over the run.
    pub grpc_clients: usize,
    /// HTTP heartbeat clients.
    pub http_clients: usize,
    /// Services instances are spread over.
    pub services: usize,
    /// Faults are injected in `[fault_from_ms, fault_until_ms)`.
    pub fault_from_ms: u64,
    /// End of faults; the network is healed at this time.
    pub fault_until_ms: u64,
    /// Whether to inject faults at all.
    pub faults: bool,
    /// Only crashes and restarts (no loss, partitions or skew), a few seconds apart: I3 is
    /// checked throughout, while crashed nodes are being declared DOWN.
    pub crashes_only: bool,
    /// Distro settings of every node.
    pub distro: DistroConfig,
    /// Routing and membership rules turned off (mutation tests: the sweep must catch it).
    pub reverted: Reverted,
    /// HTTP clients also deregister (off in the sweeps: they find DISTRO.md's known gap,
    /// a deregistration undone by a copy, more often than `note_stand_in_deregistration`
    /// can excuse; see the closing note of the session that added it).
    pub http_deregistrations: bool,
}

impl Scenario {
    /// A 3-node cluster (1, 2 and 3 shards: the partition routing must not care) with a
    /// fourth node that joins, faults for 60 s.
    pub fn standard() -> Scenario {
        Scenario {
            shards: vec![1, 2, 3, 2],
            late: vec![3],
            join_at_ms: 20_000,
            grpc_clients: 40,
            http_clients: 30,
            services: 8,
            fault_from_ms: 5_000,
            fault_until_ms: 60_000,
            faults: true,
            crashes_only: false,
            distro: DistroConfig::default(),
            reverted: Reverted::default(),
            // `DISTRO_HTTP_DEREGISTER=1` turns them on to replay what they find.
            http_deregistrations: std::env::var_os("DISTRO_HTTP_DEREGISTER").is_some(),
        }
    }

    /// The standard cluster with the faults squeezed into 18 s and the join at 8 s: about
    /// half the simulated time of a standard run, for the many-seed sweep (the same fault
    /// mix, so each seed is a new combination; the long runs keep the long outages).
    pub fn short() -> Scenario {
        Scenario {
            join_at_ms: 8_000,
            fault_from_ms: 2_000,
            fault_until_ms: 20_000,
            ..Scenario::standard()
        }
    }

    /// The standard cluster, where nodes only crash and restart.
    pub fn crashes() -> Scenario {
        Scenario {
            crashes_only: true,
            ..Scenario::standard()
        }
    }
}

struct Node {
    id: NodeId,
    shard_count: usize,
    shards: Vec<Shard>,
    index: Arc<ReadIndex>,
    alive: bool,
    started_ms: u64,
    skew_ms: i64,
    conn_prefix: u64,
    conn_seq: u64,
    members: Members,
    /// Health of each peer on this node's own link, since when, and when the link last
    /// worked (what the transport would say).
    seen: Vec<(Health, u64, u64)>,
    /// The server's membership rule, fed with `seen` and the peers' reports.
    membership: Membership,
    /// The server's routing of HTTP writes (one per node: the server has one per core,
    /// with the same view).
    router: Router,
    /// Who waits for each write token: a client, or a peer waiting for a forward's answer.
    waiters: BTreeMap<u64, Waiter>,
    next_token: u64,
    /// Counts the node's starts, so that what was sent to an earlier run is lost.
    incarnation: u64,
    /// SIGSTOP: until then the node does nothing (what is sent to it waits in its socket),
    /// and then its clock has jumped.
    paused_until_ms: u64,
}

/// Who waits for the outcome of a write on a node.
#[derive(Clone, Copy, Debug)]
enum Waiter {
    /// The HTTP client that sent it.
    Client,
    /// Node `from` forwarded it with id `id` and waits for the answer.
    Peer { from: usize, id: u64 },
}

/// What travels between nodes: Distro messages and the server's frames around them.
#[derive(Clone, Debug)]
enum Payload {
    Distro {
        partition: u16,
        msg: PeerMsg,
    },
    /// An HTTP write for a client the receiver is responsible for (`Frame::Forward`).
    Forward {
        id: u64,
        client: ClientId,
        op: ClientOp,
    },
    /// Its answer.
    ForwardReply {
        id: u64,
        result: OpResult,
    },
    /// A beat relayed to a claimant of its client (`Command::RelayBeat`): no answer.
    RelayBeat {
        client: ClientId,
        op: ClientOp,
    },
    /// Whom the sender reaches (`Frame::Reachable`).
    Reachable {
        up: Vec<NodeId>,
    },
}

impl Node {
    fn now(&self, mono_ms: u64) -> Now {
        Now {
            mono_ms,
            unix_ms: (UNIX_ORIGIN_MS as i64 + mono_ms as i64 + self.skew_ms) as u64,
        }
    }
}

struct Flight {
    from: usize,
    to: usize,
    /// The destination's incarnation when it was sent (a restarted node gets nothing of it).
    to_incarnation: u64,
    payload: Payload,
}

/// A client the simulated world keeps alive, and what it should be publishing.
#[derive(Clone, Debug)]
struct TruthClient {
    /// The node holding the connection (gRPC only).
    node: Option<usize>,
    publishes: BTreeMap<ServiceKey, (Instance, u64)>,
    next_beat_ms: u64,
    /// HTTP only: the node the client talks to while it is up (the SDKs stick to one server
    /// and fail over to the next), and its beat period.
    home: usize,
    beat_ms: u64,
}

/// The owner association (node, epoch) and revision a node last showed for a publish.
type SeenRev = (Option<(NodeId, u64)>, u64);

/// Message counts by kind, for the quiet-verify check.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub sync: u64,
    pub digest: u64,
    pub slice_digests: u64,
    pub slice_clients: u64,
    pub resync: u64,
    pub snapshot: u64,
    pub digest_bytes: u64,
}

/// The simulated cluster.
pub struct World {
    pub rng: Rng,
    pub now_ms: u64,
    pub scenario: Scenario,
    nodes: Vec<Node>,
    net: BinaryHeap<Reverse<(u64, u64)>>,
    flights: BTreeMap<u64, Flight>,
    flight_seq: u64,
    /// Directed links that drop everything.
    blocked: BTreeSet<(usize, usize)>,
    pub loss: f64,
    pub dup: f64,
    pub jitter_ms: u64,
    truth: BTreeMap<ClientId, TruthClient>,
    seen_revs: BTreeMap<(usize, ClientId, ServiceKey), SeenRev>,
    pub violations: Vec<String>,
    pub log: Vec<String>,
    pub verbose: bool,
    pub traffic: Traffic,
    healed: bool,
    /// When the network last changed in a way that may hide data (for I3's grace).
    last_disturbance_ms: u64,
    next_view_ms: u64,
    next_check_ms: u64,
    next_action_ms: u64,
    services: Vec<ServiceKey>,
    http_ids: Vec<ClientId>,
    next_ip: u32,
    next_report_ms: u64,
    /// Crashed nodes to start again, and when.
    restarts: Vec<(u64, usize)>,
    /// HTTP writes waiting for their answer, by (entry node, token).
    http_pending: BTreeMap<(usize, u64), (ClientId, u64)>,
    /// HTTP clients with a write waiting for its answer, since when: like an SDK, a client
    /// deregisters only once its last request was answered (or timed out).
    http_busy: BTreeMap<ClientId, u64>,
    /// When the last frame on each directed link arrives: the server's frames between two
    /// nodes share one ordered stream, so forwards and their answers are not reordered.
    link_fifo: BTreeMap<(usize, usize), u64>,
    /// Clients whose deregistration hit DISTRO.md's known gap (see
    /// `note_stand_in_deregistration`).
    stand_in_deregistrations: BTreeSet<ClientId>,
}

const VIEW_EVERY_MS: u64 = 100;
/// A peer is suspicious at once and DOWN after this long unreachable (like the transport).
const DOWN_AFTER_MS: u64 = 6_000;
/// A peer whose link stopped working still looks UP this long (the QUIC idle timeout).
const IDLE_TIMEOUT_MS: u64 = 3_000;
const CHECK_EVERY_MS: u64 = 250;
const BEAT_MS: u64 = 5_000;
/// Beat period of the clients with short preserved timings (timeout 3×, deletion 6×).
const FAST_BEAT_MS: u64 = 1_000;

impl World {
    pub fn new(seed: u64, scenario: Scenario) -> World {
        let rng = Rng::new(seed);
        let services = (0..scenario.services)
            .map(|i| ServiceKey::new("public", "DEFAULT_GROUP", &format!("svc-{i}")).unwrap())
            .collect();
        let mut w = World {
            rng,
            now_ms: 0,
            nodes: Vec::new(),
            net: BinaryHeap::new(),
            flights: BTreeMap::new(),
            flight_seq: 0,
            blocked: BTreeSet::new(),
            loss: 0.0,
            dup: 0.0,
            jitter_ms: 2,
            truth: BTreeMap::new(),
            seen_revs: BTreeMap::new(),
            violations: Vec::new(),
            next_report_ms: REACHABLE_EVERY_MS,
            restarts: Vec::new(),
            http_pending: BTreeMap::new(),
            http_busy: BTreeMap::new(),
            link_fifo: BTreeMap::new(),
            stand_in_deregistrations: BTreeSet::new(),
            log: Vec::new(),
            verbose: false,
            traffic: Traffic::default(),
            healed: false,
            last_disturbance_ms: 0,
            next_view_ms: 0,
            next_check_ms: 0,
            next_action_ms: 500,
            services,
            http_ids: Vec::new(),
            next_ip: 1,
            scenario,
        };
        let count = w.scenario.shards.len();
        for i in 0..count {
            let shard_count = w.scenario.shards[i];
            let node = w.fresh_node(i, shard_count);
            w.nodes.push(node);
        }
        for i in 0..count {
            if !w.scenario.late.contains(&i) {
                w.start_node(i);
            }
        }
        w
    }

    fn node_name(i: usize) -> NodeId {
        NodeId::new(&format!("10.0.0.{}:8848", i + 1))
    }

    fn fresh_node(&mut self, i: usize, shard_count: usize) -> Node {
        let count = self.scenario.shards.len();
        let reverted = self.scenario.reverted;
        let mut membership = Membership::new(Self::node_name(i)).with_reverted(reverted);
        membership.set_peers((0..count).map(Self::node_name));
        Node {
            membership,
            router: Router::new().with_reverted(reverted),
            waiters: BTreeMap::new(),
            next_token: 0,
            incarnation: 0,
            paused_until_ms: 0,
            id: Self::node_name(i),
            shard_count,
            shards: Vec::new(),
            index: ReadIndex::new(shard_count, 1 << 20),
            alive: false,
            started_ms: 0,
            skew_ms: 0,
            conn_prefix: 0,
            conn_seq: 0,
            members: Members::default(),
            seen: vec![(Health::Down, 0, 0); count],
        }
    }

    fn say(&mut self, line: String) {
        if self.verbose {
            eprintln!("[{:>7} ms] {line}", self.now_ms);
        }
        self.log.push(format!("[{} ms] {line}", self.now_ms));
        if self.log.len() > 400 {
            self.log.drain(..200);
        }
    }

    fn start_node(&mut self, i: usize) {
        let shard_count = self.nodes[i].shard_count;
        let mut node = self.fresh_node(i, shard_count);
        node.alive = true;
        node.started_ms = self.now_ms;
        node.conn_prefix = self.rng.range(1, 0xFF_FFFF);
        node.skew_ms = self.nodes[i].skew_ms;
        node.incarnation = self.nodes[i].incarnation + 1;
        let now = node.now(self.now_ms);
        for s in 0..shard_count {
            let cfg = ShardConfig {
                shard_count,
                distro: Some(self.scenario.distro.clone()),
                ..ShardConfig::default()
            };
            node.shards
                .push(Shard::new(s, cfg, node.index.clone(), now));
        }
        self.nodes[i] = node;
        self.seen_revs.retain(|(n, _, _), _| *n != i);
        self.say(format!("node {i} starts"));
        self.update_views(true);
    }

    fn crash_node(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        self.nodes[i].alive = false;
        self.nodes[i].shards.clear();
        // Its connections die with it; their clients are gone (they would reconnect
        // elsewhere as new clients).
        self.truth.retain(|_, c| c.node != Some(i));
        self.last_disturbance_ms = self.now_ms;
        self.say(format!("node {i} crashes"));
    }

    /// Alive and not paused.
    fn running(&self, i: usize) -> bool {
        self.nodes[i].alive && self.nodes[i].paused_until_ms <= self.now_ms
    }

    fn link_usable(&self, a: usize, b: usize) -> bool {
        self.running(a)
            && self.running(b)
            && !self.blocked.contains(&(a, b))
            && !self.blocked.contains(&(b, a))
    }

    /// Recomputes each node's view of its peers, as its transport would see it: a peer is UP
    /// when both directions work (QUIC needs both), SUSPICIOUS when it just stopped working,
    /// DOWN after a while.
    fn update_views(&mut self, force: bool) {
        let count = self.nodes.len();
        for i in 0..count {
            if !self.running(i) {
                continue;
            }
            let mut changed = force;
            for j in 0..count {
                if i == j {
                    continue;
                }
                let usable = self.link_usable(i, j);
                let (health, since, last_ok) = self.nodes[i].seen[j];
                let now = self.now_ms;
                let last_ok = if usable { now } else { last_ok };
                let next = match (usable, health) {
                    (true, Health::Up) => (Health::Up, since),
                    (true, _) => (Health::Up, now),
                    // A dead link looks alive until the connection's idle timeout: writes
                    // forwarded meanwhile time out and are applied where they entered.
                    (false, Health::Up) if now - last_ok >= IDLE_TIMEOUT_MS => {
                        (Health::Suspicious, now)
                    }
                    (false, Health::Suspicious) if now - since >= DOWN_AFTER_MS => {
                        (Health::Down, since)
                    }
                    (false, h) => (h, since),
                };
                if next.0 != health {
                    changed = true;
                }
                self.nodes[i].seen[j] = (next.0, next.1, last_ok);
            }
            if changed {
                for j in (0..count).filter(|j| *j != i) {
                    let (id, health) = (self.nodes[j].id.clone(), self.nodes[i].seen[j].0);
                    self.nodes[i].membership.handle_link_health(&id, health);
                }
            }
            self.publish_view(i);
        }
    }

    /// Gives node `i`'s shards and router its membership view if it changed (reports go
    /// stale with time, so this runs on every view tick, not only when a link changes).
    fn publish_view(&mut self, i: usize) {
        let Some(change) = self.nodes[i].membership.changed_view(self.now_ms) else {
            return;
        };
        let view = change.view;
        for (n, v) in &change.newly_vouched {
            self.say(format!("node {i}: {n} unreachable, vouched for by {v}"));
        }
        self.nodes[i].members = view.members.clone();
        let now = self.nodes[i].now(self.now_ms);
        for s in 0..self.nodes[i].shards.len() {
            self.nodes[i].shards[s].handle_members(now, view.members.clone());
        }
        self.nodes[i].router.handle_members(self.now_ms, view);
        self.collect(i);
    }

    /// Every node tells each member its own link reaches whom it reaches and hears.
    fn send_reports(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.running(i) {
                continue;
            }
            let up = self.nodes[i].membership.report(self.now_ms);
            for to in self.nodes[i].membership.linked() {
                let payload = Payload::Reachable { up: up.clone() };
                self.send(i, &to, payload);
            }
        }
    }

    fn node_of(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.id == id)
    }

    /// Drains a node's commands: shard messages are delivered at once (in order), peer
    /// messages go to the network.
    fn collect(&mut self, i: usize) {
        loop {
            let mut any = false;
            for s in 0..self.nodes[i].shards.len() {
                while let Some(cmd) = self.nodes[i].shards[s].poll_command() {
                    any = true;
                    match cmd {
                        Command::Send { shard, msg } => {
                            let now = self.nodes[i].now(self.now_ms);
                            self.nodes[i].shards[shard].handle(now, msg);
                        }
                        Command::Peer { to, partition, msg } => {
                            self.transmit(i, s, to, partition, msg)
                        }
                        Command::RelayBeat { to, client, op } => {
                            self.send(i, &to, Payload::RelayBeat { client, op })
                        }
                        Command::Reply { to, result } => self.complete(i, to.token, result),
                        Command::Push { .. } => {}
                    }
                }
            }
            while let Some(cmd) = self.nodes[i].router.poll_command() {
                any = true;
                self.execute_route(i, cmd);
            }
            let now = self.nodes[i].now(self.now_ms);
            for s in 0..self.nodes[i].shards.len() {
                self.nodes[i].shards[s].flush(now);
            }
            if !any {
                break;
            }
        }
    }

    fn transmit(&mut self, from: usize, shard: usize, to: NodeId, partition: u16, msg: PeerMsg) {
        let Some(to) = self.node_of(&to) else {
            self.violations
                .push(format!("node {from} sent to unknown member {to}"));
            return;
        };
        match &msg {
            PeerMsg::Sync { .. } => self.traffic.sync += 1,
            PeerMsg::Digest { .. } => {
                self.traffic.digest += 1;
                self.traffic.digest_bytes += 8 + 8 + 8 + 2;
            }
            PeerMsg::SliceDigests { slices, .. } => {
                self.traffic.slice_digests += 1;
                self.traffic.digest_bytes += 8 * slices.len() as u64;
            }
            PeerMsg::SliceClients { as_of, .. } => {
                self.traffic.slice_clients += 1;
                // I6: a node that has not loaded its snapshot never makes a peer delete.
                if *as_of != 0 && !self.nodes[from].shards[shard].is_loaded() {
                    self.violations.push(format!(
                        "I6: node {from} sent a deleting client list before its snapshot was loaded"
                    ));
                }
            }
            PeerMsg::Resync { .. } => self.traffic.resync += 1,
            PeerMsg::SnapshotChunk { .. } => self.traffic.snapshot += 1,
            _ => {}
        }
        if self.verbose && std::env::var("DISTRO_TRACE").is_ok() {
            let kind = format!("{msg:?}");
            eprintln!(
                "[{:>7} ms] {from}.{shard} -> {to} p{partition} {}",
                self.now_ms,
                &kind[..kind.len().min(160)]
            );
        }
        self.put_on_wire(from, to, Payload::Distro { partition, msg });
    }

    /// Sends a server frame from node `from` to member `to`.
    fn send(&mut self, from: usize, to: &NodeId, payload: Payload) {
        match self.node_of(to) {
            Some(to) => self.put_on_wire(from, to, payload),
            None => self
                .violations
                .push(format!("node {from} sent to unknown member {to}")),
        }
    }

    fn put_on_wire(&mut self, from: usize, to: usize, payload: Payload) {
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.loss) {
            return;
        }
        let ordered = !matches!(payload, Payload::Distro { .. });
        let copies = if self.rng.chance(self.dup) && !ordered {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = self.now_ms + 1 + self.rng.below(self.jitter_ms + 1);
            if ordered {
                let last = self.link_fifo.entry((from, to)).or_insert(0);
                at = at.max(*last);
                *last = at;
            }
            self.flight_seq += 1;
            self.flights.insert(
                self.flight_seq,
                Flight {
                    from,
                    to,
                    to_incarnation: self.nodes[to].incarnation,
                    payload: payload.clone(),
                },
            );
            self.net.push(Reverse((at, self.flight_seq)));
        }
    }

    /// Executes what node `i`'s router decided.
    fn execute_route(&mut self, i: usize, cmd: RouteCommand) {
        match cmd {
            RouteCommand::Apply {
                token, client, op, ..
            } => {
                self.note_stand_in_deregistration(i, token, &client, &op);
                let n = self.nodes[i].shard_count;
                let shard = client_shard(&client, n);
                let now = self.nodes[i].now(self.now_ms);
                let reply = Some(ReplyTo { shard, token });
                self.nodes[i].shards[shard].handle(now, ShardMsg::Client { client, op, reply });
            }
            RouteCommand::Forward {
                to,
                token,
                client,
                op,
            } => self.send(
                i,
                &to,
                Payload::Forward {
                    id: token,
                    client,
                    op,
                },
            ),
            RouteCommand::RelayBeat { client, op } => {
                self.beat_relayed(i, client, op, true);
            }
        }
    }

    /// DISTRO.md's known gap: a deregistration applied at a stand-in once it waited its
    /// patience for a SUSPICIOUS owner (or came forwarded and the receiver could not reach
    /// the owner either) may be undone by the owner's or a taker-over's copy until that
    /// copy's heartbeat timeout. Such a client is listed, and I1 does not count it; one
    /// applied at a stand-in before its patience ran out is not excused.
    fn note_stand_in_deregistration(
        &mut self,
        i: usize,
        token: u64,
        client: &ClientId,
        op: &ClientOp,
    ) {
        if !matches!(op, ClientOp::Deregister { .. }) || self.nodes[i].members.is_mine(client) {
            return;
        }
        let waited = match self.nodes[i].waiters.get(&token) {
            Some(Waiter::Peer { .. }) => true,
            _ => self.http_pending.get(&(i, token)).is_some_and(|(_, sent)| {
                sent + engine::distro::route::DEREGISTER_PATIENCE_MS <= self.now_ms
            }),
        };
        if waited {
            self.say(format!(
                "{client}: deregistration applied at stand-in node {i} (known gap)"
            ));
            self.stand_in_deregistrations.insert(client.clone());
        }
    }

    fn beat_relayed(&mut self, i: usize, client: ClientId, op: ClientOp, to_claimants: bool) {
        let n = self.nodes[i].shard_count;
        let now = self.nodes[i].now(self.now_ms);
        self.nodes[i].shards[client_shard(&client, n)].handle(
            now,
            ShardMsg::BeatRelayed {
                client,
                op,
                to_claimants,
            },
        );
    }

    /// The write of `token` on node `i` has its outcome.
    fn complete(&mut self, i: usize, token: u64, result: OpResult) {
        match self.nodes[i].waiters.remove(&token) {
            Some(Waiter::Peer { from, id }) => {
                self.put_on_wire(i, from, Payload::ForwardReply { id, result })
            }
            Some(Waiter::Client) => {
                if let Some((client, _)) = self.http_pending.remove(&(i, token)) {
                    if !self.truth.contains_key(&client) {
                        self.say(format!("{client}: node {i} answers {result:?}"));
                    }
                    self.http_busy.remove(&client);
                }
            }
            None => {}
        }
    }

    fn new_token(&mut self, i: usize, waiter: Waiter) -> u64 {
        let node = &mut self.nodes[i];
        node.next_token += 1;
        node.waiters.insert(node.next_token, waiter);
        node.next_token
    }

    /// Node `i` receives a server frame from node `from`.
    fn receive(&mut self, i: usize, from: usize, payload: Payload) {
        let from_id = self.nodes[from].id.clone();
        self.nodes[i].membership.handle_heard(&from_id, self.now_ms);
        match payload {
            Payload::Distro { partition, msg } => {
                let shard = partition as usize % self.nodes[i].shard_count;
                let now = self.nodes[i].now(self.now_ms);
                self.nodes[i].shards[shard].handle_peer(now, from_id, partition, msg);
            }
            Payload::Forward { id, client, op } => {
                let token = self.new_token(i, Waiter::Peer { from, id });
                self.nodes[i].router.handle_forwarded_write(
                    self.now_ms,
                    token,
                    &from_id,
                    client,
                    op,
                );
            }
            Payload::ForwardReply { id, result } => {
                self.nodes[i].router.handle_forward_reply(id);
                self.complete(i, id, result);
            }
            Payload::RelayBeat { client, op } => self.beat_relayed(i, client, op, false),
            Payload::Reachable { up } => {
                // A deaf link (a zombie connection) is not modelled: the simulated network
                // loses nothing silently on a link both ends see UP.
                self.nodes[i]
                    .membership
                    .handle_report(&from_id, up, self.now_ms);
                self.publish_view(i);
            }
        }
        self.collect(i);
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse((at, seq))) = self.net.peek().copied() {
            if at > self.now_ms {
                break;
            }
            self.net.pop();
            if let Some(f) = self.flights.get(&seq) {
                let paused_until = self.nodes[f.to].paused_until_ms;
                if self.nodes[f.to].alive && paused_until > self.now_ms {
                    // Waits in the paused node's socket.
                    self.net.push(Reverse((paused_until, seq)));
                    continue;
                }
            }
            let Some(f) = self.flights.remove(&seq) else {
                continue;
            };
            // A cut link also loses what was on the wire, and a restarted node gets nothing
            // sent to its previous run (its connections died with it).
            if !self.nodes[f.to].alive
                || self.blocked.contains(&(f.from, f.to))
                || self.nodes[f.to].incarnation != f.to_incarnation
            {
                continue;
            }
            self.receive(f.to, f.from, f.payload);
        }
    }

    fn fire_timers(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.running(i) {
                continue;
            }
            let now = self.nodes[i].now(self.now_ms);
            let mut fired = false;
            if self.nodes[i]
                .router
                .poll_timeout()
                .is_some_and(|t| t <= self.now_ms)
            {
                self.nodes[i].router.handle_timeout(self.now_ms);
                fired = true;
            }
            for s in 0..self.nodes[i].shards.len() {
                if self.nodes[i].shards[s]
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now_ms)
                {
                    self.nodes[i].shards[s].handle_timeout(now);
                    fired = true;
                }
            }
            if fired {
                self.collect(i);
            }
        }
    }

    fn next_event_ms(&self) -> u64 {
        let mut next = self
            .next_view_ms
            .min(self.next_check_ms)
            .min(self.next_action_ms)
            .min(self.next_report_ms);
        if let Some(Reverse((at, _))) = self.net.peek() {
            next = next.min(*at);
        }
        for n in self.nodes.iter().filter(|n| n.alive) {
            if let Some(t) = n.router.poll_timeout() {
                next = next.min(t);
            }
            for s in &n.shards {
                if let Some(t) = s.poll_timeout() {
                    next = next.min(t);
                }
            }
        }
        next.max(self.now_ms + 1)
    }

    // ----- clients -----------------------------------------------------------------

    /// The nodes that answer clients now (alive and not paused).
    fn alive_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.running(*i)).collect()
    }

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
        let route =
            self.nodes[entry]
                .router
                .handle_client_write(self.now_ms, token, client.clone(), op);
        if deregister {
            self.say(format!("{client} deregisters at node {entry}: {route:?}"));
        }
        self.collect(entry);
    }

    fn random_action(&mut self) {
        let alive = self.alive_nodes();
        if alive.is_empty() {
            return;
        }
        let grpc_open = self.truth.keys().filter(|c| !c.is_heartbeat()).count();
        let roll = self.rng.below(100);
        if roll < 35 && grpc_open < self.scenario.grpc_clients {
            // A gRPC connection registers in one to three services.
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
        } else if roll < 50 {
            // A gRPC client leaves a service or disconnects.
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
        } else if roll < 70 && self.http_ids.len() < self.scenario.http_clients {
            // A new HTTP client registers through a random node.
            let instance = self.new_instance();
            let client = ClientId::for_address(&instance.host, instance.port);
            let service =
                self.services[self.rng.below(self.services.len() as u64) as usize].clone();
            let home = self.rng.below(self.nodes.len() as u64) as usize;
            let entry = self.http_entry(home, &alive);
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
        } else if roll < 78 {
            // A weight change of a gRPC instance (an update must win over older copies).
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
        } else if roll < 86 && self.scenario.http_deregistrations {
            // An HTTP client deregisters (through its home node or the next live one) and
            // stops beating.
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
            let entry = self.http_entry(t.home, &alive);
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
    }

    /// HTTP clients beat through their home node (or the next live one); a beat re-registers
    /// an unknown instance.
    fn beats(&mut self) {
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

    // ----- faults ------------------------------------------------------------------

    fn random_fault(&mut self) {
        let count = self.nodes.len();
        let roll = self.rng.below(100);
        let a = self.rng.below(count as u64) as usize;
        let b = (a + 1 + self.rng.below(count as u64 - 1) as usize) % count;
        match roll {
            0..=14 => {
                self.loss = [0.0, 0.05, 0.1, 0.3][self.rng.below(4) as usize];
                self.say(format!("loss {:.2}", self.loss));
            }
            15..=24 => {
                self.dup = [0.0, 0.05, 0.2][self.rng.below(3) as usize];
                self.jitter_ms = [2, 20, 200][self.rng.below(3) as usize];
                self.say(format!("dup {:.2} jitter {} ms", self.dup, self.jitter_ms));
            }
            25..=44 => {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
                self.say(format!("partition {a} <-> {b}"));
            }
            45..=54 => {
                self.blocked.insert((a, b));
                self.say(format!("one-way cut {a} -> {b}"));
            }
            55..=69 if !self.blocked.is_empty() => {
                self.blocked.clear();
                self.say("network heals".into());
            }
            70..=79 => {
                self.crash_or_restart();
                return;
            }
            85..=89 => {
                // SIGSTOP and SIGCONT: the node does nothing for a while, then carries on
                // with its clock jumped.
                if self.running(a) {
                    let pause = [2_000, 8_000, 15_000][self.rng.below(3) as usize];
                    self.nodes[a].paused_until_ms = self.now_ms + pause;
                    self.say(format!("node {a} paused for {pause} ms"));
                    // The disturbance lasts until the node is back.
                    self.last_disturbance_ms = self.now_ms + pause;
                }
                return;
            }
            90..=93 => {
                // A quick restart (a rolling restart): back while its clients move.
                if self.nodes[a].alive && !self.scenario.late.contains(&a) {
                    let back = self.now_ms + self.rng.range(200, 2_500);
                    self.crash_node(a);
                    self.restarts.push((back, a));
                    self.say(format!("node {a} restarts at {back} ms"));
                }
                // Like a crash, not a disturbance of the network (see `crash_or_restart`).
                return;
            }
            80..=84 => {
                // Clock skew: the wall clock of a node jumps (it only feeds revisions and
                // lastRefTime; timeouts run on the monotonic clock).
                let skew = [-600_000i64, -5_000, 0, 5_000, 600_000][self.rng.below(5) as usize];
                self.nodes[a].skew_ms = skew;
                self.say(format!("node {a} wall clock skew {skew} ms"));
            }
            _ => {}
        }
        self.last_disturbance_ms = self.now_ms;
    }

    /// Crashes a running node or restarts a crashed one. Not a disturbance of the network:
    /// I3 keeps being checked while a crashed node is being declared DOWN and its clients
    /// move (a restarted node is judged once it has run for a grace period, and the others
    /// once they have seen it UP for one).
    fn crash_or_restart(&mut self) {
        let count = self.nodes.len();
        let a = self.rng.below(count as u64) as usize;
        if self.scenario.late.contains(&a) && self.now_ms < self.scenario.join_at_ms {
            return;
        }
        if self.nodes[a].alive {
            self.crash_node(a);
        } else {
            self.start_node(a);
        }
    }

    fn heal(&mut self) {
        self.blocked.clear();
        self.loss = 0.0;
        self.dup = 0.0;
        self.jitter_ms = 2;
        self.restarts.clear();
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_until_ms = self.nodes[i].paused_until_ms.min(self.now_ms);
            if !self.nodes[i].alive {
                self.start_node(i);
            }
        }
        self.last_disturbance_ms = self.now_ms;
        self.say("faults end: network healed, every node running".into());
    }

    // ----- the loop ----------------------------------------------------------------

    /// Runs the scenario to `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        if !self.scenario.faults {
            self.healed = true;
        }
        while self.now_ms < until_ms {
            self.now_ms = self.next_event_ms().min(until_ms);
            self.deliver_due();
            self.fire_timers();
            let due: Vec<usize> = self
                .restarts
                .iter()
                .filter(|(at, _)| *at <= self.now_ms)
                .map(|(_, i)| *i)
                .collect();
            self.restarts.retain(|(at, _)| *at > self.now_ms);
            for i in due {
                if !self.nodes[i].alive {
                    self.start_node(i);
                }
            }
            if self.now_ms >= self.next_report_ms {
                self.next_report_ms = self.now_ms + REACHABLE_EVERY_MS;
                self.send_reports();
            }
            if self.now_ms >= self.next_view_ms {
                self.next_view_ms = self.now_ms + VIEW_EVERY_MS;
                for &late in &self.scenario.late.clone() {
                    if self.now_ms >= self.scenario.join_at_ms
                        && !self.nodes[late].alive
                        && self.nodes[late].started_ms == 0
                    {
                        self.start_node(late);
                        self.nodes[late].started_ms = self.now_ms.max(1);
                    }
                }
                self.update_views(false);
            }
            if self.now_ms >= self.next_action_ms {
                self.next_action_ms = self.now_ms + self.rng.range(20, 300);
                let in_faults = self.scenario.faults
                    && self.now_ms >= self.scenario.fault_from_ms
                    && self.now_ms < self.scenario.fault_until_ms;
                if in_faults && self.scenario.crashes_only {
                    if self.rng.chance(0.02) {
                        self.crash_or_restart();
                    }
                } else if in_faults && self.rng.chance(0.08) {
                    self.random_fault();
                }
                if !self.healed && self.now_ms >= self.scenario.fault_until_ms {
                    self.healed = true;
                    self.heal();
                }
                // Writes stop a while before the end so convergence can be judged.
                if self.now_ms < self.writes_until_ms() {
                    self.random_action();
                }
                self.beats();
            }
            if self.now_ms >= self.next_check_ms {
                self.next_check_ms = self.now_ms + CHECK_EVERY_MS;
                self.check_safety();
            }
        }
    }

    /// Writes (not beats) stop here.
    pub fn writes_until_ms(&self) -> u64 {
        self.scenario.fault_until_ms + 5_000
    }

    // ----- invariants --------------------------------------------------------------

    /// What a node answers: (service, ip, port, weight) for every instance it shows.
    fn visible(&self, i: usize) -> BTreeSet<(String, String, u16, u64)> {
        let mut out = BTreeSet::new();
        self.nodes[i].index.for_each(|view| {
            for inst in view.instances() {
                out.insert((
                    view.key.grouped_name(),
                    inst.host.to_string(),
                    inst.port,
                    inst.weight as u64,
                ));
            }
        });
        out
    }

    fn truth_set(
        &self,
        filter: impl Fn(&ClientId, &TruthClient, u64) -> bool,
    ) -> BTreeSet<(String, String, u16, u64)> {
        let mut out = BTreeSet::new();
        for (c, t) in &self.truth {
            for (s, (inst, at)) in &t.publishes {
                if filter(c, t, *at) {
                    out.insert((
                        s.grouped_name(),
                        inst.host.to_string(),
                        inst.port,
                        inst.weight as u64,
                    ));
                }
            }
        }
        out
    }

    /// Safety, checked while faults happen:
    /// - I2: a publish's revision never goes down on any node;
    /// - I3: a gRPC instance registered a while ago is visible on every node that has been
    ///   able to reach its owner throughout (no loss, no expiry of live instances); a live
    ///   HTTP instance is visible on every running node whenever the running nodes have seen
    ///   each other UP for a while — also while a crashed node is still being declared DOWN
    ///   and its clients move;
    /// - I5: in-flight sync batches per peer (per shard) stay within the window.
    pub fn check_safety(&mut self) {
        let max_inflight = self.scenario.distro.max_inflight_batches;
        let grace =
            self.scenario.distro.verify_interval_ms + self.scenario.distro.sync_timeout_ms + 2_000;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let mut revs = Vec::new();
            for s in &self.nodes[i].shards {
                s.visit_entries(|c, svc, rev, origin| {
                    revs.push((
                        c.clone(),
                        svc.clone(),
                        rev,
                        origin.map(|(n, e)| (n.clone(), e)),
                    ))
                });
                if s.max_inflight_batches() > max_inflight {
                    self.violations.push(format!(
                        "I5: node {i} has {} batches in flight (limit {max_inflight})",
                        s.max_inflight_batches()
                    ));
                }
            }
            for (c, svc, rev, origin) in revs {
                if rev == 0 {
                    // A copy handed to a new owner, waiting for its state (DISTRO.md, I2).
                    continue;
                }
                let prev = self
                    .seen_revs
                    .entry((i, c.clone(), svc.clone()))
                    .or_insert((origin.clone(), 0));
                // Revisions are compared per owner: a client handed to another owner takes
                // that owner's state (DISTRO.md, I2).
                if prev.0 == origin && rev < prev.1 {
                    self.violations.push(format!(
                        "I2: node {i} went back from revision {} to {rev} for {c} in {svc:?} (owner {origin:?})",
                        prev.1
                    ));
                }
                *prev = (origin, rev);
            }
        }
        // I3 applies only on a lossless network (loss makes "reachable" a matter of luck).
        if self.loss > 0.0 || self.now_ms < self.last_disturbance_ms.saturating_add(grace) {
            return;
        }
        for i in 0..self.nodes.len() {
            if !self.running(i) || self.now_ms < self.nodes[i].started_ms + grace {
                continue;
            }
            let visible = self.visible(i);
            let now = self.now_ms;
            let nodes = &self.nodes;
            // Every running node has seen every running peer UP for a while. Stopped nodes
            // may still be SUSPICIOUS for some and DOWN for others: their heartbeat clients
            // move meanwhile, and must stay visible while they do.
            let calm_cluster = (0..nodes.len()).filter(|k| nodes[*k].alive).all(|k| {
                nodes[k].seen.iter().enumerate().all(|(j, (h, since, _))| {
                    j == k || !nodes[j].alive || (*h == Health::Up && since + grace <= now)
                })
            });
            let expected = self.truth_set(|c, t, at| {
                // Heartbeat clients: on a cluster where every node has seen every other UP
                // for a while, they are everywhere (their beats reach their owner).
                let Some(owner) = t.node else {
                    return c.is_heartbeat() && calm_cluster && at + grace <= now;
                };
                !c.is_heartbeat()
                    && at + grace <= now
                    && nodes[owner].alive
                    && (owner == i
                        || (nodes[i].seen[owner].0 == Health::Up
                            && nodes[i].seen[owner].1 + grace <= now
                            && nodes[owner].seen[i].0 == Health::Up))
            });
            let missing: Vec<_> = expected.difference(&visible).take(3).cloned().collect();
            if !missing.is_empty() {
                let text = format!("I3: node {i} misses");
                if !self.violations.iter().any(|v| v.starts_with(&text)) {
                    self.log
                        .push(format!("I3 at node {i} at {} ms:", self.now_ms));
                    self.describe(&missing);
                }
                if self.violations.iter().any(|v| v.starts_with(&text)) {
                    continue;
                }
                self.violations.push(format!(
                    "I3: node {i} misses live instances of reachable owners, e.g. {missing:?}"
                ));
            }
        }
    }

    fn describe(&mut self, tuples: &[(String, String, u16, u64)]) {
        for (svc, host, port, _) in tuples {
            let owner = self.truth.iter().find(|(_, t)| {
                t.publishes.iter().any(|(s, (inst, _))| {
                    &s.grouped_name() == svc && &inst.host.to_string() == host && inst.port == *port
                })
            });
            if let Some((c, t)) = owner {
                let mut lines = vec![format!("  {c} (connection on {:?}) {svc}:", t.node)];
                for (k, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
                    let shard = client_shard(c, n.shard_count);
                    lines.push(format!(
                        "    node {k} (loaded {}, expired {}, pruned {}): {}",
                        n.shards.iter().all(|s| s.is_loaded()),
                        n.shards[shard]
                            .stats()
                            .distro
                            .replicas_expired
                            .load(std::sync::atomic::Ordering::Relaxed),
                        n.shards[shard]
                            .stats()
                            .distro
                            .replicas_pruned
                            .load(std::sync::atomic::Ordering::Relaxed),
                        n.shards[shard].describe_client(c)
                    ));
                }
                self.log.push(lines.join("\n"));
            }
        }
    }

    /// I1: every node shows exactly the live instances.
    pub fn check_converged(&mut self) {
        let truth = self.truth_set(|_, _, _| true);
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let excused = &self.stand_in_deregistrations;
            let visible: BTreeSet<_> = self
                .visible(i)
                .into_iter()
                .filter(|(_, host, port, _)| {
                    let ip: Ipv4Addr = host.parse().expect("simulated hosts are v4");
                    !excused.contains(&ClientId::for_address(&Host::V4(ip), *port))
                })
                .collect();
            let missing: Vec<_> = truth.difference(&visible).take(3).cloned().collect();
            let extra: Vec<_> = visible.difference(&truth).take(3).cloned().collect();
            if !missing.is_empty() || !extra.is_empty() {
                let all: Vec<_> = missing.iter().chain(extra.iter()).cloned().collect();
                self.describe(&all);
                self.violations.push(format!(
                    "I1: node {i} did not converge: {} missing (e.g. {missing:?}), {} extra (e.g. {extra:?})",
                    truth.difference(&visible).count(),
                    visible.difference(&truth).count()
                ));
            }
        }
    }

    /// I7: once nodes agree, a verify round is one digest per partition and peer, and
    /// nothing else.
    pub fn check_quiet_verify(&mut self) {
        let before = self.traffic;
        // Two whole intervals: every node's verify timer fires exactly twice.
        let until = self.now_ms + 2 * self.scenario.distro.verify_interval_ms;
        self.run_until(until);
        let after = self.traffic;
        let extra = (after.slice_digests - before.slice_digests)
            + (after.slice_clients - before.slice_clients)
            + (after.resync - before.resync)
            + (after.sync - before.sync);
        if extra > 0 {
            self.violations.push(format!(
                "I7: agreeing nodes exchanged more than digests in a verify round: {:?} -> {:?}",
                before, after
            ));
        }
        if let Ok(wanted) = std::env::var("DISTRO_CLIENT") {
            let ids: Vec<ClientId> = self
                .truth
                .keys()
                .filter(|c| c.to_string().starts_with(&wanted))
                .cloned()
                .collect();
            for c in ids {
                eprintln!("{c}:");
                for (k, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
                    let shard = client_shard(&c, n.shard_count);
                    eprintln!(
                        "  node {k} sees responsible {:?}: {}",
                        n.members.responsible_for(&c),
                        n.shards[shard].describe_client(&c)
                    );
                }
            }
        }
        if let Ok(addr) = std::env::var("DISTRO_ADDR") {
            // A client the truth no longer knows (a deregistered one that stayed).
            if let Some((ip, port)) = addr.split_once(':') {
                let ip: Ipv4Addr = ip.parse().expect("DISTRO_ADDR=ip:port");
                let port: u16 = port.parse().expect("DISTRO_ADDR=ip:port");
                let c = ClientId::for_address(&Host::V4(ip), port);
                for (k, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
                    let shard = client_shard(&c, n.shard_count);
                    eprintln!(
                        "  node {k} sees responsible {:?}: {}",
                        n.members.responsible_for(&c),
                        n.shards[shard].describe_client(&c)
                    );
                }
            }
        }
        let digests = after.digest - before.digest;
        let alive = self.alive_nodes().len() as u64;
        let expected = 2 * alive * (alive - 1) * u64::from(engine::distro::PARTITIONS);
        if digests != expected {
            self.violations.push(format!(
                "I7: expected {expected} digests in one round, saw {digests}"
            ));
        }
    }

    /// Counts of what every node holds, for reports.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.alive {
                parts.push(format!("node {i}: {} instances", self.visible(i).len()));
            }
        }
        format!(
            "truth {} instances; {}",
            self.truth_set(|_, _, _| true).len(),
            parts.join(", ")
        )
    }
}

/// Runs one seed of a scenario and returns the violations (empty = pass).
pub fn run_seed(seed: u64, scenario: Scenario, verbose: bool) -> (Vec<String>, World) {
    let mut w = World::new(seed, scenario);
    w.verbose = verbose;
    // After the last write: one beat period for HTTP clients to re-register anything that
    // expired during the faults, then one verify interval plus sync time to converge.
    let settle = BEAT_MS + w.scenario.distro.verify_interval_ms + 3_000;
    let end = w.writes_until_ms() + settle;
    w.run_until(end);
    w.check_converged();
    w.check_quiet_verify();
    (w.violations.clone(), w)
}
