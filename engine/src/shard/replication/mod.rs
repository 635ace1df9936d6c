//! The Distro half of a shard: replication of the clients this node is responsible for to
//! its peers, copies (replicas) of theirs, verify, snapshots and replica leases.
//! `DISTRO.md` is the specification; the invariant numbers below (`I1`…) refer to it.
//!
//! Everything here runs inside [`Shard`]: the data it replicates is the shard's own client
//! table, so a change and its replication bookkeeping never cross a core. A partition of the
//! client space belongs to exactly one shard on every node, and every message is about one
//! partition, so a peer exchange stays on one core at both ends.
//!
//! # Layout
//! One `impl Shard` block per concern, all over the same [`DistroState`]:
//! - this file: the shared state and its types, starting Distro, the dispatch of peer
//!   messages ([`Shard::handle_peer`]), shutdown, and small helpers every part uses;
//! - `outbound`: local changes of our clients — digests, the per-peer merge queues, and
//!   `pump`, which sends them as sync batches within the in-flight window;
//! - `flow`: the flow control of those batches — acknowledgements, the acknowledgement
//!   timeout measured per peer (`AckClock`), and retries of batches that timed out;
//! - `inbound`: applying a peer's changes to the copies we hold (I2), and moving clients
//!   between "ours" and "a copy" (hand-overs, take-overs, removal memory);
//! - `apart`: removals held back from members that were apart (I1, no flaps);
//! - `claims`: heartbeat clients that another node claims against our view of the members
//!   (asymmetric partitions), and beats relayed to such claimants;
//! - `membership`: reacting to a changed member list, rebalancing heartbeat clients;
//! - `verify`: the periodic digest exchange that repairs whatever sync missed;
//! - `housekeeping`: the tick — retries of unacknowledged batches, pause detection,
//!   replica leases;
//! - `snapshot`: the startup load from peers and the snapshots served to them;
//! - `status`: read-only introspection for logs, metrics and the simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use indexmap::IndexSet;
use smallvec::SmallVec;

use super::{Client, ClientId, Command, ServiceKey, Shard, StableHasher, Timer};
use crate::distro::{
    ClientState, DistroConfig, EntryState, Health, Members, NodeId, PeerMsg, PARTITIONS, SLICES,
};

mod apart;
pub(super) use apart::hold_for;
mod claims;
mod flow;
mod housekeeping;
mod inbound;
mod membership;
mod outbound;
mod snapshot;
mod status;
mod verify;

/// A snapshot request followed by nothing at all from its peer for this long goes to
/// another peer.
const FIRST_CHUNK_TIMEOUT_MS: u64 = 1_000;

/// How often the housekeeping tick runs (retries, snapshot progress, leases).
const TICK_MS: u64 = 200;
/// Clients per `SliceClients` / `Resync` message.
const LIST_CHUNK: usize = 4_096;

/// What a shard knows about a client it holds as a copy of a peer's.
pub(crate) struct ReplicaInfo {
    /// The node responsible for the client (whose syncs and verifies we follow).
    pub(crate) origin: NodeId,
    /// When the owner last confirmed this client individually (mono ms).
    pub(crate) renewed_ms: u64,
    /// Every change at or below this revision has been applied through a full state.
    pub(crate) floor: u64,
    /// Removed publishes and the revision of their removal, so that a late, older upsert
    /// cannot bring them back (I2).
    pub(crate) tombstones: SmallVec<[(ServiceKey, u64); 1]>,
    /// Which association with an owner this is: a client handed to a new owner (or back)
    /// starts a new one, and revisions are only comparable within one (I2).
    pub(crate) epoch: u64,
    /// Followed because its owner in our view expired it while `origin` claimed it (views
    /// disagree): `origin`'s verify lists decide its existence, whatever our view says.
    pub(crate) by_claim: bool,
    /// Handed over by us to `origin`, which has not shown it has the client yet (no data from
    /// it, not in its verify lists). While views disagree the new owner may have ignored the
    /// handover, so its lists prove nothing: the copy lives on its own lease, renewed by the
    /// beats that pass through us, whether `origin` is reachable or not.
    pub(crate) unconfirmed: bool,
}

impl ReplicaInfo {
    fn new(origin: NodeId, now_ms: u64, epoch: u64) -> Box<ReplicaInfo> {
        Box::new(ReplicaInfo {
            origin,
            renewed_ms: now_ms,
            floor: 0,
            tombstones: SmallVec::new(),
            epoch,
            by_claim: false,
            unconfirmed: false,
        })
    }

    fn tombstone(&self, service: &ServiceKey) -> u64 {
        self.tombstones
            .iter()
            .find(|(s, _)| s == service)
            .map_or(0, |(_, r)| *r)
    }

