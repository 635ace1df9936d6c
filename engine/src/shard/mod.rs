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
//!
//! # Layout
//! One [`Shard`] type; its `impl` is split by concern, one file each:
//! - this file: the message and command types, the shard's state, and the driver interface
//!   (`new`, `handle`, `handle_timeout`, `poll_command`, `poll_timeout`);
//! - `ops`: the client operations (one method per [`ClientOp`]), applied by the client's owner;
//! - `service`: the service side — [`ServiceOp`]s, the runs of publishers, the view rebuild in
//!   [`Shard::flush`] and the pushes to subscribers;
//! - `heartbeat`: unhealthy marks and expiry of HTTP heartbeat instances;
//! - [`persistent`]: applied Raft store effects as shard messages (persistent instances);
//! - `replication/`: Distro, the replication between nodes (see its module docs for its files).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use indexmap::IndexMap;
use smallvec::SmallVec;

use crate::distro::{DistroConfig, NodeId, PeerMsg};
use crate::model::{
    ClientId, Host, Instance, Interner, Metadata, Publish, ServiceKey, StableHasher, Str,
};
use crate::view::{DirectoryChange, ReadIndex, ServiceView};

mod heartbeat;
mod ops;
pub mod persistent;
mod replication;
mod service;

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
#[derive(Clone, Debug, PartialEq)]
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
    /// Changes nothing; its reply comes after the flush that publishes every op queued
    /// before it (see [`Shard::handle_barrier`]).
    Barrier,
}

/// A message between shards.
#[derive(Clone, Debug, PartialEq)]
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
///
/// `PartialEq` (manual, below) so that tests can assert the exact commands a shard emits.
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

/// Field by field, except [`Command::Push`]'s view: two pushes are equal when they carry the
/// same published snapshot (`Arc::ptr_eq`). Why not compare views: a [`ServiceView`] holds
/// shared runs of publishes and a handle to the index's memory budget, has no `PartialEq` of
/// its own, and a test that asserts a push means "this snapshot", which it can take from the
/// [`ReadIndex`]; comparing contents would call equal two different publications.
impl PartialEq for Command {
    fn eq(&self, other: &Command) -> bool {
        match (self, other) {
            (
                Command::Send { shard, msg },
                Command::Send {
                    shard: shard2,
                    msg: msg2,
                },
            ) => shard == shard2 && msg == msg2,
            (
                Command::Reply { to, result },
                Command::Reply {
                    to: to2,
                    result: result2,
                },
            ) => to == to2 && result == result2,
            (
                Command::Peer { to, partition, msg },
                Command::Peer {
                    to: to2,
                    partition: partition2,
                    msg: msg2,
                },
            ) => to == to2 && partition == partition2 && msg == msg2,
            (
                Command::RelayBeat { to, client, op },
                Command::RelayBeat {
                    to: to2,
                    client: client2,
                    op: op2,
                },
            ) => to == to2 && client == client2 && op == op2,
            (
                Command::Push {
                    subscriber,
                    clusters,
                    view,
                },
                Command::Push {
                    subscriber: subscriber2,
                    clusters: clusters2,
                    view: view2,
                },
            ) => subscriber == subscriber2 && clusters == clusters2 && Arc::ptr_eq(view, view2),
            _ => false,
        }
    }
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
    /// Of which persistent `ip:port` clients (Nacos's `ip:port#false`, stored through Raft).
    pub persistent_clients: AtomicI64,
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
        if client.is_persistent() {
            self.persistent_clients.fetch_add(delta, Ordering::Relaxed);
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

/// The next value of a shard's revision clock: above everything it gave or saw, and never
/// below the wall clock (shifted), so revisions keep growing across restarts of a node and
/// across a client's move between nodes. 2^16 revisions per millisecond before it runs ahead.
fn next_rev(clock: &mut u64, unix_ms: u64) -> u64 {
    *clock = (*clock + 1).max(unix_ms << 16);
    *clock
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
    services: HashMap<ServiceKey, service::ServiceState, StableHasher>,
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
    /// The node is shutting down (`handle_shutdown`): its heartbeat checks stop deciding.
    shutting_down: bool,
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
            shutting_down: false,
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

    /// Answers `reply` once the views show every change this shard made to `service` so
    /// far: the reply travels behind the service ops already queued for the service's owner
    /// and comes after the owner's next flush.
    ///
    /// Why: a Raft write's effects reach the client's owner on the Raft thread's channel,
    /// apart from the request; a barrier sent on the same channel after the write committed
    /// gives the writer read-your-writes, as an ephemeral write's reply does.
    pub fn handle_barrier(&mut self, now: Now, service: ServiceKey, reply: ReplyTo) {
        self.now = now;
        if self.index.owner_of(&service) == self.id {
            self.deferred_replies
                .push((reply, Ok(OpOutcome::Unchanged)));
        } else {
            self.reply_slot = Some(reply);
            self.send_service_op(service, ServiceOp::Barrier);
            self.reply_slot = None;
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

    /// Drops interned strings nobody uses any more; call now and then (e.g. every minute).
    pub fn collect_garbage(&mut self) {
        self.interner.collect_garbage();
    }

    /// The subscribers of `service` if this shard owns it: (subscriber id, cluster filter).
    pub fn subscribers_of(&self, service: &ServiceKey) -> Vec<(u64, Str)> {
        self.services
            .get(service)
            .map_or_else(Vec::new, |s| s.subscriber_list().collect())
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
                | ServiceOp::Subscribe { .. }
                | ServiceOp::Barrier => self.reply_slot.take(),
                _ => None,
            };
            self.out.push_back(Command::Send {
                shard: owner,
                msg: ShardMsg::Service { service, op, reply },
            });
        }
    }
}
