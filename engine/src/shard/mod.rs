//! One shard of the registry: the clients whose id hashes here and the services whose key
//! hashes here. A shard is a plain state machine driven by one core; it never blocks, never reads
//! a clock and never touches a socket.
//!
//! Inputs are facts (`handle`, `handle_timeout`); outputs are [`Command`]s drained with
//! `poll_command`: messages for other shards, replies to requests, pushes to subscribers.
//!
//! A write travels twice at most: from the accepting core to the client's owner (which keeps the
//! client's publishes and revision), then as a [`ServiceOp`] to the service's owner (which keeps
//! the service's publishers and subscribers, builds its view and publishes it to the
//! [`ReadIndex`]). Views are rebuilt once per [`Shard::flush`], so a burst of writes to one
//! service costs one rebuild; pushes wait `push_delay_ms` so a burst costs one push.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use indexmap::IndexMap;
use smallvec::SmallVec;

use crate::distro::{DistroConfig, NodeId, PeerMsg};
use crate::model::{ClientId, Host, Instance, Interner, Metadata, ServiceKey, StableHasher, Str};
use crate::view::{
    DirectoryChange, Publish, PublishRun, ReadIndex, ServiceCell, ServiceView, RUN_MAX, RUN_TARGET,
};

mod replication;
pub use replication::DistroStats;

/// The time as the driver sees it. Both clocks are inputs so the shard stays deterministic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (any origin); all timeouts use this.
    pub mono_ms: u64,
    /// Wall-clock unix milliseconds; only written into answers (`lastRefTime`).
    pub unix_ms: u64,
}

/// Shard settings.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Number of shards (cores) in this process.
    pub shard_count: usize,
    /// How long a change waits for more changes before subscribers get one push (ms).
    pub push_delay_ms: u64,
    /// How often heartbeat clients are checked for missed beats (ms).
    pub beat_check_interval_ms: u64,
    /// Largest number of instances in one batch registration.
    pub max_batch_instances: usize,
    /// Largest number of services one client may publish or subscribe to.
    pub max_services_per_client: usize,
    /// Distro settings; `None` for a standalone node (no replication bookkeeping at all).
    pub distro: Option<DistroConfig>,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            shard_count: 1,
            push_delay_ms: 50,
            beat_check_interval_ms: 1_000,
            max_batch_instances: 10_000,
            max_services_per_client: 100_000,
            distro: None,
        }
    }
}

/// Where a reply goes: the shard that is waiting and its token for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    /// The waiting shard.
    pub shard: usize,
    /// The waiter's token, echoed back.
    pub token: u64,
}

/// A change of an instance's mutable fields (HTTP `PATCH`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstancePatch {
    /// New weight.
    pub weight: Option<f64>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New health flag.
    pub healthy: Option<bool>,
    /// New metadata (replaces the old).
    pub metadata: Option<Metadata>,
}

/// Something a client asks of the shard that owns it.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientOp {
    /// Publish one instance in a service, replacing the client's previous publish there.
    Register {
        /// Service.
        service: ServiceKey,
        /// Instance.
        instance: Instance,
    },
    /// Publish several instances in a service, replacing the previous publish there.
    BatchRegister {
        /// Service.
        service: ServiceKey,
        /// Instances (non-empty).
        instances: Vec<Instance>,
    },
    /// Withdraw an instance.
    Deregister {
        /// Service.
        service: ServiceKey,
        /// Address of the instance.
        host: Host,
        /// Port of the instance.
        port: u16,
        /// Cluster of the instance.
        cluster: Str,
    },
    /// Change fields of a registered instance.
    Update {
        /// Service.
        service: ServiceKey,
        /// Address of the instance.
        host: Host,
        /// Port of the instance.
        port: u16,
        /// Cluster of the instance.
        cluster: Str,
        /// The change.
        patch: InstancePatch,
    },
    /// A heartbeat of an HTTP instance; `reregister` is used when the instance is unknown.
    Beat {
        /// Service.
        service: ServiceKey,
        /// Address of the instance.
        host: Host,
        /// Port of the instance.
        port: u16,
        /// Cluster of the instance.
        cluster: Str,
        /// Instance to register if it is unknown (Nacos does this when the beat has a body).
        reregister: Option<Instance>,
    },
    /// Subscribe this (connection) client to a service.
    Subscribe {
        /// Service.
        service: ServiceKey,
        /// Comma-separated cluster filter of the pushes (empty = all).
        clusters: Str,
    },
    /// Stop a subscription.
    Unsubscribe {
        /// Service.
        service: ServiceKey,
    },
    /// The client is gone (connection closed): remove everything it published and subscribed.
    Disconnect,
}

/// Something asked of the shard that owns a service.
#[derive(Clone, Debug)]
pub enum ServiceOp {
    /// A client's publish in the service changed.
    Upsert {
        /// Client.
        client: ClientId,
        /// Its whole publish in the service.
        publish: Publish,
    },
    /// A client no longer publishes in the service.
    Remove {
        /// Client.
        client: ClientId,
    },
    /// A connection subscribes.
    Subscribe {
        /// Subscriber (connection id).
        subscriber: u64,
        /// Cluster filter.
        clusters: Str,
    },
    /// A connection unsubscribes.
    Unsubscribe {
        /// Subscriber (connection id).
        subscriber: u64,
    },
    /// Creates the service or changes its settings (HTTP `/service`).
    Configure {
        /// New protect threshold.
        protect_threshold: Option<f32>,
        /// New metadata.
        metadata: Option<Metadata>,
        /// Fail if the service already exists (POST) or does not exist (PUT: `Some(false)`).
        must_exist: Option<bool>,
    },
    /// Deletes an explicitly created service; refused while it has instances.
    Delete,
}

/// A message between shards.
#[derive(Clone, Debug)]
pub enum ShardMsg {
    /// To the client's owner.
    Client {
        /// Client.
        client: ClientId,
        /// Operation.
        op: ClientOp,
        /// Who waits for the outcome.
        reply: Option<ReplyTo>,
    },
    /// To the client's owner: a heartbeat of HTTP client `client` passed through this node on
    /// its way to the node this node's view makes responsible (it was forwarded). The client
    /// is alive: a copy held here is renewed, and a node that claims the client against this
    /// node's view (views disagree, e.g. during an asymmetric partition) gets the beat too,
    /// so that it does not expire a live client it believes it owns.
    ///
    /// A beat relayed this way never changes who owns the client: a copy is only renewed,
    /// and a client owned here gets the beat applied.
    BeatRelayed {
        /// Client (a heartbeat client).
        client: ClientId,
        /// The beat, as forwarded.
        op: ClientOp,
        /// Whether claimants get it too (false for a beat a peer relayed to us as a
        /// claimant: it goes no further).
        to_claimants: bool,
    },
    /// To the service's owner.
    Service {
        /// Service.
        service: ServiceKey,
        /// Operation.
        op: ServiceOp,
        /// Who waits for the outcome.
        reply: Option<ReplyTo>,
    },
}