    fn set_tombstone(&mut self, service: &ServiceKey, rev: u64) {
        match self.tombstones.iter_mut().find(|(s, _)| s == service) {
            Some(t) => t.1 = t.1.max(rev),
            None => self.tombstones.push((service.clone(), rev)),
        }
    }
}

/// Distro counters of a shard, readable from any core.
#[derive(Default, Debug)]
pub struct DistroStats {
    /// Peers' deletions of our clients taken after this node did not run for a while.
    pub drops_after_pause: AtomicU64,
    /// The startup snapshot is loaded (or there was nobody to load it from).
    pub loaded: AtomicBool,
    /// Milliseconds from the start of Distro to `loaded`.
    pub load_ms: AtomicU64,
    /// Sync batches sent.
    pub sync_batches: AtomicU64,
    /// Sync items sent.
    pub sync_items: AtomicU64,
    /// Batches not acknowledged in time whose clients were queued again.
    pub sync_retries: AtomicU64,
    /// Retried batches whose acknowledgement came after all (the peer was slow, not the
    /// link lost): each one sent its keys twice.
    pub sync_spurious_retries: AtomicU64,
    /// Instances sent in sync batches (a publish's instances, a full state's).
    pub sync_instances: AtomicU64,
    /// Replicated changes applied.
    pub applied: AtomicU64,
    /// Replicated changes ignored as older than what is held (I2).
    pub stale: AtomicU64,
    /// Digests sent.
    pub verify_sent: AtomicU64,
    /// Digests received that matched.
    pub verify_matched: AtomicU64,
    /// Digests received that differed.
    pub verify_differed: AtomicU64,
    /// Clients whose full state a peer asked for again.
    pub resyncs: AtomicU64,
    /// Of those, clients not sent again because a change of theirs was already queued or
    /// in flight towards that peer.
    pub resyncs_underway: AtomicU64,
    /// Replicas removed because their owner stopped confirming them.
    pub replicas_expired: AtomicU64,
    /// Replicas removed because their owner no longer has them.
    pub replicas_pruned: AtomicU64,
    /// Copies whose owner no longer holds them, moved to the member now responsible for
    /// them (its verify decides whether they live).
    pub orphans_rehomed: AtomicU64,
    /// Heartbeat clients followed to another claimant when the owner in our view expired
    /// them (views disagreed).
    pub claims_followed: AtomicU64,
    /// Beats relayed to a node that claimed their client against this node's view.
    pub beats_relayed_to_claimants: AtomicU64,
    /// Clients sent in snapshots.
    pub snapshot_sent: AtomicU64,
    /// Clients received in snapshots.
    pub snapshot_received: AtomicU64,
    /// Pending-change queues dropped because a peer was away too long (verify repairs it).
    pub queue_overflows: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What to send a peer about a client: one publish (`service`) or all of it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct SyncKey {
    client: ClientId,
    service: Option<ServiceKey>,
}

struct Inflight {
    keys: Vec<SyncKey>,
    /// Instances the batch carried (its share of the in-flight window).
    instances: usize,
    sent_ms: u64,
}

/// Replication towards one peer, for one partition.
#[derive(Default)]
struct LinkPart {
    /// Changes not sent yet, merged: a key is here once however often it changed.
    dirty: IndexSet<SyncKey, StableHasher>,
    inflight: BTreeMap<u64, Inflight>,
    /// Batches retried recently (seq → sent at), so that a late acknowledgement is known
    /// as one: a spurious retry, and a measure of how slow the peer is (bounded).
    retired: BTreeMap<u64, u64>,
    next_seq: u64,
}

/// A snapshot this shard streams to a peer.
struct SnapshotServe {
    to: NodeId,
    partition: u16,
    id: u64,
    /// The partition's clients when the request came, still to send (last first). A list
    /// rather than a cursor into the client map: removals reorder the map, and a cursor
    /// would skip the client moved behind it. Clients that arrive later reach the peer
    /// through sync.
    pending: Vec<ClientId>,
    next_seq: u64,
    acked: u64,
    finished: bool,
    last_ms: u64,
}

/// The startup load of one partition.
struct PartLoad {
    source: Option<NodeId>,
    id: u64,
    expect_seq: u64,
    last_progress_ms: u64,
    tried: BTreeSet<NodeId>,
    done: bool,
}

/// Slice sums of the entry digests of one (origin, partition).
struct Digest {
    slices: Box<[u64]>,
}

impl Digest {
    fn new() -> Digest {
        Digest {
            slices: vec![0u64; SLICES as usize].into_boxed_slice(),
        }
    }
    fn root(&self) -> u64 {
        self.slices.iter().fold(0u64, |a, s| a.wrapping_add(*s))
    }
}

/// The Distro state of a shard.
pub(crate) struct DistroState {
    cfg: DistroConfig,
    members: Members,
    partitions: Vec<u16>,
    links: BTreeMap<NodeId, BTreeMap<u16, LinkPart>>,
    /// Key `None`: the clients this node is responsible for.
    digests: HashMap<(Option<NodeId>, u16), Digest>,
    /// Per-slice confirmation times of replicas, by (origin, partition).
    renewed: HashMap<(NodeId, u16), Box<[u64]>>,
    /// When each peer last went DOWN (or left the member list), as seen here: the leases of
    /// its copies run from then at the earliest, so the members that take over its heartbeat
    /// clients have a whole lease to announce them before anyone drops a copy.
    down_since: HashMap<NodeId, u64>,
    /// Heartbeat clients that a node other than the one we follow holds as its own (its
    /// view of the members differs from ours: an asymmetric partition), and when it last
    /// said so. When the owner we follow expires such a client — it gets no beats, they go
    /// to the claimant — we follow the claimant instead of deleting a live instance.
    claims: HashMap<ClientId, (NodeId, u64), StableHasher>,
    /// Replicas removed as a whole, for a lease: the lowest revision that may bring one
    /// back, and when it was removed (I2).
    dropped: HashMap<ClientId, (u64, u64), StableHasher>,
    sync_timer_set: bool,
    round: u64,
    loads: BTreeMap<u16, PartLoad>,
    /// When a chunk of a current load last arrived from each peer: a peer that is sending
    /// is alive, and a partition waiting behind the others' chunks is queued, not stalled.
    load_heard: HashMap<NodeId, u64>,
    /// While loading: when any message from each peer last arrived. A request followed by
    /// other messages from its peer reached a live process; its first chunk may just wait
    /// behind the peer's sync traffic.
    frames_heard: HashMap<NodeId, u64>,
    loaded: bool,
    serving: Vec<SnapshotServe>,
    started_ms: u64,
    last_tick_ms: u64,
    last_expiry_ms: u64,
    next_id: u64,
    /// Heartbeat clients being handed to their new owner: ours until it acknowledged our
    /// full state, so a client is never nobody's (the owner may have died meanwhile).
    handovers: HashMap<ClientId, NodeId, StableHasher>,
    /// The partition that last sent a sync batch to each peer (`pump`'s round robin).
    pump_cursor: HashMap<NodeId, u16>,
    /// Per peer: measured acknowledgement times, and the timeout they give.
    ack_clocks: HashMap<NodeId, flow::AckClock>,
    /// Heartbeat clients this node removed while it held them as their owner: the revision
    /// of the removal and when (mono ms), kept for a lease. A peer that was DOWN meanwhile
    /// still gets the `Drop` when it is back, even if the client is its own again by then.
    owned_removals: HashMap<ClientId, (u64, u64), StableHasher>,
    /// When each member was last not UP (mono ms), as seen here: a removal made while it
    /// was away is held back from it (`apart`).
    last_away: HashMap<NodeId, u64>,
    /// Removals of heartbeat clients held back from members that were apart (`apart`).
    held: HashMap<ClientId, apart::Held, StableHasher>,
}

impl Shard {
    pub(super) fn start_distro(&mut self, cfg: DistroConfig, now: super::Now) {
        let n = self.cfg.shard_count as u16;
        let partitions: Vec<u16> = (0..PARTITIONS)
            .filter(|p| p % n.max(1) == self.id as u16)
            .collect();
        let loads = partitions
            .iter()
            .map(|p| {
                (
                    *p,
                    PartLoad {
                        source: None,
                        id: 0,
                        expect_seq: 0,
                        last_progress_ms: now.mono_ms,
                        tried: BTreeSet::new(),
                        done: false,
                    },
                )
            })
            .collect();
        let verify_at = now.mono_ms + cfg.verify_interval_ms;
        self.distro = Some(Box::new(DistroState {
            cfg,
            members: Members::standalone(),
            partitions,
            links: BTreeMap::new(),
            digests: HashMap::new(),
            renewed: HashMap::new(),
            down_since: HashMap::new(),
            claims: HashMap::default(),
            dropped: HashMap::default(),
            sync_timer_set: false,
            round: 0,
            loads,
            load_heard: HashMap::new(),
            frames_heard: HashMap::new(),
            loaded: false,
            serving: Vec::new(),
            started_ms: now.mono_ms,
            last_tick_ms: now.mono_ms,
            last_expiry_ms: now.mono_ms,
            next_id: (self.id as u64) << 48 | (now.unix_ms & 0xFFFF_FFFF),
            handovers: HashMap::default(),
            pump_cursor: HashMap::new(),
            ack_clocks: HashMap::new(),
            owned_removals: HashMap::default(),
            last_away: HashMap::new(),
            held: HashMap::default(),
        }));
        self.set_timer(now.mono_ms + TICK_MS, Timer::DistroTick);
        self.set_timer(verify_at, Timer::Verify);
    }

