//! The Distro half of a shard: replication of the clients this node is responsible for to
//! its peers, copies (replicas) of theirs, verify, snapshots and replica leases.
//! `DISTRO.md` is the specification; the invariant numbers below (`I1`…) refer to it.
//!
//! Everything here runs inside [`Shard`]: the data it replicates is the shard's own client
//! table, so a change and its replication bookkeeping never cross a core. A partition of the
//! client space belongs to exactly one shard on every node, and every message is about one
//! partition, so a peer exchange stays on one core at both ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use indexmap::IndexSet;
use smallvec::SmallVec;

use super::{
    next_rev, Client, ClientId, ClientOp, Command, PublishEntry, ServiceKey, ServiceOp, Shard,
    StableHasher, Timer,
};
use crate::distro::{
    client_digest, client_seed, entry_digest, partition_of, slice_of, ClientHash, ClientState,
    DistroConfig, EntryState, Health, Members, NodeId, PeerMsg, SyncItem, PARTITIONS, SLICES,
};
use crate::view::Publish;

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
    /// Replicas removed because their owner stopped confirming them.
    pub replicas_expired: AtomicU64,
    /// Replicas removed because their owner no longer has them.
    pub replicas_pruned: AtomicU64,
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
    sent_ms: u64,
}

/// Replication towards one peer, for one partition.
#[derive(Default)]
struct LinkPart {
    /// Changes not sent yet, merged: a key is here once however often it changed.
    dirty: IndexSet<SyncKey, StableHasher>,
    inflight: BTreeMap<u64, Inflight>,
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
    /// Heartbeat clients this node removed while it held them as their owner: the revision
    /// of the removal and when (mono ms), kept for a lease. A peer that was DOWN meanwhile
    /// still gets the `Drop` when it is back, even if the client is its own again by then.
    owned_removals: HashMap<ClientId, (u64, u64), StableHasher>,
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
            owned_removals: HashMap::default(),
        }));
        self.set_timer(now.mono_ms + TICK_MS, Timer::DistroTick);
        self.set_timer(verify_at, Timer::Verify);
    }

    /// Whether the startup snapshot is loaded (always true when standalone).
    pub fn is_loaded(&self) -> bool {
        self.distro.as_ref().is_none_or(|d| d.loaded)
    }

    /// The membership as this node sees it changed: peers came, went, or changed health.
    pub fn handle_members(&mut self, now: super::Now, members: Members) {
        self.now = now;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if d.members == members {
            return;
        }
        let old = std::mem::replace(&mut d.members, members);
        let now_ms = now.mono_ms;
        for (n, h) in &old.peers {
            let health_now = d
                .members
                .peers
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, h)| *h);
            if *h != Health::Down && health_now.is_none_or(|h| h == Health::Down) {
                d.down_since.insert(n.clone(), now_ms);
            }
        }
        // Links follow the member list (health does not remove a link: a DOWN peer keeps
        // its queue, bounded, until it is back or removed).
        let peers: BTreeSet<NodeId> = d.members.peers.iter().map(|(n, _)| n.clone()).collect();
        d.links.retain(|n, _| peers.contains(n));
        for p in &peers {
            d.links.entry(p.clone()).or_default();
        }
        let down: BTreeSet<&NodeId> = d
            .members
            .peers
            .iter()
            .filter(|(_, h)| *h == Health::Down)
            .map(|(n, _)| n)
            .collect();
        d.serving
            .retain(|s| peers.contains(&s.to) && !down.contains(&s.to));
        let responsibility_changed =
            old.candidates() != d.members.candidates() || old.me != d.members.me;
        if responsibility_changed {
            self.rebalance_heartbeat_clients(Some(&old));
        }
        self.drive_load();
        self.arm_sync_timer();
        self.flush(now);
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
            PeerMsg::SyncAck { seq } => {
                let done = self
                    .link_part(&from, partition)
                    .and_then(|part| part.inflight.remove(&seq));
                if let Some(done) = done {
                    self.complete_handovers(&from, &done.keys);
                }
                self.pump(&from);
            }
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
            PeerMsg::Resync { clients } => {
                let stats = self.stats.clone();
                bump(&stats.distro.resyncs, clients.len() as u64);
                for client in clients {
                    if partition_of(&client) == partition {
                        // The peer's copy disagrees with ours and ours is authoritative:
                        // re-issue it as the newest state, so that it replaces the copy even
                        // if the copy carries revisions from a clock that ran ahead.
                        // Not a client unheard of since this process stopped running: the
                        // peer held it meanwhile and may have seen it die, and its `Drop`
                        // (stamped then) must still beat our copy when it arrives after
                        // this request. Our state goes out with its old revisions; the
                        // client's next beat makes it ours again (found by the chaos
                        // harness's pause scenario: the Resync overtook the Drop, and the
                        // dead instance came back on every peer for 5 s).
                        if !self.pause_stale.contains(&client) {
                            self.restamp_native(&client);
                        }
                        self.mark_for(
                            &from,
                            SyncKey {
                                client,
                                service: None,
                            },
                        );
                    }
                }
                self.pump(&from);
            }
            PeerMsg::SnapshotRequest { id } => {
                let now_ms = self.now.mono_ms;
                let mut pending: Vec<ClientId> = self
                    .clients
                    .iter()
                    .filter(|(c, state)| {
                        partition_of(c) == partition && !state.publishes.is_empty()
                    })
                    .map(|(c, _)| c.clone())
                    .collect();
                pending.reverse();
                if let Some(d) = self.distro.as_mut() {
                    // The snapshot carries the current state of every client we hold, so
                    // pending changes of those clients would reach the peer twice (with a
                    // joining node, every change made while it was away). Removals stay:
                    // the snapshot does not list what is gone, and so do hand-overs: they
                    // complete when the peer acknowledges a sync of them.
                    if let Some(part) = d.links.get_mut(&from).and_then(|l| l.get_mut(&partition)) {
                        let (clients, handovers) = (&self.clients, &d.handovers);
                        part.dirty.retain(|k| {
                            !clients.contains_key(&k.client) || handovers.contains_key(&k.client)
                        });
                    }
                    d.serving
                        .retain(|s| !(s.to == from && s.partition == partition));
                    d.serving.push(SnapshotServe {
                        to: from,
                        partition,
                        id,
                        pending,
                        next_seq: 0,
                        acked: 0,
                        finished: false,
                        last_ms: now_ms,
                    });
                }
                self.serve_snapshots();
            }
            PeerMsg::SnapshotAck { id, seq } => {
                let now_ms = self.now.mono_ms;
                if let Some(d) = self.distro.as_mut() {
                    if let Some(s) = d
                        .serving
                        .iter_mut()
                        .find(|s| s.to == from && s.partition == partition && s.id == id)
                    {
                        s.acked = s.acked.max(seq + 1);
                        s.last_ms = now_ms;
                    }
                }
                self.serve_snapshots();
            }
            PeerMsg::SnapshotChunk {
                id,
                seq,
                clients,
                done,
            } => self.on_snapshot_chunk(from, partition, id, seq, clients, done),
        }
    }

    /// Calls `f` for every publish this shard holds: client, service, revision, and the
    /// node responsible for the client (`None`: this node). For introspection and the
    /// simulator's invariant checks.
    pub fn visit_entries(
        &self,
        mut f: impl FnMut(&ClientId, &ServiceKey, u64, Option<(&NodeId, u64)>),
    ) {
        for (id, c) in &self.clients {
            let origin = c.replica.as_ref().map(|i| (&i.origin, i.epoch));
            for e in &c.publishes {
                f(id, &e.service, e.rev, origin);
            }
        }
    }

    /// A one-line description of what this shard holds about `client` (owner, revisions,
    /// removal memory); for logs and the simulator's reports.
    pub fn describe_client(&self, client: &ClientId) -> String {
        let dropped = self
            .distro
            .as_ref()
            .and_then(|d| d.dropped.get(client).copied());
        match self.clients.get(client) {
            None => format!("absent (removal memory {dropped:?})"),
            Some(c) => format!(
                "{} rev {} entries {:?} floor {:?} tombstones {:?}",
                c.replica
                    .as_ref()
                    .map_or_else(|| "ours".to_string(), |i| format!("copy of {}", i.origin)),
                c.revision,
                c.publishes
                    .iter()
                    .map(|e| (e.service.name().to_string(), e.rev))
                    .collect::<Vec<_>>(),
                c.replica.as_ref().map(|i| i.floor),
                c.replica.as_ref().map(|i| i.tombstones.len()),
            ),
        }
    }

    /// While the startup snapshot loads: a one-line account of the partitions still
    /// loading (for the log of a node that takes long to report UP).
    pub fn load_status(&self) -> Option<String> {
        let d = self.distro.as_ref()?;
        if d.loaded {
            return None;
        }
        let now = self.now.mono_ms;
        let pending: Vec<String> = d
            .loads
            .iter()
            .filter(|(_, l)| !l.done)
            .map(|(p, l)| {
                let heard = l
                    .source
                    .as_ref()
                    .and_then(|s| d.load_heard.get(s))
                    .map_or("never".to_string(), |t| {
                        format!("{} ms ago", now.saturating_sub(*t))
                    });
                format!(
                    "p{p} from {} chunk {} (progress {} ms ago, source heard {heard})",
                    l.source.as_ref().map_or("-".to_string(), |s| s.to_string()),
                    l.expect_seq,
                    now.saturating_sub(l.last_progress_ms),
                )
            })
            .collect();
        Some(format!(
            "{} of {} partitions loading: {}",
            pending.len(),
            d.loads.len(),
            pending
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }

    /// Changes of our clients that a peer not DOWN has not acknowledged yet: keys waiting in
    /// the merge window plus keys of batches in flight. A node that shuts down waits for
    /// this to reach zero (see [`Shard::handle_shutdown`]); DOWN peers do not count, they
    /// are repaired by verify when they come back.
    pub fn unsynced_changes(&self) -> usize {
        self.unsynced_by_peer().iter().map(|(_, n)| n).sum()
    }

    /// [`Shard::unsynced_changes`] per peer (peers with none left out), for logs.
    pub fn unsynced_by_peer(&self) -> Vec<(NodeId, usize)> {
        let Some(d) = self.distro.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<(NodeId, usize)> = d
            .links
            .iter()
            .filter(|(peer, _)| self.peer_health(peer) != Health::Down)
            .map(|(peer, parts)| {
                let n = parts
                    .values()
                    .map(|p| {
                        p.dirty.len() + p.inflight.values().map(|b| b.keys.len()).sum::<usize>()
                    })
                    .sum();
                (peer.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }

    /// The node is shutting down: send every pending change now instead of at the end of
    /// the merge window. A change acknowledged by its client but still in the window would
    /// otherwise die with the process — found by the chaos harness: a deregistration
    /// answered just before SIGTERM reached one peer and not the other, the restarted node
    /// loaded the stale copy from that peer and the instance came back everywhere until its
    /// heartbeat timeout.
    pub fn handle_shutdown(&mut self, now: super::Now) {
        self.now = now;
        if self.distro.is_some() {
            self.on_sync_timer();
        }
    }

    /// The largest number of unacknowledged sync batches towards any peer (over this
    /// shard's partitions).
    pub fn max_inflight_batches(&self) -> usize {
        self.distro.as_ref().map_or(0, |d| {
            d.links
                .values()
                .map(|l| l.values().map(|p| p.inflight.len()).sum())
                .max()
                .unwrap_or(0)
        })
    }

    // ----- local changes ---------------------------------------------------------------

    /// Digest bookkeeping of one publish of a client held as `origin` (`None`: ours).
    pub(super) fn digest_entry(
        &mut self,
        client: &ClientId,
        origin: Option<&NodeId>,
        rev: u64,
        add: bool,
    ) {
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let digest = d
            .digests
            .entry((origin.cloned(), partition_of(client)))
            .or_insert_with(Digest::new);
        let slot = &mut digest.slices[slice_of(client) as usize];
        let value = entry_digest(client_seed(client), rev);
        *slot = if add {
            slot.wrapping_add(value)
        } else {
            slot.wrapping_sub(value)
        };
    }

    /// A publish of a client this node is responsible for changed (`old`/`new`: its
    /// revision before and after; `None` = absent).
    pub(super) fn native_entry_changed(
        &mut self,
        client: &ClientId,
        service: &ServiceKey,
        old: Option<u64>,
        new: Option<u64>,
    ) {
        if self.distro.is_none() {
            return;
        }
        if let Some(rev) = old {
            self.digest_entry(client, None, rev, false);
        }
        if let Some(rev) = new {
            self.digest_entry(client, None, rev, true);
        }
        self.note_native_change(client, Some(service.clone()));
    }

    /// Queues a change of one of our clients for every peer (`service: None` = all of it).
    pub(super) fn note_native_change(&mut self, client: &ClientId, service: Option<ServiceKey>) {
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        let peers: Vec<NodeId> = d.links.keys().cloned().collect();
        for peer in peers {
            self.mark_for(
                &peer,
                SyncKey {
                    client: client.clone(),
                    service: service.clone(),
                },
            );
        }
        self.arm_sync_timer();
    }

    fn mark_for(&mut self, peer: &NodeId, key: SyncKey) {
        let partition = partition_of(&key.client);
        let stats = self.stats.clone();
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let limit = d.cfg.max_pending_keys;
        let Some(link) = d.links.get_mut(peer) else {
            return;
        };
        let part = link.entry(partition).or_default();
        if part.dirty.len() >= limit {
            // A peer away this long gets repaired by verify when it is back; the queue
            // must not grow with everything that changed meanwhile (bounded memory).
            part.dirty.clear();
            bump(&stats.distro.queue_overflows, 1);
        }
        part.dirty.insert(key);
    }

    fn arm_sync_timer(&mut self) {
        let at = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if !d.sync_timer_set {
            d.sync_timer_set = true;
            let at = at + d.cfg.sync_delay_ms;
            self.set_timer(at, Timer::Sync);
        }
    }

    pub(super) fn on_sync_timer(&mut self) {
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        d.sync_timer_set = false;
        let work: Vec<NodeId> = d
            .links
            .iter()
            .filter(|(_, parts)| parts.values().any(|p| !p.dirty.is_empty()))
            .map(|(n, _)| n.clone())
            .collect();
        for peer in work {
            self.pump(&peer);
        }
    }

    fn peer_health(&self, peer: &NodeId) -> Health {
        self.distro
            .as_ref()
            .and_then(|d| d.members.peers.iter().find(|(n, _)| n == peer))
            .map_or(Health::Down, |(_, h)| *h)
    }

    fn link_part(&mut self, peer: &NodeId, partition: u16) -> Option<&mut LinkPart> {
        self.distro
            .as_mut()?
            .links
            .get_mut(peer)
            .map(|l| l.entry(partition).or_default())
    }

    /// Sends what is pending for `peer`, as far as the in-flight window allows (I5: bounded
    /// in-flight data per peer), one batch per partition in turn.
    ///
    /// Why one window per peer rather than per partition: everything towards a peer shares
    /// one ordered QUIC stream, and a window of 8 batches for each of 64 partitions let a
    /// backlog of 262,144 changes sit in that stream, ahead of the snapshot chunks a joining
    /// peer waits for (a join took 17.8 s instead of 3.5 s).
    fn pump(&mut self, peer: &NodeId) {
        if self.peer_health(peer) == Health::Down {
            return;
        }
        let now_ms = self.now.mono_ms;
        let (max_inflight, max_items) = match self.distro.as_ref() {
            Some(d) => (d.cfg.max_inflight_batches, d.cfg.max_batch_items),
            None => return,
        };
        loop {
            let Some(d) = self.distro.as_mut() else {
                return;
            };
            let Some(parts) = d.links.get_mut(peer) else {
                return;
            };
            if parts.values().map(|p| p.inflight.len()).sum::<usize>() >= max_inflight {
                return;
            }
            // Round robin: the partition after the one that sent last goes first.
            let after = d.pump_cursor.get(peer).copied();
            let next = after
                .and_then(|a| {
                    parts
                        .range(a + 1..)
                        .find(|(_, p)| !p.dirty.is_empty())
                        .map(|(k, _)| *k)
                })
                .or_else(|| {
                    parts
                        .iter()
                        .find(|(_, p)| !p.dirty.is_empty())
                        .map(|(k, _)| *k)
                });
            let Some(partition) = next else {
                return;
            };
            d.pump_cursor.insert(peer.clone(), partition);
            let Some(part) = parts.get_mut(&partition) else {
                return;
            };
            let take = part.dirty.len().min(max_items);
            let keys: Vec<SyncKey> = part.dirty.drain(..take).collect();
            let seq = part.next_seq;
            part.next_seq += 1;
            let items: Vec<SyncItem> = keys.iter().filter_map(|k| self.sync_item(k)).collect();
            let Some(part) = self.link_part(peer, partition) else {
                return;
            };
            part.inflight.insert(
                seq,
                Inflight {
                    keys,
                    sent_ms: now_ms,
                },
            );
            bump(&self.stats.distro.sync_batches, 1);
            bump(&self.stats.distro.sync_items, items.len() as u64);
            self.send_peer(peer.clone(), partition, PeerMsg::Sync { seq, items });
        }
    }

    /// The current state behind a pending key: always the newest, never what it was when
    /// the change was queued (a retry sends the current state, I3).
    fn sync_item(&self, key: &SyncKey) -> Option<SyncItem> {
        let Some(client) = self.clients.get(&key.client) else {
            // Gone. Only its owner announces that: a heartbeat client we handed over and then
            // lost as a copy is not ours to delete everywhere. One we removed as its owner
            // is, even if it belongs to another member by now: that member may have been
            // away (paused, partitioned) while we held the client, and without our `Drop`
            // its stale copy would bring the dead instance back (the chaos harness's pause
            // scenario: the resumed node listed the client, and the peer that had expired
            // it took it back).
            if key.client.is_heartbeat() && !self.members_is_mine(&key.client) {
                let removed = self
                    .distro
                    .as_ref()
                    .and_then(|d| d.owned_removals.get(&key.client));
                return removed.map(|(rev, _)| SyncItem::Drop {
                    client: key.client.clone(),
                    rev: *rev,
                });
            }
            return Some(SyncItem::Drop {
                client: key.client.clone(),
                rev: self.clock,
            });
        };
        if client.replica.is_some() {
            // No longer ours: its new owner replicates it.
            return None;
        }
        match &key.service {
            None => Some(SyncItem::Full(Self::client_state(&key.client, client))),
            Some(service) => match client.entry(service) {
                Ok(pos) => {
                    let e = &client.publishes[pos];
                    Some(SyncItem::Upsert {
                        client: key.client.clone(),
                        entry: EntryState {
                            service: e.service.clone(),
                            rev: e.rev,
                            publish: e.publish.clone(),
                        },
                    })
                }
                Err(_) => Some(SyncItem::Remove {
                    client: key.client.clone(),
                    service: service.clone(),
                    rev: self.clock,
                }),
            },
        }
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

    // ----- applying a peer's changes ---------------------------------------------------

    fn observe_rev(&mut self, rev: u64) {
        self.clock = self.clock.max(rev);
    }

    /// Makes `client` a replica of `origin` if `origin` may speak for it. `false`: it is
    /// ours, or held from another owner that `origin` does not replace, or it was removed
    /// at a revision at or above `rev` (I2).
    ///
    /// Who may speak for a client: a connection client has one owner for its whole life
    /// (the node holding the connection), so only that node. A heartbeat client moves with
    /// membership; its copy follows the node this node's view makes responsible, so two
    /// nodes that both believe they own it (views not yet agreeing) cannot make the copies
    /// flap between them.
    fn prepare_replica(&mut self, origin: &NodeId, client: &ClientId, rev: u64) -> bool {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_ref() else {
            return false;
        };
        let responsible = d.members.responsible_for(client).cloned();
        let takes_over = client.is_heartbeat() && responsible.as_ref() == Some(origin);
        match self.clients.get(client) {
            None => {
                let removed = d.dropped.get(client);
                if removed.is_some_and(|(min, _)| rev < *min) {
                    bump(&self.stats.distro.stale, 1);
                    return false;
                }
                // A heartbeat client removed here within a lease comes back only through
                // the member our view makes responsible, while we can hear it. Another node
                // that took it over from a stale copy (it declared the owner DOWN, we did
                // not) restamps it with fresh revisions, which would pass the memory: a dead
                // instance would come back for a whole heartbeat timeout. (A SUSPICIOUS
                // owner's stand-ins are heard: their copies are the live ones.)
                let authority_heard = responsible.as_ref().is_some_and(|r| {
                    d.members.me.as_ref() == Some(r)
                        || d.members
                            .peers
                            .iter()
                            .any(|(n, h)| n == r && *h == Health::Up)
                });
                if client.is_heartbeat() && removed.is_some() && !takes_over && authority_heard {
                    bump(&self.stats.distro.stale, 1);
                    return false;
                }
                self.stats.count_client(client, 1);
                self.stats.replica_clients.fetch_add(1, Ordering::Relaxed);
                let mut c = Client::new();
                let epoch = next_rev(&mut self.clock, self.now.unix_ms);
                c.replica = Some(ReplicaInfo::new(origin.clone(), now_ms, epoch));
                self.clients.insert(client.clone(), c);
                true
            }
            Some(c) => match &c.replica {
                None if takes_over => {
                    // Our view says the sender is responsible now: hand the client over.
                    self.set_origin(client, Some(origin.clone()));
                    true
                }
                None => false,
                Some(info) if &info.origin == origin => {
                    if info.unconfirmed {
                        self.confirm(client);
                    }
                    true
                }
                Some(_) if takes_over => {
                    self.set_origin(client, Some(origin.clone()));
                    true
                }
                Some(_) => false,
            },
        }
    }

    /// Moves a client between "ours" (`None`) and a replica of `origin`, keeping its data.
    ///
    /// Taking a client over restamps its publishes with fresh revisions: the new owner's
    /// state is then newer than any copy, so peers take it whatever they held. Handing a
    /// client to another owner sets its revisions to 0: whatever the new owner says wins,
    /// and if it has nothing, verify prunes the copy (a heartbeat re-registers a live one).
    fn set_origin(&mut self, client: &ClientId, origin: Option<NodeId>) {
        let now_ms = self.now.mono_ms;
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let old = c.replica.as_ref().map(|i| i.origin.clone());
        let mut changes: SmallVec<[(u64, u64); 4]> = SmallVec::new();
        let delta = i64::from(origin.is_some()) - i64::from(old.is_some());
        self.stats
            .replica_clients
            .fetch_add(delta, Ordering::Relaxed);
        match &origin {
            None => {
                c.replica = None;
                for e in c.publishes.iter_mut() {
                    // A client we take over gets a full beat period before it can expire.
                    e.last_beat_ms = now_ms;
                    let rev = next_rev(&mut self.clock, self.now.unix_ms);
                    changes.push((e.rev, rev));
                    e.rev = rev;
                }
                c.revision = self.clock;
            }
            Some(o) => {
                let epoch = next_rev(&mut self.clock, self.now.unix_ms);
                c.replica = Some(ReplicaInfo::new(o.clone(), now_ms, epoch));
                for e in c.publishes.iter_mut() {
                    changes.push((e.rev, 0));
                    e.rev = 0;
                }
            }
        }
        for (from, to) in changes {
            self.digest_entry(client, old.as_ref(), from, false);
            self.digest_entry(client, origin.as_ref(), to, true);
        }
    }

    /// `peer` acknowledged a batch: clients handed to it are its now.
    fn complete_handovers(&mut self, peer: &NodeId, keys: &[SyncKey]) {
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if d.handovers.is_empty() {
            return;
        }
        let mut done = Vec::new();
        for k in keys {
            if k.service.is_none() && d.handovers.get(&k.client) == Some(peer) {
                d.handovers.remove(&k.client);
                done.push(k.client.clone());
            }
        }
        for client in done {
            let still_native = self
                .clients
                .get(&client)
                .is_some_and(|c| c.replica.is_none());
            if still_native && !self.members_is_mine(&client) {
                self.set_origin(&client, Some(peer.clone()));
                if let Some(info) = self
                    .clients
                    .get_mut(&client)
                    .and_then(|c| c.replica.as_mut())
                {
                    info.unconfirmed = true;
                }
            }
        }
    }

    /// Gives every publish of one of our clients a fresh revision.
    fn restamp_native(&mut self, client: &ClientId) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        if c.replica.is_some() {
            return;
        }
        let mut changes: SmallVec<[(u64, u64); 4]> = SmallVec::new();
        for e in c.publishes.iter_mut() {
            let rev = next_rev(&mut self.clock, self.now.unix_ms);
            changes.push((e.rev, rev));
            e.rev = rev;
        }
        c.revision = self.clock;
        for (from, to) in changes {
            self.digest_entry(client, None, from, false);
            self.digest_entry(client, None, to, true);
        }
        // Every peer's copy is now older than ours, not only the asker's.
        self.note_native_change(client, None);
    }

    /// A heartbeat client we held as its own is gone from this node (expired, deregistered,
    /// or dropped by a peer after our pause): remembered for a lease, see `sync_item`.
    pub(super) fn note_owned_removal(&mut self, client: &ClientId) {
        if !client.is_heartbeat() {
            return;
        }
        let (rev, now_ms) = (self.clock, self.now.mono_ms);
        if let Some(d) = self.distro.as_mut() {
            d.owned_removals.insert(client.clone(), (rev, now_ms));
        }
    }

    /// A deregistration of a heartbeat client this node does not hold: it is still loading
    /// its snapshot, or the client's data has not reached it. No copy older than this may
    /// bring the client back (the snapshot's, a late sync), and if the client is ours,
    /// peers drop theirs.
    pub(super) fn deregistered_absent(&mut self, client: &ClientId) {
        if !client.is_heartbeat() || self.distro.is_none() {
            return;
        }
        let rev = next_rev(&mut self.clock, self.now.unix_ms);
        self.remember_removal(client, rev, self.now.mono_ms);
        if self.members_is_mine(client) {
            self.note_native_change(client, None);
        }
    }

    /// Takes over a client held as a replica (it is now ours) and tells every peer.
    pub(super) fn adopt_if_replica(&mut self, client: &ClientId) {
        if self.clients.get(client).is_none_or(|c| c.replica.is_none()) {
            return;
        }
        self.set_origin(client, None);
        self.note_native_change(client, None);
    }

    /// The owner of a copy we handed over showed that it has the client.
    fn confirm(&mut self, client: &ClientId) {
        if let Some(info) = self
            .clients
            .get_mut(client)
            .and_then(|c| c.replica.as_mut())
        {
            info.unconfirmed = false;
        }
    }

    fn renew(&mut self, client: &ClientId) {
        let now_ms = self.now.mono_ms;
        if let Some(info) = self
            .clients
            .get_mut(client)
            .and_then(|c| c.replica.as_mut())
        {
            info.renewed_ms = now_ms;
        }
    }

    /// Applies one publish of a replica if it is newer than what is held (I2).
    fn replica_put(&mut self, origin: &NodeId, client: &ClientId, entry: EntryState) {
        self.observe_rev(entry.rev);
        let service = self.interner.service(entry.service);
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let Some(info) = c.replica.as_ref() else {
            return;
        };
        let pos = c.entry(&service);
        let held = match pos {
            Ok(p) => c.publishes[p].rev,
            Err(_) => info.tombstone(&service).max(info.floor),
        };
        if entry.rev <= held {
            bump(&self.stats.distro.stale, 1);
            return;
        }
        let publish: Publish = entry
            .publish
            .iter()
            .map(|i| {
                let mut i = i.clone();
                i.cluster = self.interner.intern(&i.cluster);
                i
            })
            .collect::<Vec<_>>()
            .into();
        let old = match pos {
            Ok(p) => {
                let e = &mut c.publishes[p];
                e.publish = publish.clone();
                Some(std::mem::replace(&mut e.rev, entry.rev))
            }
            Err(p) => {
                c.publishes.insert(
                    p,
                    PublishEntry {
                        service: service.clone(),
                        publish: publish.clone(),
                        last_beat_ms: self.now.mono_ms,
                        rev: entry.rev,
                    },
                );
                None
            }
        };
        c.revision = c.revision.max(entry.rev);
        if let Some(info) = c.replica.as_mut() {
            info.tombstones.retain(|(s, _)| s != &service);
        }
        if let Some(rev) = old {
            self.digest_entry(client, Some(origin), rev, false);
        }
        self.digest_entry(client, Some(origin), entry.rev, true);
        bump(&self.stats.distro.applied, 1);
        self.send_service_op(
            service,
            ServiceOp::Upsert {
                client: client.clone(),
                publish,
            },
        );
    }

    /// Removes one publish of a replica if the removal is newer than it (I2).
    fn replica_remove(
        &mut self,
        origin: &NodeId,
        client: &ClientId,
        service: ServiceKey,
        rev: u64,
    ) {
        self.observe_rev(rev);
        let service = self.interner.service(service);
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let Some(info) = c.replica.as_mut() else {
            return;
        };
        if rev > info.floor {
            info.set_tombstone(&service, rev);
        }
        let Ok(pos) = c.entry(&service) else {
            return;
        };
        let old = c.publishes[pos].rev;
        if old >= rev {
            bump(&self.stats.distro.stale, 1);
            return;
        }
        c.publishes.remove(pos);
        c.revision = c.revision.max(rev);
        self.digest_entry(client, Some(origin), old, false);
        bump(&self.stats.distro.applied, 1);
        self.send_service_op(
            service,
            ServiceOp::Remove {
                client: client.clone(),
            },
        );
    }

    /// Drops a replica with nothing left. `whole_removal`: the owner removed the client
    /// itself at that revision (a `Drop`), so nothing at or below it may bring it back;
    /// otherwise only what is older than the removals it saw is kept out.
    fn drop_replica_if_empty(&mut self, client: &ClientId, whole_removal: Option<u64>) {
        let now_ms = self.now.mono_ms;
        let Some(c) = self.clients.get(client) else {
            return;
        };
        let Some(info) = c.replica.as_ref() else {
            return;
        };
        if !c.publishes.is_empty() {
            return;
        }
        let newest_removal = info.tombstones.iter().map(|(_, r)| *r).max().unwrap_or(0);
        let min_rev = match whole_removal {
            Some(rev) => rev + 1,
            None => newest_removal,
        };
        self.clients.swap_remove(client);
        self.stats.count_client(client, -1);
        self.stats.replica_clients.fetch_sub(1, Ordering::Relaxed);
        self.remember_removal(client, min_rev, now_ms);
    }

    fn remember_removal(&mut self, client: &ClientId, min_rev: u64, now_ms: u64) {
        if let Some(d) = self.distro.as_mut() {
            let e = d.dropped.entry(client.clone()).or_insert((0, now_ms));
            e.0 = e.0.max(min_rev);
            e.1 = now_ms;
        }
    }

    /// Removes a replica and all it publishes (expiry, or its owner no longer has it).
    fn remove_replica(&mut self, client: &ClientId) {
        let Some(c) = self.clients.swap_remove(client) else {
            return;
        };
        self.stats.count_client(client, -1);
        if c.replica.is_some() {
            self.stats.replica_clients.fetch_sub(1, Ordering::Relaxed);
        }
        let origin = c.replica.as_ref().map(|i| i.origin.clone());
        // An older copy (a late message, another node's snapshot) must not bring the client
        // back (I2); its owner's current state may (this removal was our decision, not a
        // change of the owner).
        let newest = c.publishes.iter().map(|e| e.rev).max().unwrap_or(0);
        self.remember_removal(client, newest, self.now.mono_ms);
        for e in c.publishes {
            self.digest_entry(client, origin.as_ref(), e.rev, false);
            self.send_service_op(
                e.service,
                ServiceOp::Remove {
                    client: client.clone(),
                },
            );
        }
    }

    fn apply_sync_item(&mut self, from: &NodeId, item: SyncItem) {
        match item {
            SyncItem::Upsert { client, entry } => {
                if self.prepare_replica(from, &client, entry.rev) {
                    self.replica_put(from, &client, entry);
                    self.renew(&client);
                    self.drop_replica_if_empty(&client, None);
                } else {
                    self.note_claim(from, &client);
                }
            }
            SyncItem::Remove {
                client,
                service,
                rev,
            } => {
                if self.clients.get(&client).is_some() && self.prepare_replica(from, &client, rev) {
                    self.replica_remove(from, &client, service, rev);
                    self.drop_replica_if_empty(&client, None);
                }
            }
            SyncItem::Full(state) => {
                let client = state.client.clone();
                if !self.apply_full(from, state) {
                    self.note_claim(from, &client);
                }
            }
            SyncItem::Drop { client, rev } => {
                self.observe_rev(rev);
                self.withdraw_claim(from, &client);
                if self.accept_drop_after_pause(&client, rev) {
                    bump(&self.stats.distro.drops_after_pause, 1);
                } else if !self.clients.contains_key(&client) {
                    self.remember_removal(&client, rev + 1, self.now.mono_ms);
                } else if self.prepare_replica(from, &client, rev)
                    && !self.follow_claimant(from, &client)
                {
                    self.replica_drop(from, &client, rev);
                }
            }
        }
    }

    /// Notes that `from` holds heartbeat client `client` as its own while we follow another
    /// node for it.
    fn note_claim(&mut self, from: &NodeId, client: &ClientId) {
        if !client.is_heartbeat() {
            return;
        }
        let now_ms = self.now.mono_ms;
        let follows_other = self
            .clients
            .get(client)
            .and_then(|c| c.replica.as_ref())
            .is_some_and(|i| &i.origin != from);
        if let (true, Some(d)) = (follows_other, self.distro.as_mut()) {
            // Bounded by the heartbeat clients we hold; stale ones go with the leases.
            d.claims.insert(client.clone(), (from.clone(), now_ms));
        }
    }

    fn withdraw_claim(&mut self, from: &NodeId, client: &ClientId) {
        if let Some(d) = self.distro.as_mut() {
            if d.claims.get(client).is_some_and(|(n, _)| n == from) {
                d.claims.remove(client);
            }
        }
    }

    /// The owner we follow (`from`) dropped heartbeat client `client`; if another reachable
    /// node claimed it within a lease, follow that node instead (its data stays visible) and
    /// ask it for the client's state. Returns whether it did.
    fn follow_claimant(&mut self, from: &NodeId, client: &ClientId) -> bool {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return false;
        };
        let Some((claimant, at)) = d.claims.get(client).cloned() else {
            return false;
        };
        let reachable = d
            .members
            .peers
            .iter()
            .any(|(n, h)| n == &claimant && *h != Health::Down);
        if &claimant == from || !reachable || now_ms.saturating_sub(at) > d.cfg.replica_lease_ms {
            d.claims.remove(client);
            return false;
        }
        d.claims.remove(client);
        bump(&self.stats.distro.claims_followed, 1);
        self.set_origin(client, Some(claimant.clone()));
        if let Some(info) = self
            .clients
            .get_mut(client)
            .and_then(|c| c.replica.as_mut())
        {
            info.by_claim = true;
        }
        self.send_peer(
            claimant,
            partition_of(client),
            PeerMsg::Resync {
                clients: vec![client.clone()],
            },
        );
        true
    }

    /// A beat of heartbeat client `client` passed through this node towards the member our
    /// view makes responsible. The client is alive: renew our copy (its owner may be one we
    /// cannot hear, e.g. one-way loss), and relay the beat to a reachable node that claimed
    /// the client within a lease against our view — it believes it owns the client and would
    /// otherwise expire it for lack of beats, deleting a live instance there.
    pub(super) fn on_beat_relayed(&mut self, client: ClientId, op: ClientOp, to_claimants: bool) {
        if !client.is_heartbeat() || !matches!(op, ClientOp::Beat { .. }) {
            return;
        }
        match self.clients.get(&client) {
            None => return,
            Some(c) if c.replica.is_some() => self.renew(&client),
            // Ours (in our view or not): the beat keeps it alive here. Applied as a plain
            // beat, it cannot make us the owner of anything.
            // It never re-creates an instance: the responsible node decides that.
            Some(_) => {
                let mut beat = op.clone();
                if let ClientOp::Beat { reregister, .. } = &mut beat {
                    *reregister = None;
                }
                let _ = self.apply_client_op(client.clone(), beat);
            }
        }
        if !to_claimants {
            return;
        }
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        let Some((claimant, at)) = d.claims.get(&client) else {
            return;
        };
        let responsible = d.members.responsible_for(&client);
        let up = d
            .members
            .peers
            .iter()
            .any(|(n, h)| n == claimant && *h == Health::Up);
        if up
            && responsible != Some(claimant)
            && now_ms.saturating_sub(*at) <= d.cfg.replica_lease_ms
        {
            bump(&self.stats.distro.beats_relayed_to_claimants, 1);
            self.out.push_back(Command::RelayBeat {
                to: claimant.clone(),
                client,
                op,
            });
        }
    }

    /// The member view of a clustered shard (`None` standalone).
    pub(super) fn distro_members(&self) -> Option<&Members> {
        self.distro.as_ref().map(|d| &d.members)
    }

    fn members_is_mine(&self, client: &ClientId) -> bool {
        self.distro
            .as_ref()
            .is_some_and(|d| d.members.is_mine(client))
    }

    /// Removes every publish older than `rev`, then the client if nothing is left.
    fn replica_drop(&mut self, from: &NodeId, client: &ClientId, rev: u64) {
        let services: Vec<(ServiceKey, u64)> = self
            .clients
            .get(client)
            .map(|c| {
                c.publishes
                    .iter()
                    .map(|e| (e.service.clone(), e.rev))
                    .collect()
            })
            .unwrap_or_default();
        for (service, r) in services {
            if r < rev {
                self.replica_remove(from, client, service, rev);
            }
        }
        self.drop_replica_if_empty(client, Some(rev));
    }

    /// Applies a client's full state: newer publishes replace, publishes it lacks that are
    /// older than the state go, newer ones stay (a later change already applied, I2).
    /// Applies a client's full state from `origin`; false when `origin` is not the node we
    /// follow for it.
    fn apply_full(&mut self, origin: &NodeId, state: ClientState) -> bool {
        self.observe_rev(state.rev);
        if !self.prepare_replica(origin, &state.client, state.rev) {
            return false;
        }
        let client = state.client.clone();
        self.apply_full_state(origin, state);
        // A heartbeat client this node's view makes ours, handed to us by its previous
        // holder: take it over now, so it has an owner that renews and checks it.
        if client.is_heartbeat()
            && self.members_is_mine(&client)
            && self.clients.contains_key(&client)
        {
            self.adopt_if_replica(&client);
        }
        true
    }

    fn apply_full_state(&mut self, origin: &NodeId, state: ClientState) {
        let client = state.client;
        let listed: HashSet<ServiceKey> = state.entries.iter().map(|e| e.service.clone()).collect();
        let stale: Vec<(ServiceKey, u64)> = self
            .clients
            .get(&client)
            .map(|c| {
                c.publishes
                    .iter()
                    .filter(|e| !listed.contains(&e.service) && e.rev < state.rev)
                    .map(|e| (e.service.clone(), e.rev))
                    .collect()
            })
            .unwrap_or_default();
        for (service, _) in stale {
            self.replica_remove(origin, &client, service, state.rev);
        }
        for entry in state.entries {
            self.replica_put(origin, &client, entry);
        }
        if let Some(info) = self
            .clients
            .get_mut(&client)
            .and_then(|c| c.replica.as_mut())
        {
            info.floor = info.floor.max(state.rev);
            let floor = info.floor;
            info.tombstones.retain(|(_, r)| *r > floor);
        }
        self.renew(&client);
        self.drop_replica_if_empty(&client, None);
    }

    // ----- membership ------------------------------------------------------------------

    /// After a membership change (from `old`): heartbeat clients we hold but are no longer
    /// responsible for become replicas of their new owner; replicas we are now responsible
    /// for become ours and are announced to every peer (their revision grows, so peers
    /// switch owner).
    fn rebalance_heartbeat_clients(&mut self, old: Option<&Members>) {
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        let mut demote: Vec<(ClientId, NodeId)> = Vec::new();
        let mut adopt: Vec<ClientId> = Vec::new();
        let mut now_mine: Vec<ClientId> = Vec::new();
        for (id, c) in &self.clients {
            if !id.is_heartbeat() {
                continue;
            }
            let owner = d.members.responsible_for(id).cloned();
            let mine = owner.is_none() || owner == d.members.me;
            match (&c.replica, mine) {
                (None, true) if old.is_some_and(|o| !o.is_mine(id)) => now_mine.push(id.clone()),
                (None, false) => {
                    // Handed over only to a member that answers: a SUSPICIOUS owner could
                    // not take it, and the client would be nobody's.
                    let up = owner.as_ref().is_some_and(|o| {
                        d.members
                            .peers
                            .iter()
                            .any(|(n, h)| n == o && *h == Health::Up)
                    });
                    if let (Some(o), true) = (owner, up) {
                        demote.push((id.clone(), o));
                    }
                }
                (Some(_), true) => adopt.push(id.clone()),
                _ => {}
            }
        }
        // The new owner may never have seen a client (it was written here while the owner
        // was away): it gets our full state through the acknowledged sync path, and the
        // client stays ours until that is acknowledged.
        let mut pending = HashMap::default();
        for (id, owner) in demote {
            let already = self
                .distro
                .as_ref()
                .and_then(|d| d.handovers.get(&id))
                .is_some_and(|o| o == &owner);
            if !already {
                self.mark_for(
                    &owner,
                    SyncKey {
                        client: id.clone(),
                        service: None,
                    },
                );
            }
            pending.insert(id, owner);
        }
        if let Some(d) = self.distro.as_mut() {
            d.handovers = pending;
        }
        self.arm_sync_timer();
        for id in adopt {
            self.adopt_if_replica(&id);
        }
        // Held for another node until now, their beats went there: like a client taken
        // over, each gets a full beat period before it can expire here.
        let now_ms = self.now.mono_ms;
        for id in now_mine {
            if let Some(c) = self.clients.get_mut(&id) {
                c.publishes
                    .iter_mut()
                    .for_each(|e| e.last_beat_ms = e.last_beat_ms.max(now_ms));
            }
        }
    }

    // ----- verify ----------------------------------------------------------------------

    pub(super) fn on_verify_timer(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let at = now_ms + d.cfg.verify_interval_ms;
        self.set_timer(at, Timer::Verify);
        // A heartbeat client may have become ours by a write routed on an older view; hand
        // back what this node's view gives to another member before vouching for it.
        self.rebalance_heartbeat_clients(None);
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        // Sent while the snapshot is still loading too: peers must keep renewing the
        // clients this node holds (its connections are alive). What a loading node must not
        // do is make peers delete what it does not know yet; see `on_slice_digests`.
        d.round += 1;
        let round = d.round;
        let mut msgs = Vec::new();
        for (peer, health) in &d.members.peers {
            if *health == Health::Down {
                continue;
            }
            for p in &d.partitions {
                let root = d.digests.get(&(None, *p)).map_or(0, Digest::root);
                msgs.push((peer.clone(), *p, root));
            }
        }
        bump(&self.stats.distro.verify_sent, msgs.len() as u64);
        let clock = self.clock;
        for (peer, p, root) in msgs {
            self.send_peer(peer, p, PeerMsg::Digest { round, root, clock });
        }
    }

    fn on_digest(&mut self, from: NodeId, partition: u16, round: u64, root: u64) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let key = (Some(from.clone()), partition);
        let mine = d.digests.get(&key);
        let my_root = mine.map_or(0, Digest::root);
        if my_root == root {
            bump(&self.stats.distro.verify_matched, 1);
            let slices = d
                .renewed
                .entry((from, partition))
                .or_insert_with(|| vec![0; SLICES as usize].into_boxed_slice());
            slices.iter_mut().for_each(|s| *s = now_ms);
            return;
        }
        bump(&self.stats.distro.verify_differed, 1);
        let slices = mine.map_or_else(|| vec![0; SLICES as usize], |m| m.slices.to_vec());
        self.send_peer(from, partition, PeerMsg::SliceDigests { round, slices });
    }

    fn on_slice_digests(&mut self, from: NodeId, partition: u16, round: u64, theirs: &[u64]) {
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        if theirs.len() != SLICES as usize {
            return;
        }
        let empty = Digest::new();
        let mine = d.digests.get(&(None, partition)).unwrap_or(&empty);
        let mut matched = Vec::new();
        let mut differ: BTreeMap<u16, Vec<ClientHash>> = BTreeMap::new();
        for (i, (a, b)) in mine.slices.iter().zip(theirs).enumerate() {
            if a == b {
                matched.push(i as u16);
            } else {
                differ.insert(i as u16, Vec::new());
            }
        }
        if !differ.is_empty() {
            for (id, c) in &self.clients {
                if c.replica.is_some() || c.publishes.is_empty() || partition_of(id) != partition {
                    continue;
                }
                if let Some(list) = differ.get_mut(&slice_of(id)) {
                    list.push(ClientHash {
                        client: id.clone(),
                        state_hash: client_digest(id, c.publishes.iter().map(|e| e.rev)),
                    });
                }
            }
        }
        // A node still loading its snapshot may not know all the clients it is responsible
        // for (heartbeat clients it held before a restart): `as_of = 0` tells the peer to
        // renew what is listed and delete nothing (I6).
        let as_of = if d.loaded { self.clock } else { 0 };
        // Split long lists so no message grows with the number of clients.
        let mut msgs: Vec<PeerMsg> = Vec::new();
        let mut lists: Vec<(u16, Vec<ClientHash>)> = Vec::new();
        let mut count = 0;
        for (slice, list) in differ {
            for chunk in list.chunks(LIST_CHUNK).map(<[ClientHash]>::to_vec).chain(
                // An empty slice must still be listed: its replicas are all stale.
                std::iter::once(Vec::new()).filter(|_| list.is_empty()),
            ) {
                count += chunk.len();
                lists.push((slice, chunk));
                if count >= LIST_CHUNK {
                    msgs.push(PeerMsg::SliceClients {
                        round,
                        as_of,
                        matched: std::mem::take(&mut matched),
                        lists: std::mem::take(&mut lists),
                    });
                    count = 0;
                }
            }
        }
        if !lists.is_empty() || !matched.is_empty() || msgs.is_empty() {
            msgs.push(PeerMsg::SliceClients {
                round,
                as_of,
                matched,
                lists,
            });
        }
        for m in msgs {
            self.send_peer(from.clone(), partition, m);
        }
    }

    fn on_slice_clients(
        &mut self,
        from: NodeId,
        partition: u16,
        as_of: u64,
        matched: &[u16],
        lists: Vec<(u16, Vec<ClientHash>)>,
    ) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let renewed = d
            .renewed
            .entry((from.clone(), partition))
            .or_insert_with(|| vec![0; SLICES as usize].into_boxed_slice());
        for s in matched {
            if let Some(slot) = renewed.get_mut(*s as usize) {
                *slot = now_ms;
            }
        }
        self.observe_rev(as_of);
        let mut listed_slices: HashSet<u16> = HashSet::new();
        let mut listed: HashSet<ClientId> = HashSet::new();
        let mut resync = Vec::new();
        let mut claims = Vec::new();
        for (slice, list) in lists {
            listed_slices.insert(slice);
            for ClientHash { client, state_hash } in list {
                if partition_of(&client) != partition || slice_of(&client) != slice {
                    continue;
                }
                let held = self.clients.get(&client).map(|c| {
                    (
                        c.replica.as_ref().map(|i| i.origin.clone()),
                        client_digest(&client, c.publishes.iter().map(|e| e.rev)),
                    )
                });
                // A removal we remember is not cleared here: the resync below makes the
                // owner restamp the client above its clock, which has seen ours (digests
                // carry clocks), so its answer passes the memory while stale copies do not.
                if client.is_heartbeat()
                    && matches!(&held, Some((Some(origin), _)) if origin != &from)
                {
                    claims.push(client.clone());
                }
                if matches!(&held, Some((Some(origin), _)) if origin == &from) {
                    self.confirm(&client);
                }
                match held {
                    Some((Some(origin), hash)) if origin == from && hash == state_hash => {}
                    // Ours: we are responsible and will tell it ours; nothing to ask.
                    Some((None, _)) if self.members_is_mine(&client) => {}
                    _ => resync.push(client.clone()),
                }
                // It exists at its owner: it is alive, whatever we hold of it (renewing on
                // existence, not on equality, is what keeps a slow sync from expiring live
                // clients — I4).
                self.renew(&client);
                listed.insert(client);
            }
        }
        // Replicas of `from` in the listed slices that it does not list are gone there. A
        // heartbeat client's existence is decided by the node our view makes responsible:
        // while views disagree (a member just went DOWN for one node but not yet for
        // another), a node that handed the client over no longer lists it, yet it lives.
        let members = self
            .distro
            .as_ref()
            .map(|d| d.members.clone())
            .unwrap_or_default();
        let unlisted: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(id, c)| {
                c.replica
                    .as_ref()
                    .is_some_and(|i| i.origin == from && !i.unconfirmed)
                    && (!id.is_heartbeat()
                        || members.responsible_for(id) == Some(&from)
                        || c.replica.as_ref().is_some_and(|i| i.by_claim))
                    && partition_of(id) == partition
                    && listed_slices.contains(&slice_of(id))
                    && !listed.contains(*id)
                    && as_of > 0
                    && c.publishes.iter().all(|e| e.rev <= as_of)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for client in claims {
            self.note_claim(&from, &client);
        }
        bump(&self.stats.distro.replicas_pruned, unlisted.len() as u64);
        for id in unlisted {
            self.remove_replica(&id);
        }
        for chunk in resync.chunks(LIST_CHUNK) {
            self.send_peer(
                from.clone(),
                partition,
                PeerMsg::Resync {
                    clients: chunk.to_vec(),
                },
            );
        }
    }

    // ----- housekeeping ----------------------------------------------------------------

    pub(super) fn on_distro_tick(&mut self) {
        let now_ms = self.now.mono_ms;
        if self.distro.is_none() {
            return;
        }
        self.set_timer(now_ms + TICK_MS, Timer::DistroTick);
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        // A long gap between ticks means this process was not running (SIGSTOP, a VM
        // pause): every lease looks expired, but only because we did not listen. Restart
        // the leases instead of expiring everything (I4).
        let paused = now_ms.saturating_sub(d.last_tick_ms) > d.cfg.replica_lease_ms / 2;
        d.last_tick_ms = now_ms;
        if !d.owned_removals.is_empty() {
            let lease = d.cfg.replica_lease_ms;
            d.owned_removals
                .retain(|_, (_, at)| now_ms.saturating_sub(*at) < lease);
        }
        if paused {
            d.last_expiry_ms = now_ms;
            for slices in d.renewed.values_mut() {
                slices.iter_mut().for_each(|s| *s = now_ms);
            }
            for c in self.clients.values_mut() {
                if let Some(info) = c.replica.as_mut() {
                    info.renewed_ms = now_ms;
                }
            }
        }
        // Retries: an unacknowledged batch goes back to the queue; it is rebuilt from the
        // current state when sent again (I3).
        let timeout = d.cfg.sync_timeout_ms;
        let mut retried = 0u64;
        let mut work = Vec::new();
        for (peer, parts) in d.links.iter_mut() {
            for part in parts.values_mut() {
                let late: Vec<u64> = part
                    .inflight
                    .iter()
                    .filter(|(_, f)| now_ms.saturating_sub(f.sent_ms) >= timeout)
                    .map(|(s, _)| *s)
                    .collect();
                for seq in late {
                    if let Some(f) = part.inflight.remove(&seq) {
                        retried += 1;
                        for k in f.keys {
                            part.dirty.insert(k);
                        }
                    }
                }
                if !part.dirty.is_empty() && work.last() != Some(peer) {
                    work.push(peer.clone());
                }
            }
        }
        bump(&self.stats.distro.sync_retries, retried);
        for peer in work {
            self.pump(&peer);
        }
        self.drive_load();
        self.serve_snapshots();
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if now_ms.saturating_sub(d.last_expiry_ms) >= 1_000 {
            d.last_expiry_ms = now_ms;
            self.expire_replicas();
        }
    }

    /// Removes replicas whose owner has not confirmed them for a lease (I4 says when this
    /// must not happen: the lease is renewed by existence at the owner, not by agreement).
    fn expire_replicas(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let lease = d.cfg.replica_lease_ms;
        let renewed = &d.renewed;
        // An owner we are connected to is alive: if its verify did not get through, it is
        // slow or its link is saturated, which must never expire its clients (I4; Nacos
        // #8408). What it deleted reaches us as a `Drop` or through verify's client lists.
        // Leases expire the copies of owners we cannot reach. A SUSPICIOUS owner may still
        // be alive (and is still responsible for its heartbeat clients in every view): its
        // copies wait until it is declared DOWN, and then a whole lease more.
        let reachable: Vec<&NodeId> = d
            .members
            .peers
            .iter()
            .filter(|(_, h)| *h != Health::Down)
            .map(|(n, _)| n)
            .collect();
        let down_since = &d.down_since;
        let expired: Vec<ClientId> = self
            .clients
            .iter()
            .filter_map(|(id, c)| {
                let info = c.replica.as_ref()?;
                if info.unconfirmed {
                    return (now_ms.saturating_sub(info.renewed_ms) > lease).then(|| id.clone());
                }
                if reachable.contains(&&info.origin) {
                    return None;
                }
                let slice_renewed = renewed
                    .get(&(info.origin.clone(), partition_of(id)))
                    .map_or(0, |s| s[slice_of(id) as usize]);
                let went_down = down_since.get(&info.origin).copied().unwrap_or(0);
                let last = info.renewed_ms.max(slice_renewed).max(went_down);
                (now_ms.saturating_sub(last) > lease).then(|| id.clone())
            })
            .collect();
        d.dropped
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= lease);
        d.claims
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= lease);
        bump(&self.stats.distro.replicas_expired, expired.len() as u64);
        for id in expired {
            self.remove_replica(&id);
        }
    }

    // ----- snapshots -------------------------------------------------------------------

    /// Drives the startup load: ask an UP peer for each partition not loaded yet, move on
    /// to another peer when one stalls (I6: a node reports UP and verifies only once
    /// loaded).
    fn drive_load(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if d.loaded {
            return;
        }
        if d.members.me.is_none() {
            return;
        }
        let up: Vec<NodeId> = d
            .members
            .peers
            .iter()
            .filter(|(_, h)| *h == Health::Up)
            .map(|(n, _)| n.clone())
            .collect();
        if d.members.peers.is_empty()
            || (up.is_empty() && now_ms.saturating_sub(d.started_ms) >= d.cfg.startup_alone_ms)
        {
            // Nobody to load from: this node starts the cluster's data.
            d.loaded = true;
            let took = now_ms.saturating_sub(d.started_ms);
            self.stats.distro.load_ms.store(took, Ordering::Relaxed);
            self.stats.distro.loaded.store(true, Ordering::Relaxed);
            return;
        }
        if up.is_empty() {
            return;
        }
        let timeout = d.cfg.snapshot_timeout_ms;
        let mut requests = Vec::new();
        for (p, load) in d.loads.iter_mut() {
            if load.done {
                continue;
            }
            // Silence after a request is quick to notice: a peer's frames arrive within a
            // tick or two. It happens when the answer went into a connection the peer still
            // held to this node's previous process (lost when the new process resets it).
            // A peer that sends other frames got the request: its first chunk may wait
            // behind its sync traffic, and asking another peer would only add a second
            // stream to the queue (found by perf/cluster.sh: with 1,100,000 instances and a
            // busy joining node every partition moved after 1 s, the abandoned streams
            // filled the peers' 64 MiB queues and the node never loaded).
            let silent = load.source.as_ref().is_none_or(|s| {
                d.frames_heard.get(s).copied().unwrap_or(0) <= load.last_progress_ms
            });
            let limit = if load.expect_seq == 0 && silent {
                timeout.min(FIRST_CHUNK_TIMEOUT_MS)
            } else {
                timeout
            };
            // A peer serves one chunk per partition in turn, a bounded number at a time, so
            // with a big snapshot a partition may wait seconds for its next chunk while the
            // peer streams the others: progress from the source counts for all its loads
            // (found by perf/cluster.sh: a node joining 1,100,000 instances on a loaded
            // machine gave up on every partition after 1 s and never finished).
            let heard = load
                .source
                .as_ref()
                .and_then(|s| d.load_heard.get(s).copied())
                .unwrap_or(0);
            let stalled = now_ms.saturating_sub(load.last_progress_ms.max(heard)) >= limit;
            let source_up = load.source.as_ref().is_some_and(|s| up.contains(s));
            if load.source.is_some() && source_up && !stalled {
                continue;
            }
            if let Some(s) = load.source.take() {
                load.tried.insert(s);
            }
            // Partitions are spread over the UP peers (each starts at its own peer), so a
            // joining node loads from all of them at once.
            let start = usize::from(*p) % up.len();
            let next = (0..up.len())
                .map(|i| &up[(start + i) % up.len()])
                .find(|n| !load.tried.contains(*n))
                .or_else(|| {
                    load.tried.clear();
                    up.get(start)
                })
                .cloned();
            if let Some(peer) = next {
                d.next_id += 1;
                load.id = d.next_id;
                load.expect_seq = 0;
                load.last_progress_ms = now_ms;
                load.source = Some(peer.clone());
                requests.push((peer, *p, load.id));
            }
        }
        for (peer, p, id) in requests {
            self.send_peer(peer, p, PeerMsg::SnapshotRequest { id });
        }
    }

    fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        partition: u16,
        id: u64,
        seq: u64,
        clients: Vec<(NodeId, ClientState)>,
        done: bool,
    ) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let me = d.members.me.clone();
        let Some(load) = d.loads.get_mut(&partition) else {
            return;
        };
        if load.done || load.id != id || load.source.as_ref() != Some(&from) {
            return;
        }
        if seq != load.expect_seq {
            // Lost or reordered chunk: start over with this peer (the next tick asks again).
            load.last_progress_ms = 0;
            return;
        }
        load.expect_seq += 1;
        load.last_progress_ms = now_ms;
        if done {
            load.done = true;
        }
        d.load_heard.insert(from.clone(), now_ms);
        bump(&self.stats.distro.snapshot_received, clients.len() as u64);
        for (origin, state) in clients {
            if Some(&origin) == me.as_ref() {
                // Our own clients from before a restart: connection clients died with the
                // process; heartbeat clients are ours again if we are still responsible.
                if state.client.is_heartbeat() && self.members_is_mine(&state.client) {
                    self.restore_native(state);
                }
                continue;
            }
            self.apply_full(&origin, state);
        }
        self.send_peer(from, partition, PeerMsg::SnapshotAck { id, seq });
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if d.loads.values().all(|l| l.done) {
            d.loaded = true;
            let took = now_ms.saturating_sub(d.started_ms);
            self.stats.distro.load_ms.store(took, Ordering::Relaxed);
            self.stats.distro.loaded.store(true, Ordering::Relaxed);
            // The snapshot may hold heartbeat clients this node is now responsible for
            // (they moved while it was away): take them over at once.
            self.rebalance_heartbeat_clients(None);
        }
    }

    /// Re-creates a heartbeat client of ours from a peer's copy (after our restart).
    fn restore_native(&mut self, state: ClientState) {
        self.observe_rev(state.rev);
        if self.clients.contains_key(&state.client) {
            return;
        }
        let origin = self
            .distro
            .as_ref()
            .and_then(|d| d.members.me.clone())
            .unwrap_or_else(|| NodeId::new("?"));
        // Apply as a replica of ourselves, then adopt it: one code path for the data.
        if self.prepare_replica(&origin, &state.client, state.rev) {
            let client = state.client.clone();
            for entry in state.entries {
                self.replica_put(&origin, &client, entry);
            }
            self.adopt_if_replica(&client);
        }
    }

    /// Sends snapshot chunks while each stream's window allows.
    fn serve_snapshots(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let window = d.cfg.snapshot_window;
        let chunk = d.cfg.snapshot_chunk_clients.max(1);
        let chunk_instances = d.cfg.snapshot_chunk_instances.max(1);
        let stall = d.cfg.snapshot_timeout_ms;
        let me = d.members.me.clone().unwrap_or_else(|| NodeId::new("?"));
        // A stream whose reader vanished (chunks sent, no ack for a while) is given up; one
        // waiting for its turn behind the reader's other partitions is not.
        d.serving.retain(|s| {
            !s.finished && (s.next_seq == s.acked || now_ms.saturating_sub(s.last_ms) < stall)
        });
        let peer_window = d.cfg.snapshot_peer_window.max(1);
        let mut serving = std::mem::take(&mut d.serving);
        let mut msgs = Vec::new();
        // Chunks in flight per requesting peer, over all its partitions: a joining node asks
        // for every partition at once, and 64 windows of big chunks would overflow the peer
        // queue (dropped chunks restart their partition). Streams take turns, one chunk each.
        let mut in_flight: HashMap<NodeId, u64> = HashMap::new();
        for s in &serving {
            *in_flight.entry(s.to.clone()).or_default() += s.next_seq.saturating_sub(s.acked);
        }
        let mut progressed = true;
        while progressed {
            progressed = false;
            for s in serving.iter_mut() {
                if s.finished || s.next_seq >= s.acked + window {
                    continue;
                }
                let used = in_flight.entry(s.to.clone()).or_default();
                if *used >= peer_window {
                    continue;
                }
                *used += 1;
                progressed = true;
                let mut out = Vec::new();
                let mut instances = 0;
                while out.len() < chunk && instances < chunk_instances {
                    let Some(id) = s.pending.pop() else {
                        break;
                    };
                    if let Some(c) = self.clients.get(&id) {
                        if !c.publishes.is_empty() {
                            let origin = c
                                .replica
                                .as_ref()
                                .map_or_else(|| me.clone(), |i| i.origin.clone());
                            let mut state = Self::client_state(&id, c);
                            instances +=
                                state.entries.iter().map(|e| e.publish.len()).sum::<usize>();
                            if let Some(info) = c.replica.as_ref() {
                                // A copy is complete only up to its last full state; its
                                // newest revision may come from a single publish.
                                state.rev = info.floor;
                            }
                            out.push((origin, state));
                        }
                    }
                }
                let done = s.pending.is_empty();
                bump(&self.stats.distro.snapshot_sent, out.len() as u64);
                msgs.push((
                    s.to.clone(),
                    s.partition,
                    PeerMsg::SnapshotChunk {
                        id: s.id,
                        seq: s.next_seq,
                        clients: out,
                        done,
                    },
                ));
                s.next_seq += 1;
                s.last_ms = now_ms;
                if done {
                    s.finished = true;
                }
            }
        }
        serving.retain(|s| !s.finished);
        if let Some(d) = self.distro.as_mut() {
            d.serving = serving;
        }
        for (to, p, m) in msgs {
            self.send_peer(to, p, m);
        }
    }
}