/// What an operation achieved.
#[derive(Clone, Debug, PartialEq)]
pub enum OpOutcome {
    /// Applied and changed something.
    Changed,
    /// Valid, but the state was already so (nothing is pushed).
    Unchanged,
    /// A heartbeat was accepted; the client should beat at this interval.
    Beat {
        /// Interval (ms).
        interval_ms: u32,
    },
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The instance, client or service is unknown.
    NotFound(String),
    /// The request is not acceptable.
    Invalid(String),
    /// The request conflicts with the current state.
    Conflict(String),
    /// The node that must apply the request could not be reached in time (cluster).
    Unavailable(String),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::NotFound(m)
            | OpError::Invalid(m)
            | OpError::Conflict(m)
            | OpError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// The outcome of an operation.
pub type OpResult = Result<OpOutcome, OpError>;

/// What the driver must do.
#[derive(Debug)]
pub enum Command {
    /// Deliver `msg` to shard `shard` (never this shard: local messages are applied at once).
    Send {
        /// Destination shard.
        shard: usize,
        /// Message.
        msg: ShardMsg,
    },
    /// Complete a request.
    Reply {
        /// Waiter.
        to: ReplyTo,
        /// Outcome.
        result: OpResult,
    },
    /// Send a Distro message to the shard owning `partition` on node `to`.
    Peer {
        /// Destination node.
        to: NodeId,
        /// Partition the message is about.
        partition: u16,
        /// Message.
        msg: PeerMsg,
    },
    /// Relay beat `op` of HTTP client `client` to node `to`, a node that claims the client
    /// (it applies it as `ShardMsg::BeatRelayed` without `to_claimants`; no answer).
    RelayBeat {
        /// Destination node.
        to: NodeId,
        /// Client.
        client: ClientId,
        /// Operation.
        op: ClientOp,
    },
    /// Send `view` to the subscriber connection (Nacos `NotifySubscriberRequest`).
    Push {
        /// Subscriber (connection id; its core is `id % shard_count`).
        subscriber: u64,
        /// Its cluster filter.
        clusters: Str,
        /// The view to push.
        view: Arc<ServiceView>,
    },
}

/// Counters one shard keeps; any core reads them for `/metrics`.
#[derive(Default, Debug)]
pub struct ShardStats {
    /// Instances in services owned by this shard.
    pub instances: AtomicI64,
    /// Services owned by this shard.
    pub services: AtomicI64,
    /// Clients owned by this shard.
    pub clients: AtomicI64,
    /// Of which HTTP `ip:port` heartbeat clients.
    pub heartbeat_clients: AtomicI64,
    /// Of which copies of clients another node is responsible for.
    pub replica_clients: AtomicI64,
    /// Subscriptions to services owned by this shard.
    pub subscriptions: AtomicI64,
    /// Pushes emitted.
    pub pushes: AtomicU64,
    /// Instances removed because their heartbeats stopped.
    pub expired_instances: AtomicU64,
    /// Instances marked unhealthy because their heartbeats stopped.
    pub unhealthy_marks: AtomicU64,
    /// Heartbeat checks that found this process had not run (see `check_heartbeats`).
    pub paused_beat_checks: AtomicU64,
    /// Replication counters.
    pub distro: DistroStats,
}

impl ShardStats {
    fn count_client(&self, client: &ClientId, delta: i64) {
        self.clients.fetch_add(delta, Ordering::Relaxed);
        if client.is_heartbeat() {
            self.heartbeat_clients.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

/// The shard that owns a client: the one owning its Distro partition, so that a client's
/// data and its replication state live on the same core on every node.
pub fn client_shard(client: &ClientId, shard_count: usize) -> usize {
    crate::distro::partition_of(client) as usize % shard_count.max(1)
}

/// The `seq`-th connection id of shard `shard`: it maps back to that shard
/// ([`client_shard`]) so a connection's client lives on the core holding the connection.
/// `prefix` (the high bits) tells this process's connections from other nodes' and from its
/// own earlier runs.
pub fn conn_id(prefix: u64, shard: usize, shard_count: usize, seq: u64) -> u64 {
    let n = shard_count.clamp(1, usize::from(crate::distro::PARTITIONS)) as u64;
    let shard = shard as u64 % n;
    let parts = u64::from(crate::distro::PARTITIONS);
    // Partitions of this shard: shard, shard + n, ... below PARTITIONS.
    let owned = (parts - shard).div_ceil(n);
    let partition = shard + n * (seq % owned);
    (prefix << 40) | ((seq / owned) * parts + partition)
}

struct PublishEntry {
    service: ServiceKey,
    publish: Publish,
    /// Last heartbeat (mono ms); heartbeat clients only.
    last_beat_ms: u64,
    /// The client's revision when this publish last changed: what peers compare (Distro).
    rev: u64,
}

/// A client as its owner keeps it. Subscriptions live in their own map: most clients (all
/// HTTP ones) never subscribe, and every byte here is paid per client.
struct Client {
    /// Revision of the newest change (from the shard's revision clock, so it only grows,
    /// also across a client's removal and re-creation and across nodes).
    revision: u64,
    publishes: SmallVec<[PublishEntry; 1]>,
    /// `None`: this node is responsible for the client. `Some`: a copy of a peer's client.
    replica: Option<Box<replication::ReplicaInfo>>,
}

impl Client {
    fn new() -> Client {
        Client {
            revision: 0,
            publishes: SmallVec::new(),
            replica: None,
        }
    }
    /// Position of the publish in `service` (`Err`: where it would go). Publishes are sorted
    /// by the address of their interned service key, so a connection publishing in thousands
    /// of services finds one in a few steps. `service` must come from this shard's interner.
    fn entry(&self, service: &ServiceKey) -> Result<usize, usize> {
        let addr = service.addr();
        self.publishes
            .binary_search_by_key(&addr, |e| e.service.addr())
    }
}

struct ServiceState {
    cell: Arc<ServiceCell>,
    /// Clients publishing here, sorted and cut like the view's runs: `client_runs[r][i]`
    /// publishes `view.runs()[r].publishes()[i]`. Sorted arrays instead of a map: no per-entry
    /// hashing slack, and the view needs the publishes as arrays anyway.
    client_runs: Vec<Box<[ClientId]>>,
    /// Publishes changed since the last flush (`None` = withdrawn), merged in at flush.
    pending: BTreeMap<ClientId, Option<Publish>>,
    subscribers: HashMap<u64, Str, StableHasher>,
    protect_threshold: f32,
    metadata: Metadata,
    /// Created through `/service`: survives having no instances.
    explicit: bool,
    revision: u64,
    in_dirty_list: bool,
    push_timer_set: bool,
    pushed_revision: u64,
    view: Arc<ServiceView>,
    instance_count: usize,
}

impl ServiceState {
    /// The client's publish, including changes not yet flushed.
    fn current(&self, client: &ClientId) -> Option<&Publish> {
        if let Some(p) = self.pending.get(client) {
            return p.as_ref();
        }
        let (r, i) = self.position(client)?;
        self.view.runs().get(r)?.publishes().get(i)
    }

    /// Run and index of a published client (pending changes aside).
    fn position(&self, client: &ClientId) -> Option<(usize, usize)> {
        let after = self
            .client_runs
            .partition_point(|run| run.first().is_some_and(|first| first <= client));
        let r = after.checked_sub(1)?;
        let i = self.client_runs[r].binary_search(client).ok()?;
        Some((r, i))
    }

    /// Whether anyone publishes here, including changes not yet flushed.
    fn has_publishers(&self) -> bool {
        self.pending.values().any(Option::is_some)
            || self
                .client_runs
                .iter()
                .flat_map(|run| run.iter())
                .any(|c| !self.pending.contains_key(c))
    }

    /// Merges the pending changes into the runs; returns the view's new runs. Only the runs
    /// that changes fall into are rebuilt, the others are shared with the current view.
    fn merge_pending(&mut self) -> Vec<Arc<PublishRun>> {
        let pending = std::mem::take(&mut self.pending);
        let mut old_clients = std::mem::take(&mut self.client_runs);
        let old_runs = self.view.runs();
        let mut merged = RunMerger::with_capacity(old_runs.len() + 1);
        let mut changes = pending.into_iter().peekable();
        for r in 0..old_clients.len() {
            let clients = std::mem::take(&mut old_clients[r]);
            let Some(run) = old_runs.get(r) else {
                continue;
            };
            // A run takes the changes below the next run's first client; the last takes all.
            let touched = match (changes.peek(), old_clients.get(r + 1)) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some((changed, _)), Some(next)) => next.first().is_none_or(|n| changed < n),
            };
            if !touched {
                merged.keep(clients, run.clone());
                continue;
            }
            let upper = old_clients.get(r + 1).and_then(|next| next.first());
            let mut new_clients = Vec::with_capacity(clients.len() + 1);
            let mut new_publishes = Vec::with_capacity(clients.len() + 1);
            warm_refcounts(run.publishes());
            let mut put = |c: ClientId, p: Option<Publish>| {
                if let Some(p) = p {
                    new_clients.push(c);
                    new_publishes.push(p);
                }
            };
            for (c, p) in clients.into_vec().into_iter().zip(run.publishes()) {
                while let Some((changed, publish)) = changes.next_if(|(changed, _)| *changed < c) {
                    put(changed, publish);
                }
                match changes.next_if(|(changed, _)| *changed == c) {
                    Some((changed, publish)) => put(changed, publish),
                    None => put(c, Some(p.clone())),
                }
            }
            while let Some((changed, publish)) =
                changes.next_if(|(changed, _)| upper.is_none_or(|u| changed < u))
            {
                put(changed, publish);
            }
            merged.rebuilt(new_clients, new_publishes);
        }
        // No runs yet: everything pending starts the first ones.
        let (new_clients, new_publishes): (Vec<ClientId>, Vec<Publish>) =
            changes.filter_map(|(c, p)| Some((c, p?))).unzip();
        merged.rebuilt(new_clients, new_publishes);
        let (client_runs, runs) = merged.finish();
        self.client_runs = client_runs;
        runs
    }
}

/// Collects the runs of a merge: keeps untouched runs as they are, splits rebuilt runs that
/// grew past [`RUN_MAX`], and joins a rebuilt run that shrank below a quarter of
/// [`RUN_TARGET`] to the run before it, so deregistrations cannot leave a trail of tiny runs.
struct RunMerger {
    clients: Vec<Box<[ClientId]>>,
    runs: Vec<Arc<PublishRun>>,
}

impl RunMerger {
    fn with_capacity(n: usize) -> RunMerger {
        RunMerger {
            clients: Vec::with_capacity(n),
            runs: Vec::with_capacity(n),
        }
    }