    /// Whether the startup snapshot is loaded (always true when standalone).
    pub fn is_loaded(&self) -> bool {
        self.distro.as_ref().is_none_or(|d| d.loaded)
    }

    /// A message from peer `from` about `partition`.
    pub fn handle_peer(&mut self, now: super::Now, from: NodeId, partition: u16, msg: PeerMsg) {
        self.now = now;
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        // Only members speak (the transport authenticates them; this keeps a removed
        // member's late messages out), and only about partitions of this shard.
        if !d.members.peers.iter().any(|(n, _)| n == &from) || !d.partitions.contains(&partition) {
            return;
        }
        if !d.loaded {
            let now_ms = now.mono_ms;
            if let Some(d) = self.distro.as_mut() {
                d.frames_heard.insert(from.clone(), now_ms);
            }
        }
        match msg {
            PeerMsg::Sync { seq, items } => {
                for item in items {
                    self.apply_sync_item(&from, item);
                }
                self.send_peer(from, partition, PeerMsg::SyncAck { seq });
            }
            PeerMsg::SyncAck { seq } => self.on_sync_ack(&from, partition, seq),
            PeerMsg::Digest { round, root, clock } => {
                self.observe_rev(clock);
                self.on_digest(from, partition, round, root)
            }
            PeerMsg::SliceDigests { round, slices } => {
                self.on_slice_digests(from, partition, round, &slices)
            }
            PeerMsg::SliceClients {
                as_of,
                matched,
                lists,
                ..
            } => self.on_slice_clients(from, partition, as_of, &matched, lists),
            PeerMsg::Resync { clients } => self.on_resync(from, partition, clients),
            PeerMsg::SnapshotRequest { id } => self.on_snapshot_request(from, partition, id),
            PeerMsg::SnapshotAck { id, seq } => self.on_snapshot_ack(from, partition, id, seq),
            PeerMsg::SnapshotChunk {
                id,
                seq,
                clients,
                done,
            } => self.on_snapshot_chunk(from, partition, id, seq, clients, done),
        }
    }

