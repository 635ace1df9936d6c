//! The simulated network: what travels between nodes ([`Payload`]), the messages in flight
//! (lost, duplicated, delayed and reordered, except the server's frames on one link, which
//! keep their order), their delivery, and the traffic counts. Also what each node's
//! transport makes of it: the views of its peers (UP, SUSPICIOUS, DOWN) given to its
//! membership, shards and router, and the reachability reports nodes exchange.

use std::cmp::Reverse;

use engine::distro::{Health, NodeId, PeerMsg, SyncItem};
use engine::{ClientId, ClientOp, OpResult};

use super::nodes::Waiter;
use super::World;

/// What travels between nodes: Distro messages and the server's frames around them.
#[derive(Clone, Debug)]
pub(super) enum Payload {
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

pub(super) struct Flight {
    from: usize,
    to: usize,
    /// The destination's incarnation when it was sent (a restarted node gets nothing of it).
    to_incarnation: u64,
    payload: Payload,
}

/// Message counts by kind, for the quiet-verify check.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub sync: u64,
    /// Sync batches only about dead clients (not counted in `sync`).
    pub sync_of_dead: u64,
    pub digest: u64,
    pub slice_digests: u64,
    pub slice_clients: u64,
    pub resync: u64,
    pub snapshot: u64,
    pub digest_bytes: u64,
}

fn item_client(item: &SyncItem) -> &ClientId {
    match item {
        SyncItem::Upsert { client, .. }
        | SyncItem::Remove { client, .. }
        | SyncItem::Drop { client, .. } => client,
        SyncItem::Full(state) => &state.client,
    }
}

/// A peer is suspicious at once and DOWN after this long unreachable (like the transport).
const DOWN_AFTER_MS: u64 = 6_000;
/// A peer whose link stopped working still looks UP this long (the QUIC idle timeout).
const IDLE_TIMEOUT_MS: u64 = 3_000;

impl World {
    fn link_usable(&self, a: usize, b: usize) -> bool {
        self.running(a)
            && self.running(b)
            && !self.blocked.contains(&(a, b))
            && !self.blocked.contains(&(b, a))
    }

    /// Recomputes each node's view of its peers, as its transport would see it: a peer is UP
    /// when both directions work (QUIC needs both), SUSPICIOUS when it just stopped working,
    /// DOWN after a while.
    pub(super) fn update_views(&mut self, force: bool) {
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
    pub(super) fn send_reports(&mut self) {
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

    pub(super) fn transmit(
        &mut self,
        from: usize,
        shard: usize,
        to: NodeId,
        partition: u16,
        msg: PeerMsg,
    ) {
        let Some(to) = self.node_of(&to) else {
            self.violations
                .push(format!("node {from} sent to unknown member {to}"));
            return;
        };
        match &msg {
            // The changes of dead clients (their unhealthy marks, their expiry) travel
            // until their deletion timeouts, long after the last write (I7, I8).
            PeerMsg::Sync { items, .. }
                if items
                    .iter()
                    .all(|item| self.dead.contains_key(item_client(item))) =>
            {
                self.traffic.sync_of_dead += 1
            }
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
                &kind[..kind.len().min(
                    std::env::var("DISTRO_TRACE")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(160)
                )]
            );
        }
        self.put_on_wire(from, to, Payload::Distro { partition, msg });
    }

    /// Sends a server frame from node `from` to member `to`.
    pub(super) fn send(&mut self, from: usize, to: &NodeId, payload: Payload) {
        match self.node_of(to) {
            Some(to) => self.put_on_wire(from, to, payload),
            None => self
                .violations
                .push(format!("node {from} sent to unknown member {to}")),
        }
    }

    pub(super) fn put_on_wire(&mut self, from: usize, to: usize, payload: Payload) {
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

    pub(super) fn deliver_due(&mut self) {
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
                    let to = f.to;
                    self.nodes[to].parked.push(seq);
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
}