    fn keep(&mut self, clients: Box<[ClientId]>, run: Arc<PublishRun>) {
        self.clients.push(clients);
        self.runs.push(run);
    }

    fn rebuilt(&mut self, mut clients: Vec<ClientId>, mut publishes: Vec<Publish>) {
        if clients.is_empty() {
            return;
        }
        if clients.len() < RUN_TARGET / 4 {
            let joins = self
                .clients
                .last()
                .is_some_and(|prev| prev.len() + clients.len() <= RUN_MAX);
            if joins {
                if let (Some(prev_clients), Some(prev_run)) = (self.clients.pop(), self.runs.pop())
                {
                    let mut c = prev_clients.into_vec();
                    c.append(&mut clients);
                    let mut p = prev_run.publishes().to_vec();
                    p.append(&mut publishes);
                    clients = c;
                    publishes = p;
                }
            }
        }
        let pieces = if clients.len() > RUN_MAX {
            clients.len() / RUN_TARGET
        } else {
            1
        };
        let base = clients.len() / pieces;
        let extra = clients.len() % pieces;
        let mut clients = clients.into_iter();
        let mut publishes = publishes.into_iter();
        for piece in 0..pieces {
            let size = base + usize::from(piece < extra);
            self.clients.push(clients.by_ref().take(size).collect());
            self.runs
                .push(PublishRun::new(publishes.by_ref().take(size).collect()));
        }
    }