    /// The node is shutting down: send every pending change now instead of at the end of
    /// the merge window. A change acknowledged by its client but still in the window would
    /// otherwise die with the process — found by the chaos harness: a deregistration
    /// answered just before SIGTERM reached one peer and not the other, the restarted node
    /// loaded the stale copy from that peer and the instance came back everywhere until its
    /// heartbeat timeout.
    ///
    /// From now on the heartbeat checks mark and remove nothing: a removal made while the
    /// peer links close may never reach the peers, and a restarted node loads the client
    /// back from them — a dead instance gone from this node and back after its restart
    /// (chaos `rolling-restart`). The members that take the clients over, or this node
    /// after its restart, decide instead.
    pub fn handle_shutdown(&mut self, now: super::Now) {
        self.now = now;
        self.shutting_down = true;
        if self.distro.is_some() {
            self.on_sync_timer();
        }
    }

    // ----- helpers shared by the submodules -----------------------------------------------

    /// The member view of a clustered shard (`None` standalone).
    pub(super) fn distro_members(&self) -> Option<&Members> {
        self.distro.as_ref().map(|d| &d.members)
    }

    fn members_is_mine(&self, client: &ClientId) -> bool {
        self.distro
            .as_ref()
            .is_some_and(|d| d.members.is_mine(client))
    }

    fn peer_health(&self, peer: &NodeId) -> Health {
        self.distro
            .as_ref()
            .and_then(|d| d.members.peers.iter().find(|(n, _)| n == peer))
            .map_or(Health::Down, |(_, h)| *h)
    }

    fn observe_rev(&mut self, rev: u64) {
        self.clock = self.clock.max(rev);
    }

    fn client_state(id: &ClientId, client: &Client) -> ClientState {
        ClientState {
            client: id.clone(),
            rev: client.revision,
            entries: client
                .publishes
                .iter()
                .map(|e| EntryState {
                    service: e.service.clone(),
                    rev: e.rev,
                    publish: e.publish.clone(),
                })
                .collect(),
        }
    }

    fn send_peer(&mut self, to: NodeId, partition: u16, msg: PeerMsg) {
        self.out.push_back(Command::Peer { to, partition, msg });
    }
}