    fn finish(self) -> (Vec<Box<[ClientId]>>, Vec<Arc<PublishRun>>) {
        (self.clients, self.runs)
    }
}

/// The next value of a shard's revision clock: above everything it gave or saw, and never
/// below the wall clock (shifted), so revisions keep growing across restarts of a node and
/// across a client's move between nodes. 2^16 revisions per millisecond before it runs ahead.
fn next_rev(clock: &mut u64, unix_ms: u64) -> u64 {
    *clock = (*clock + 1).max(unix_ms << 16);
    *clock
}

/// Touches the reference counts of `publishes` with plain loads before they are cloned.
///
/// Why: each publish is its own allocation, so cloning a view's publishes is one cache miss
/// per instance, and an atomic increment cannot overlap its miss with the next one. Plain
/// loads can, so this pass pulls the lines in parallel and the increments then hit the cache
/// (it was most of the cost of republishing a 100-instance service).
pub(crate) fn warm_refcounts(publishes: &[Publish]) {
    let mut sum = 0usize;
    for p in publishes {
        sum = sum.wrapping_add(Arc::strong_count(p));
    }
    std::hint::black_box(sum);
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    BeatCheck,
    Push(ServiceKey),
    /// Ship merged changes to peers.
    Sync,
    /// Retries, snapshot progress, replica expiry.
    DistroTick,
    /// Send digests to peers.
    Verify,
}

/// One shard of the registry. See the module docs.
pub struct Shard {
    id: usize,
    cfg: ShardConfig,
    index: Arc<ReadIndex>,
    interner: Interner,
    /// IndexMap: entries in one dense vector plus a table of indices, which costs far less
    /// per client than a hash map's slack at a million clients.
    clients: IndexMap<ClientId, Client, StableHasher>,
    subscriptions: HashMap<u64, Vec<ServiceKey>, StableHasher>,
    services: HashMap<ServiceKey, ServiceState, StableHasher>,
    dirty: Vec<ServiceKey>,
    directory_changes: Vec<DirectoryChange>,
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
    out: VecDeque<Command>,
    stats: Arc<ShardStats>,
    now: Now,
    /// The waiter of the client op being applied, until a remote service op carries it.
    reply_slot: Option<ReplyTo>,
    /// Replies released by the next flush, once their effect is published.
    deferred_replies: Vec<(ReplyTo, OpResult)>,
    /// The revision clock: every change gets a value above everything seen, local or
    /// replicated (see `next_rev`).
    clock: u64,
    /// Distro state; `None` when standalone.
    distro: Option<Box<replication::DistroState>>,
    /// When the heartbeat check last ran (to notice that this process did not run).
    last_beat_check_ms: u64,
    /// Our heartbeat clients not heard from since this process was found not to have run
    /// (see `check_heartbeats`): a peer that held them meanwhile may delete them.
    pub(super) pause_stale: HashSet<ClientId, StableHasher>,
}

impl Shard {
    /// Shard `id` of `cfg.shard_count`, publishing into `index`.
    pub fn new(id: usize, cfg: ShardConfig, index: Arc<ReadIndex>, now: Now) -> Shard {
        assert_eq!(
            cfg.shard_count,
            index.shard_count(),
            "index and config disagree on shard count"
        );
        let mut shard = Shard {
            id,
            index,
            interner: Interner::default(),
            clients: IndexMap::default(),
            subscriptions: HashMap::default(),
            services: HashMap::default(),
            dirty: Vec::new(),
            directory_changes: Vec::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            stats: Arc::new(ShardStats::default()),
            now,
            cfg,
            reply_slot: None,
            deferred_replies: Vec::new(),
            clock: 0,
            distro: None,
            last_beat_check_ms: now.mono_ms,
            pause_stale: HashSet::default(),
        };
        shard.set_timer(
            now.mono_ms + shard.cfg.beat_check_interval_ms,
            Timer::BeatCheck,
        );
        if let Some(cfg) = shard.cfg.distro.clone() {
            shard.start_distro(cfg, now);
        }
        shard
    }

    /// This shard's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// This shard's counters.
    pub fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }

    /// The shared read index.
    pub fn index(&self) -> &Arc<ReadIndex> {
        &self.index
    }

    /// Next command for the driver.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.out.pop_front()
    }

    /// When `handle_timeout` wants to run next (mono ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Applies one message. Call [`Shard::flush`] after a batch of messages.
    ///
    /// A reply leaves only once the change is readable: after the flush that published it
    /// here, or, when the service lives on another shard, from that shard after its flush
    /// (the reply travels with the service op). So a client that got its answer can read
    /// its write from any core.
    pub fn handle(&mut self, now: Now, msg: ShardMsg) {
        self.now = now;
        match msg {
            ShardMsg::Client { client, op, reply } => {
                let travels = matches!(
                    op,
                    ClientOp::Register { .. }
                        | ClientOp::BatchRegister { .. }
                        | ClientOp::Deregister { .. }
                        | ClientOp::Update { .. }
                        | ClientOp::Subscribe { .. }
                );
                self.reply_slot = if travels { reply } else { None };
                let result = if client_shard(&client, self.cfg.shard_count) != self.id {
                    Err(OpError::Invalid(format!(
                        "client {client} is not owned by shard {}",
                        self.id
                    )))
                } else {
                    self.apply_client_op(client, op)
                };
                let still_here = self.reply_slot.take();
                if let Some(to) = if travels { still_here } else { reply } {
                    self.deferred_replies.push((to, result));
                }
            }
            ShardMsg::BeatRelayed {
                client,
                op,
                to_claimants,
            } => {
                if client_shard(&client, self.cfg.shard_count) == self.id {
                    self.on_beat_relayed(client, op, to_claimants);
                }
            }
            ShardMsg::Service { service, op, reply } => {
                let result = if self.index.owner_of(&service) != self.id {
                    Err(OpError::Invalid(format!(
                        "service {service:?} is not owned by shard {}",
                        self.id
                    )))
                } else {
                    self.apply_service_op(service, op)
                };
                if let Some(to) = reply {
                    self.deferred_replies.push((to, result));
                }
            }
        }
    }

    /// Fires due timers (heartbeat checks, pushes), then flushes.
    pub fn handle_timeout(&mut self, now: Now) {
        self.now = now;
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now.mono_ms {
                break;
            }
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::BeatCheck => {
                    self.check_heartbeats();
                    self.set_timer(
                        now.mono_ms + self.cfg.beat_check_interval_ms,
                        Timer::BeatCheck,
                    );
                }
                Timer::Push(service) => self.push(&service),
                Timer::Sync => self.on_sync_timer(),
                Timer::DistroTick => self.on_distro_tick(),
                Timer::Verify => self.on_verify_timer(),
            }
        }
        self.flush(now);
    }

    /// Rebuilds and publishes the views changed since the last flush, arms push timers and
    /// updates the directory. Cheap when nothing changed.
    pub fn flush(&mut self, now: Now) {
        self.now = now;
        let dirty = std::mem::take(&mut self.dirty);
        for key in dirty {
            let Some(state) = self.services.get_mut(&key) else {
                continue;
            };
            state.in_dirty_list = false;
            let runs = state.merge_pending();
            let gone =
                state.client_runs.is_empty() && state.subscribers.is_empty() && !state.explicit;
            if gone {
                if let Some(state) = self.services.remove(&key) {
                    self.stats
                        .instances
                        .fetch_sub(state.instance_count as i64, Ordering::Relaxed);
                    self.stats.services.fetch_sub(1, Ordering::Relaxed);
                }
                self.directory_changes.push((key, None));
                continue;
            }
            state.revision += 1;
            // SDKs drop an answer whose lastRefTime is not newer than the one they hold
            // (nacos-sdk-python), so two changes within one millisecond still get two times.
            let last_ref_ms = now.unix_ms.max(state.view.last_ref_ms + 1);
            self.index.raise_stamp(self.id, last_ref_ms);
            let view = Arc::new(ServiceView::from_runs(
                key.clone(),
                state.revision,
                last_ref_ms,
                state.protect_threshold,
                state.metadata.clone(),
                runs,
                Some(self.index.budget().clone()),
            ));
            let delta = view.instance_count as i64 - state.instance_count as i64;
            state.instance_count = view.instance_count;
            self.stats.instances.fetch_add(delta, Ordering::Relaxed);
            state.cell.publish(view.clone());
            state.view = view;
            if !state.subscribers.is_empty() && !state.push_timer_set {
                state.push_timer_set = true;
                let at = now.mono_ms + self.cfg.push_delay_ms;
                self.timers.push(Reverse((at, Timer::Push(key))));
            }
        }
        let changes = std::mem::take(&mut self.directory_changes);
        self.index.update_directory(changes);
        for (to, result) in self.deferred_replies.drain(..) {
            self.out.push_back(Command::Reply { to, result });
        }
    }

    /// Drops interned strings nobody uses any more; call now and then (e.g. every minute).
    pub fn collect_garbage(&mut self) {
        self.interner.collect_garbage();
    }

    /// Number of clients this shard owns.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    fn set_timer(&mut self, at: u64, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
    }

    fn send_service_op(&mut self, service: ServiceKey, op: ServiceOp) {
        let owner = self.index.owner_of(&service);
        if owner == self.id {
            // Local: apply at once; the outcome only matters to remote callers.
            let _ = self.apply_service_op(service, op);
        } else {
            let reply = match op {
                ServiceOp::Upsert { .. }
                | ServiceOp::Remove { .. }
                | ServiceOp::Subscribe { .. } => self.reply_slot.take(),
                _ => None,
            };
            self.out.push_back(Command::Send {
                shard: owner,
                msg: ShardMsg::Service { service, op, reply },
            });
        }
    }

    fn intern_instance(&mut self, mut instance: Instance) -> Instance {
        instance.cluster = self.interner.intern(&instance.cluster);
        instance
    }

    fn apply_client_op(&mut self, client_id: ClientId, op: ClientOp) -> OpResult {
        let now_ms = self.now.mono_ms;
        if !self.pause_stale.is_empty() {
            self.pause_stale.remove(&client_id);
        }
        if self.distro.is_some() {
            // A write for a client held as a copy means its writer sees this node as
            // responsible (a membership change not yet seen here): take the client over.
            self.adopt_if_replica(&client_id);
        }
        match op {
            ClientOp::Register { service, instance } => {
                let instance = self.intern_instance(instance);
                self.set_publish(client_id, service, Arc::from(vec![instance]))
            }
            ClientOp::BatchRegister { service, instances } => {
                if instances.is_empty() {
                    return Err(OpError::Invalid(
                        "a batch registration needs at least one instance".into(),
                    ));
                }
                if instances.len() > self.cfg.max_batch_instances {
                    return Err(OpError::Invalid(format!(
                        "a batch registration holds at most {} instances",
                        self.cfg.max_batch_instances
                    )));
                }
                let instances: Vec<Instance> = instances
                    .into_iter()
                    .map(|i| self.intern_instance(i))
                    .collect();
                self.set_publish(client_id, service, Arc::from(instances))
            }
            ClientOp::Deregister {
                service,
                host,
                port,
                cluster,
            } => {
                let service = self.interner.service(service);
                let Some(client) = self.clients.get_mut(&client_id) else {
                    self.deregistered_absent(&client_id);
                    return Ok(OpOutcome::Unchanged);
                };
                let Some(pos) = client.entry(&service).ok() else {
                    return Ok(OpOutcome::Unchanged);
                };
                let publish = &client.publishes[pos].publish;
                // A client holds one publish per service (Nacos): withdrawing a single-instance
                // publish removes it whatever cluster the request names; from a batch, only the
                // matching instance goes.
                let remaining: Vec<Instance> = if publish.len() <= 1 {
                    Vec::new()
                } else {
                    publish
                        .iter()
                        .filter(|i| !i.is_at(&host, port, &cluster))
                        .cloned()
                        .collect()
                };
                if remaining.len() == publish.len() {
                    return Ok(OpOutcome::Unchanged);
                }
                let rev = next_rev(&mut self.clock, self.now.unix_ms);
                client.revision = rev;
                let old_rev = client.publishes[pos].rev;
                let service = client.publishes[pos].service.clone();
                let new_rev = (!remaining.is_empty()).then_some(rev);
                if remaining.is_empty() {
                    client.publishes.remove(pos);
                    self.native_entry_changed(&client_id, &service, Some(old_rev), new_rev);
                    self.send_service_op(
                        service,
                        ServiceOp::Remove {
                            client: client_id.clone(),
                        },
                    );
                } else {
                    let publish: Publish = Arc::from(remaining);
                    client.publishes[pos].publish = publish.clone();
                    client.publishes[pos].rev = rev;
                    self.native_entry_changed(&client_id, &service, Some(old_rev), new_rev);
                    self.send_service_op(
                        service,
                        ServiceOp::Upsert {
                            client: client_id.clone(),
                            publish,
                        },
                    );
                }
                self.drop_client_if_empty(&client_id);
                Ok(OpOutcome::Changed)
            }
            ClientOp::Update {
                service,
                host,
                port,
                cluster,
                patch,
            } => {
                let service = self.interner.service(service);
                let Some(client) = self.clients.get_mut(&client_id) else {
                    return Err(OpError::NotFound(format!(
                        "no instance {host}:{port} in {service:?}"
                    )));
                };
                let found = client.entry(&service).ok().and_then(|pos| {
                    let p = &client.publishes[pos].publish;
                    p.iter()
                        .position(|i| i.is_at(&host, port, &cluster))
                        .map(|ipos| (pos, ipos))
                });
                let Some((pos, ipos)) = found else {
                    return Err(OpError::NotFound(format!(
                        "no instance {host}:{port} in cluster {cluster} of {service:?}"
                    )));
                };
                let mut instances: Vec<Instance> = client.publishes[pos].publish.to_vec();
                let inst = &mut instances[ipos];
                if let Some(w) = patch.weight {
                    if !w.is_finite() || w < 0.0 {
                        return Err(OpError::Invalid(format!(
                            "weight {w} must be a number >= 0"
                        )));
                    }
                    inst.weight = w.min(crate::model::MAX_WEIGHT);
                }
                if let Some(e) = patch.enabled {
                    inst.enabled = e;
                }
                if let Some(h) = patch.healthy {
                    inst.healthy = h;
                }
                if let Some(m) = patch.metadata {
                    inst.set_metadata(m).map_err(|e| OpError::Invalid(e.0))?;
                }
                let service = client.publishes[pos].service.clone();
                self.set_publish(client_id, service, Arc::from(instances))
            }
            ClientOp::Beat {
                service,
                host,
                port,
                cluster,
                reregister,
            } => {
                let service = self.interner.service(service);
                let found = self.clients.get_mut(&client_id).and_then(|client| {
                    let pos = client.entry(&service).ok()?;
                    let entry = &mut client.publishes[pos];
                    let inst = entry
                        .publish
                        .iter()
                        .find(|i| i.is_at(&host, port, &cluster))?;
                    entry.last_beat_ms = now_ms;
                    Some((inst.healthy, inst.timing().interval_ms))
                });
                match (found, reregister) {
                    (Some((true, interval_ms)), _) => Ok(OpOutcome::Beat { interval_ms }),
                    (Some((false, interval_ms)), _) => {
                        self.set_health(&client_id, &service, true);
                        Ok(OpOutcome::Beat { interval_ms })
                    }
                    (None, Some(instance)) => {
                        let interval_ms = instance.timing().interval_ms;
                        let instance = self.intern_instance(instance);
                        self.set_publish(client_id, service, Arc::from(vec![instance]))?;
                        Ok(OpOutcome::Beat { interval_ms })
                    }
                    (None, None) => Err(OpError::NotFound(format!(
                        "instance {host}:{port} in cluster {cluster} of {service:?} is not registered"
                    ))),
                }
            }
            ClientOp::Subscribe { service, clusters } => {
                let ClientId::Conn(subscriber) = client_id else {
                    return Err(OpError::Invalid(
                        "only connection clients can subscribe".into(),
                    ));
                };
                let service = self.interner.service(service);
                let limit = self.cfg.max_services_per_client;
                let subscribed = self.subscriptions.entry(subscriber).or_default();
                // Interned keys: a pointer comparison per subscription, not three strings.
                if !subscribed.iter().any(|s| s.ptr_eq(&service)) {
                    if subscribed.len() >= limit {
                        return Err(OpError::Invalid(format!(
                            "a client may subscribe to at most {limit} services"
                        )));
                    }
                    subscribed.push(service.clone());
                }
                self.clients.entry(client_id.clone()).or_insert_with(|| {
                    self.stats.count_client(&client_id, 1);
                    Client::new()
                });
                self.send_service_op(
                    service,
                    ServiceOp::Subscribe {
                        subscriber,
                        clusters,
                    },
                );
                Ok(OpOutcome::Changed)
            }
            ClientOp::Unsubscribe { service } => {
                let ClientId::Conn(subscriber) = client_id else {
                    return Ok(OpOutcome::Unchanged);
                };
                let Some(subscribed) = self.subscriptions.get_mut(&subscriber) else {
                    return Ok(OpOutcome::Unchanged);
                };
                let before = subscribed.len();
                subscribed.retain(|s| s != &service);
                if subscribed.len() == before {
                    return Ok(OpOutcome::Unchanged);
                }
                if subscribed.is_empty() {
                    self.subscriptions.remove(&subscriber);
                }
                self.send_service_op(service, ServiceOp::Unsubscribe { subscriber });
                self.drop_client_if_empty(&client_id);
                Ok(OpOutcome::Changed)
            }
            ClientOp::Disconnect => {
                let Some(client) = self.clients.swap_remove(&client_id) else {
                    return Ok(OpOutcome::Unchanged);
                };
                self.stats.count_client(&client_id, -1);
                for entry in &client.publishes {
                    self.digest_entry(&client_id, None, entry.rev, false);
                }
                if !client.publishes.is_empty() {
                    self.note_native_change(&client_id, None);
                }
                for entry in client.publishes {
                    self.send_service_op(
                        entry.service,
                        ServiceOp::Remove {
                            client: client_id.clone(),
                        },
                    );
                }
                if let ClientId::Conn(subscriber) = client_id {
                    for service in self.subscriptions.remove(&subscriber).unwrap_or_default() {
                        self.send_service_op(service, ServiceOp::Unsubscribe { subscriber });
                    }
                }
                Ok(OpOutcome::Changed)
            }
        }
    }

    /// Replaces the client's publish in `service`; the heart of register, batch and update.
    fn set_publish(
        &mut self,
        client_id: ClientId,
        service: ServiceKey,
        publish: Publish,
    ) -> OpResult {
        let now_ms = self.now.mono_ms;
        let limit = self.cfg.max_services_per_client;
        let service = self.interner.service(service);
        let client = self.clients.entry(client_id.clone()).or_insert_with(|| {
            self.stats.count_client(&client_id, 1);
            Client::new()
        });
        let old_rev = match client.entry(&service) {
            Ok(pos) => {
                let entry = &mut client.publishes[pos];
                entry.last_beat_ms = now_ms;
                if entry.publish == publish {
                    return Ok(OpOutcome::Unchanged);
                }
                entry.publish = publish.clone();
                let rev = next_rev(&mut self.clock, self.now.unix_ms);
                client.revision = rev;
                Some(std::mem::replace(&mut entry.rev, rev))
            }
            Err(pos) => {
                if client.publishes.len() >= limit {
                    return Err(OpError::Invalid(format!(
                        "a client may publish in at most {limit} services"
                    )));
                }
                let rev = next_rev(&mut self.clock, self.now.unix_ms);
                client.revision = rev;
                client.publishes.insert(
                    pos,
                    PublishEntry {
                        service: service.clone(),
                        publish: publish.clone(),
                        last_beat_ms: now_ms,
                        rev,
                    },
                );
                None
            }
        };
        let rev = client.revision;
        self.native_entry_changed(&client_id, &service, old_rev, Some(rev));
        self.send_service_op(
            service,
            ServiceOp::Upsert {
                client: client_id,
                publish,
            },
        );
        Ok(OpOutcome::Changed)
    }

    fn set_health(&mut self, client_id: &ClientId, service: &ServiceKey, healthy: bool) {
        let Some(client) = self.clients.get_mut(client_id) else {
            return;
        };
        let Some(pos) = client.entry(service).ok() else {
            return;
        };
        let entry = &mut client.publishes[pos];
        if entry.publish.iter().all(|i| i.healthy == healthy) {
            return;
        }
        let publish: Publish = entry
            .publish
            .iter()
            .map(|i| i.with_health(healthy))
            .collect::<Vec<_>>()
            .into();
        entry.publish = publish.clone();
        let rev = next_rev(&mut self.clock, self.now.unix_ms);
        let old_rev = std::mem::replace(&mut entry.rev, rev);
        client.revision = rev;
        let service = entry.service.clone();
        self.native_entry_changed(client_id, &service, Some(old_rev), Some(rev));
        self.send_service_op(
            service,
            ServiceOp::Upsert {
                client: client_id.clone(),
                publish,
            },
        );
    }

    fn drop_client_if_empty(&mut self, client_id: &ClientId) {
        let subscribes = match client_id {
            ClientId::Conn(id) => self.subscriptions.contains_key(id),
            _ => false,
        };
        let empty = !subscribes
            && self
                .clients
                .get(client_id)
                .is_some_and(|c| c.publishes.is_empty());
        if empty {
            self.clients.swap_remove(client_id);
            self.stats.count_client(client_id, -1);
            if !self.pause_stale.is_empty() {
                self.pause_stale.remove(client_id);
            }
            self.note_owned_removal(client_id);
        }
    }

    /// A peer deleted one of our heartbeat clients while we did not run (it held the
    /// client meanwhile, see `check_heartbeats`): its `Drop`, newer than our copy, wins.
    /// Returns whether it was applied.
    pub(super) fn accept_drop_after_pause(&mut self, client_id: &ClientId, rev: u64) -> bool {
        if !self.pause_stale.contains(client_id) {
            return false;
        }
        let Some(client) = self.clients.get_mut(client_id) else {
            return false;
        };
        if client.replica.is_some() || client.publishes.iter().any(|e| e.rev >= rev) {
            return false;
        }
        self.pause_stale.remove(client_id);
        let entries = std::mem::take(&mut client.publishes);
        client.revision = next_rev(&mut self.clock, self.now.unix_ms);
        for entry in entries {
            self.native_entry_changed(client_id, &entry.service, Some(entry.rev), None);
            self.send_service_op(
                entry.service,
                ServiceOp::Remove {
                    client: client_id.clone(),
                },
            );
        }
        self.drop_client_if_empty(client_id);
        true
    }

    /// Marks heartbeat instances unhealthy, or removes them, when their beats stopped (Nacos's
    /// UnhealthyInstanceChecker and ExpiredInstanceChecker).
    fn check_heartbeats(&mut self) {
        let now_ms = self.now.mono_ms;
        let interval = self.cfg.beat_check_interval_ms;
        let gap = now_ms.saturating_sub(self.last_beat_check_ms);
        self.last_beat_check_ms = now_ms;
        if gap > 3 * interval {
            // This process did not run (SIGSTOP, a VM pause, a stalled machine): the
            // clients' beats went to other nodes or wait unread in our sockets, so silence
            // measured across the gap proves nothing. Shift every clock by the time we were
            // stopped; expired now, a live client would flap, and a dead one that a peer still
            // holds would come back with its hand-over (the chaos harness's pause scenario).
            //
            // In a cluster the members took our clients over while we were DOWN and expired
            // the dead ones: until a client is heard from again, a peer's `Drop` of it wins
            // over our copy (see `accept_drop_after_pause`); kept and listed by our verify
            // instead, it would be resynced back onto the peers that had expired it.
            if self.distro.is_some() {
                self.pause_stale = self
                    .clients
                    .iter()
                    .filter(|(id, c)| id.is_heartbeat() && c.replica.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
            }
            let stopped = gap - interval;
            self.stats
                .paused_beat_checks
                .fetch_add(1, Ordering::Relaxed);
            for client in self.clients.values_mut() {
                for entry in &mut client.publishes {
                    entry.last_beat_ms = entry.last_beat_ms.saturating_add(stopped).min(now_ms);
                }
            }
        }
        let mut unhealthy: Vec<(ClientId, ServiceKey)> = Vec::new();
        let mut expired: Vec<(ClientId, ServiceKey)> = Vec::new();
        let distro_members = self.distro_members();
        for (id, client) in &self.clients {
            // Copies of a peer's clients are expired by their owner, not here. So are the
            // clients we hold for a responsible node that did not answer (a write applied
            // here while it was unreachable) and those we are handing over: the client
            // beats one node, not necessarily us, and only the responsible node hears every
            // beat (they are forwarded to it). Held here, they are handed over as soon as the
            // responsible node answers or is declared DOWN.
            if !id.is_heartbeat()
                || client.replica.is_some()
                || distro_members.is_some_and(|m| !m.is_mine(id))
            {
                continue;
            }
            for entry in &client.publishes {
                let silent = now_ms.saturating_sub(entry.last_beat_ms);
                let Some(timing) = entry.publish.first().map(|i| i.timing()) else {
                    continue;
                };
                if silent > u64::from(timing.delete_ms) {
                    expired.push((id.clone(), entry.service.clone()));
                } else if silent > u64::from(timing.timeout_ms)
                    && entry.publish.iter().any(|i| i.healthy)
                {
                    unhealthy.push((id.clone(), entry.service.clone()));
                }
            }
        }
        for (id, service) in unhealthy {
            self.stats.unhealthy_marks.fetch_add(1, Ordering::Relaxed);
            self.set_health(&id, &service, false);
        }
        for (id, service) in expired {
            let Some(client) = self.clients.get_mut(&id) else {
                continue;
            };
            let Some(pos) = client.entry(&service).ok() else {
                continue;
            };
            let entry = client.publishes.remove(pos);
            client.revision = next_rev(&mut self.clock, self.now.unix_ms);
            self.native_entry_changed(&id, &entry.service, Some(entry.rev), None);
            self.stats
                .expired_instances
                .fetch_add(entry.publish.len() as u64, Ordering::Relaxed);
            self.send_service_op(entry.service, ServiceOp::Remove { client: id.clone() });
            self.drop_client_if_empty(&id);
        }
    }

    fn service_state(&mut self, service: ServiceKey) -> &mut ServiceState {
        let service = self.interner.service(service);
        if !self.services.contains_key(&service) {
            let stamp = self.index.absent_stamp(&service, self.now.unix_ms);
            let view = Arc::new(ServiceView::empty(service.clone(), stamp));
            let cell = ServiceCell::new(view.clone());
            self.directory_changes
                .push((service.clone(), Some(cell.clone())));
            self.stats.services.fetch_add(1, Ordering::Relaxed);
            self.services.insert(
                service.clone(),
                ServiceState {
                    cell,
                    client_runs: Vec::new(),
                    pending: BTreeMap::new(),
                    subscribers: HashMap::default(),
                    protect_threshold: 0.0,
                    metadata: Metadata::default(),
                    explicit: false,
                    revision: 0,
                    in_dirty_list: false,
                    push_timer_set: false,
                    pushed_revision: 0,
                    view,
                    instance_count: 0,
                },
            );
        }
        match self.services.get_mut(&service) {
            Some(s) => s,
            None => unreachable!("inserted above"),
        }
    }

    fn mark_dirty(&mut self, service: &ServiceKey) {
        if let Some(state) = self.services.get_mut(service) {
            if !state.in_dirty_list {
                state.in_dirty_list = true;
                self.dirty.push(service.clone());
            }
        }
    }

    fn apply_service_op(&mut self, service: ServiceKey, op: ServiceOp) -> OpResult {
        let exists = self.services.contains_key(&service);
        let outcome = match op {
            ServiceOp::Upsert { client, publish } => {
                let state = self.service_state(service.clone());
                if state.current(&client) == Some(&publish) {
                    return Ok(OpOutcome::Unchanged);
                }
                state.pending.insert(client, Some(publish));
                OpOutcome::Changed
            }
            ServiceOp::Remove { client } => {
                let Some(state) = self.services.get_mut(&service) else {
                    return Ok(OpOutcome::Unchanged);
                };
                if state.current(&client).is_none() {
                    return Ok(OpOutcome::Unchanged);
                }
                state.pending.insert(client, None);
                OpOutcome::Changed
            }
            ServiceOp::Subscribe {
                subscriber,
                clusters,
            } => {
                let state = self.service_state(service);
                if state.subscribers.insert(subscriber, clusters).is_none() {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                // The view did not change: nothing to rebuild or push. A new service's empty
                // view reaches the directory at the next flush.
                return Ok(OpOutcome::Changed);
            }
            ServiceOp::Unsubscribe { subscriber } => {
                let Some(state) = self.services.get_mut(&service) else {
                    return Ok(OpOutcome::Unchanged);
                };
                if state.subscribers.remove(&subscriber).is_none() {
                    return Ok(OpOutcome::Unchanged);
                }
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
                let removable =
                    !state.has_publishers() && state.subscribers.is_empty() && !state.explicit;
                if !removable {
                    return Ok(OpOutcome::Changed);
                }
                // Dirty only so that `flush` drops the now unused service.
                OpOutcome::Changed
            }
            ServiceOp::Configure {
                protect_threshold,
                metadata,
                must_exist,
            } => {
                match must_exist {
                    Some(true) if !exists => {
                        return Err(OpError::NotFound(format!("service {service:?} not found")))
                    }
                    Some(false)
                        if exists
                            && self
                                .services
                                .get(&service)
                                .is_some_and(|s| s.explicit || s.has_publishers()) =>
                    {
                        return Err(OpError::Conflict(format!(
                            "service {service:?} already exists"
                        )))
                    }
                    _ => {}
                }
                if let Some(t) = protect_threshold {
                    if !(0.0..=1.0).contains(&t) {
                        return Err(OpError::Invalid(format!(
                            "protectThreshold {t} must be within [0, 1]"
                        )));
                    }
                }
                let state = self.service_state(service.clone());
                state.explicit = true;
                if let Some(t) = protect_threshold {
                    state.protect_threshold = t;
                }
                if let Some(m) = metadata {
                    state.metadata = m;
                }
                OpOutcome::Changed
            }
            ServiceOp::Delete => {
                let Some(state) = self.services.get_mut(&service) else {
                    return Err(OpError::NotFound(format!("service {service:?} not found")));
                };
                if state.has_publishers() {
                    return Err(OpError::Conflict(format!(
                        "service {service:?} has {} instance(s); deregister them first",
                        state.view.instance_count
                    )));
                }
                state.explicit = false;
                OpOutcome::Changed
            }
        };
        self.mark_dirty(&service);
        Ok(outcome)
    }

    fn push(&mut self, service: &ServiceKey) {
        let Some(state) = self.services.get_mut(service) else {
            return;
        };
        state.push_timer_set = false;
        if state.view.revision <= state.pushed_revision {
            return;
        }
        state.pushed_revision = state.view.revision;
        for (subscriber, clusters) in &state.subscribers {
            self.stats.pushes.fetch_add(1, Ordering::Relaxed);
            self.out.push_back(Command::Push {
                subscriber: *subscriber,
                clusters: clusters.clone(),
                view: state.view.clone(),
            });
        }
    }
}
