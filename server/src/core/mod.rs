//! One core: its registry shard, its connections, and the mesh to the other cores.
//!
//! Everything here lives in a thread-local [`Core`] reached through [`with_core`]; handlers
//! borrow it only between awaits, so tonic's `Send` futures never hold it. Requests for a client
//! or service owned elsewhere travel to the owner as batched mesh messages; replies come back the
//! same way. Commands the shard emits are executed after each flush, which runs once per burst
//! (it is scheduled behind the tasks already queued on the core).
//!
//! This file holds the core itself and its shard driver (the mesh, flushes, the shard's
//! commands, timers); [`conns`] the gRPC connections, [`forward`] client writes and the
//! router's commands, [`peer`] frames to and from peer nodes, [`query`] reads of another
//! core's state for the introspection APIs (the console's subscriber list).

mod conns;
mod forward;
mod health;
mod peer;
pub mod query;
mod udp;

pub use conns::ConnState;
pub use peer::CorePeerEvents;
pub use udp::{render_metrics as render_udp_metrics, UDP_SUBSCRIBER};

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use engine::distro::membership::MemberView;
use engine::distro::route::Router;
use engine::distro::NodeId;
use engine::model::{ClientId, Interner, ServiceKey, Str};
use engine::shard::{
    client_shard, ClientOp, Command, Now, OpResult, ReplyTo, Shard, ShardConfig, ShardMsg,
    ShardStats,
};
use engine::view::{ReadIndex, ServiceView};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use tracing::{debug, info, warn};
use wire::peer::encode_body;

use crate::admission::{thread_cpu_time, Admission, Class, Via};
use crate::cluster::{ClusterInfo, PeerIo};
use crate::config::Config;
use crate::metrics::CoreMetrics;
use crate::trace::Traces;

/// Messages between cores.
pub enum CoreMsg {
    /// For the destination's shard.
    Shard(ShardMsg),
    /// The outcome of a request this core submitted.
    Reply {
        /// The waiter's token.
        token: u64,
        /// Outcome.
        result: OpResult,
    },
    /// A push for a connection held by the destination core.
    Push {
        /// Connection id.
        subscriber: u64,
        /// Cluster filter of the subscription.
        clusters: Str,
        /// The view to push.
        view: Arc<ServiceView>,
    },
    /// A frame from a peer node for the partition this core owns (decoded here).
    PeerIn {
        /// Sender.
        from: NodeId,
        /// Frame body.
        body: Bytes,
    },
    /// A frame body for a peer node (to core 0, which holds the transport).
    PeerOut {
        /// Destination.
        to: NodeId,
        /// Frame body.
        body: Bytes,
    },
    /// The membership view changed.
    Members(MemberView),
    /// A peer forwarded an HTTP write for a client this node is responsible for.
    ForwardIn {
        /// Sender, which waits for the answer.
        from: NodeId,
        /// Its id of the forward.
        id: wire::peer::ForwardId,
        /// Client.
        client: ClientId,
        /// Operation.
        op: ClientOp,
    },
    /// A list call's UDP push target, for the core owning the service.
    UdpSubscribe(Box<engine::udp_push::Subscription>),
    /// A read of another core's state for an introspection API (`query::on_core`).
    Run(query::Job),
}

/// A batch of messages from one core to another (one wake-up per batch, not per message).
pub type MeshBatch = Vec<CoreMsg>;

/// State all cores share (read-only after start, or atomics).
pub struct Shared {
    /// Settings.
    pub cfg: Config,
    /// The published views.
    pub index: Arc<ReadIndex>,
    /// Each core's shard counters, set when the core starts.
    pub shard_stats: Vec<OnceLock<Arc<ShardStats>>>,
    /// Each core's UDP push counters, set when its push socket opens.
    pub udp_stats: Vec<OnceLock<Arc<engine::udp_push::UdpPushStats>>>,
    /// Each core's request metrics.
    pub metrics: Vec<Arc<CoreMetrics>>,
    /// Origin of the monotonic clock given to shards.
    pub mono_origin: Instant,
    /// High bits of this process's connection ids: unique per run, so that peers never
    /// mistake a new connection for one of an earlier run of this node.
    pub conn_prefix: u64,
    /// The cluster, if this node is in one.
    pub cluster: Option<Arc<ClusterInfo>>,
    /// The CP half (Raft store of persistent instances and definitions); `None` only in
    /// tests of the AP half alone.
    pub cp: Arc<crate::cp::Cp>,
    /// Set on SIGTERM/SIGINT: the node refuses client writes (they fail over to another
    /// node) while it delivers what it already accepted to its peers.
    pub draining: std::sync::atomic::AtomicBool,
}

/// 24 bits that differ between runs of the process (time and pid mixed).
fn conn_prefix() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = engine::model::stable_hash(&(nanos, std::process::id()));
    (mixed & 0xFF_FFFF).max(1)
}

impl Shared {
    /// New shared state for `cfg.cores` cores.
    pub fn new(
        cfg: Config,
        cluster: Option<Arc<ClusterInfo>>,
        cp: Arc<crate::cp::Cp>,
    ) -> Arc<Shared> {
        let n = cfg.cores;
        Arc::new(Shared {
            index: ReadIndex::new(n, cfg.cache_bytes),
            shard_stats: (0..n).map(|_| OnceLock::new()).collect(),
            udp_stats: (0..n).map(|_| OnceLock::new()).collect(),
            metrics: (0..n).map(|_| Arc::new(CoreMetrics::default())).collect(),
            mono_origin: Instant::now(),
            conn_prefix: conn_prefix(),
            cluster,
            cp,
            draining: std::sync::atomic::AtomicBool::new(false),
            cfg,
        })
    }

    /// The current time for shards.
    pub fn now(&self) -> Now {
        Now {
            mono_ms: self.mono_origin.elapsed().as_millis() as u64,
            unix_ms: unix_ms(),
        }
    }

    /// Sum of one shard counter over the cores.
    pub fn stat(&self, get: impl Fn(&ShardStats) -> i64) -> i64 {
        self.shard_stats
            .iter()
            .filter_map(|s| s.get())
            .map(|s| get(s))
            .sum()
    }
}

impl crate::metrics::ClusterSource for Shared {
    fn cluster(&self) -> Option<&ClusterInfo> {
        self.cluster.as_deref()
    }

    fn shard_stats(&self) -> &[OnceLock<Arc<ShardStats>>] {
        &self.shard_stats
    }
}

/// Wall-clock unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Returned when a core refuses work because its queues to other cores are full.
#[derive(Debug)]
pub struct Overloaded;

/// A core's state. See the module docs.
pub struct Core {
    /// This core's index.
    pub id: usize,
    /// Number of cores.
    pub n: usize,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Interns strings of parsed requests.
    pub interner: Interner,
    /// gRPC connections held by this core.
    pub conns: HashMap<u64, ConnState>,
    /// This core's metrics.
    pub metrics: Arc<CoreMetrics>,
    shard: Shard,
    replies: HashMap<u64, oneshot::Sender<OpResult>>,
    next_token: u64,
    next_conn_seq: u64,
    outq: Vec<Vec<CoreMsg>>,
    doorbells: Vec<Option<LocalSender<()>>>,
    flush_scheduled: bool,
    /// Where client writes go (the engine's policy: forwards, detours, deferred
    /// deregistrations, fallbacks), with the membership view as last seen.
    router: Router,
    /// Core 0 of a cluster node: the peer transport.
    peer_io: Option<Rc<RefCell<PeerIo>>>,
    /// Requests forwarded to us, by our waiter token: who waits, and their id.
    remote_waiters: HashMap<u64, (NodeId, wire::peer::ForwardId)>,
    /// Whether "startup snapshot loaded" was logged.
    load_logged: bool,
    /// When the load's progress was last logged (while it takes long).
    last_load_report: Option<Instant>,
    /// Overload shedding.
    admission: Admission,
    /// Whether the last tick found the core shedding (to log transitions once).
    was_shedding: bool,
    /// `NACELLE_TRACE_CLIENT`: the one client whose story this core logs (if it owns it).
    trace: Option<Traces>,
    /// Cluster definitions from the Raft store (health checker settings), by service and
    /// cluster name; absent = Nacos's defaults (TCP on the instance's port).
    cluster_defs: HashMap<(ServiceKey, Str), engine::store::naming::ClusterDefinition>,
    /// Health checks of the persistent instances this core owns.
    health: health::HealthDriver,
    /// UDP push of the services this core owns (`None` if its socket could not open).
    udp: Option<udp::UdpCore>,
    /// The console's namespaces from the Raft store (every core holds them all).
    pub namespaces: std::collections::BTreeMap<String, engine::store::namespaces::NamespaceRecord>,
}

thread_local! {
    static CORE: RefCell<Option<Core>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's core. Never call it re-entrantly (from inside `f`).
pub fn with_core<R>(f: impl FnOnce(&mut Core) -> R) -> R {
    CORE.with(|c| {
        let mut guard = c.borrow_mut();
        match guard.as_mut() {
            Some(core) => f(core),
            None => panic!("with_core called outside a nacelle core thread"),
        }
    })
}

/// Most messages waiting for one peer core before new requests are refused with 503.
const MAX_PENDING_TO_PEER: usize = 200_000;

impl Core {
    /// Installs the core on this thread and starts its background tasks.
    pub async fn install(
        id: usize,
        shared: Arc<Shared>,
        senders: Senders<MeshBatch>,
        mut receivers: Receivers<MeshBatch>,
    ) {
        let n = shared.cfg.cores;
        let cfg = ShardConfig {
            shard_count: n,
            push_delay_ms: shared.cfg.push_delay_ms,
            beat_check_interval_ms: shared.cfg.beat_check_interval_ms,
            distro: shared.cfg.cluster.as_ref().map(|c| c.distro.clone()),
            ..ShardConfig::default()
        };
        let shard = Shard::new(id, cfg, shared.index.clone(), shared.now());
        let _ = shared.shard_stats[id].set(shard.stats().clone());
        let senders = Rc::new(senders);
        let mut doorbells = Vec::with_capacity(n);
        for peer in 0..n {
            if peer == id {
                doorbells.push(None);
                continue;
            }
            let (ring, listen) = local_channel::new_bounded::<()>(1);
            doorbells.push(Some(ring));
            let senders = senders.clone();
            glommio::spawn_local(async move {
                while listen.recv().await.is_some() {
                    let batch = with_core(|c| std::mem::take(&mut c.outq[peer]));
                    if batch.is_empty() {
                        continue;
                    }
                    if senders.send_to(peer, batch).await.is_err() {
                        warn!(peer, "mesh to core closed; dropping messages");
                        return;
                    }
                }
            })
            .detach();
        }
        let shared_lag_ms = shared.cfg.overload_lag_ms;
        let core = Core {
            id,
            n,
            metrics: shared.metrics[id].clone(),
            shared,
            interner: Interner::default(),
            conns: HashMap::new(),
            shard,
            replies: HashMap::new(),
            next_token: 0,
            next_conn_seq: 0,
            outq: (0..n).map(|_| Vec::new()).collect(),
            doorbells,
            flush_scheduled: false,
            router: Router::new(),
            peer_io: None,
            remote_waiters: HashMap::new(),
            load_logged: false,
            last_load_report: None,
            admission: Admission::new(
                Duration::from_millis(shared_lag_ms),
                conn_prefix() ^ id as u64,
            ),
            was_shedding: false,
            trace: Traces::from_env(),
            cluster_defs: HashMap::new(),
            namespaces: Default::default(),
            health: health::HealthDriver::new(conn_prefix() ^ (id as u64).rotate_left(17)),
            udp: None,
        };
        CORE.with(|c| *c.borrow_mut() = Some(core));
        with_core(|c| c.start_udp());

        for (peer, stream) in receivers.streams() {
            glommio::spawn_local(async move {
                while let Some(batch) = stream.recv().await {
                    with_core(|c| {
                        for msg in batch {
                            c.on_core_msg(msg);
                        }
                        c.schedule_flush();
                    });
                    glommio::yield_if_needed().await;
                }
                debug!(peer, "mesh from core closed");
            })
            .detach();
        }
        glommio::spawn_local(timer_loop()).detach();
    }

    /// Starts shutting down: pending changes go to peers now, not at the end of the merge
    /// window. Returns how many changes peers have yet to acknowledge.
    pub fn begin_drain(&mut self) -> usize {
        let now = self.now();
        self.shard.handle_shutdown(now);
        self.execute_commands();
        self.shard.unsynced_changes()
    }

    /// Changes of this core's clients that peers have not acknowledged yet.
    pub fn unsynced_changes(&self) -> usize {
        self.shard.unsynced_changes()
    }

    /// Unacknowledged changes per peer, for the shutdown log.
    pub fn unsynced_by_peer(&self) -> String {
        self.shard
            .unsynced_by_peer()
            .iter()
            .map(|(peer, n)| format!("{peer}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The peer transport, on the core that runs it (core 0 in a cluster).
    pub fn peer_transport(&self) -> Option<crate::peer::transport::Transport> {
        self.peer_io.as_ref().map(|io| io.borrow().transport())
    }

    /// Installs the peer transport handle (core 0).
    pub fn set_peer_io(&mut self, io: Rc<RefCell<PeerIo>>) {
        self.peer_io = Some(io);
    }

    /// Whether every shard of this node has loaded its startup snapshot (always, standalone).
    pub fn all_loaded(&self) -> bool {
        self.shared.shard_stats.iter().all(|s| {
            s.get()
                .is_none_or(|st| st.distro.loaded.load(Ordering::Relaxed))
        }) || self.shared.cluster.is_none()
    }

    /// Gives every core (this one included) a new membership view.
    pub fn broadcast_members(&mut self, view: MemberView) {
        // The Raft group follows the configured member list, whatever their health.
        if let Some(me) = &view.members.me {
            let peers = view.members.peers.iter().map(|(n, _)| n);
            self.shared
                .cp
                .raft()
                .set_members(crate::cp::peers::raft_ids(me, peers));
        }
        for core in 0..self.n {
            if core != self.id {
                self.send_core(core, CoreMsg::Members(view.clone()));
            }
        }
        self.apply_members(view);
    }

    fn apply_members(&mut self, view: MemberView) {
        let now = self.now();
        self.shard.handle_members(now, view.members.clone());
        let label = self
            .trace
            .as_ref()
            .map(|_| format!("members {:?}", view.members.peers));
        self.router.handle_members(now.mono_ms, view);
        self.health_members();
        self.trace_step(|| label.unwrap_or_default());
        self.execute_route_commands();
        self.execute_commands();
    }

    /// Current time for the shard.
    pub fn now(&self) -> Now {
        self.shared.now()
    }

    fn admit(&self, owner: usize) -> Result<(), Overloaded> {
        if owner != self.id && self.outq[owner].len() >= MAX_PENDING_TO_PEER {
            self.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Overloaded);
        }
        Ok(())
    }

    /// A waiter for a CP barrier: completes when the barrier's reply reaches this core.
    pub fn cp_waiter(&mut self) -> (ReplyTo, oneshot::Receiver<OpResult>) {
        self.waiter()
    }

    /// The cluster definitions of `service` (name, definition), from the Raft store.
    pub fn cluster_defs_of(
        &self,
        service: &ServiceKey,
    ) -> Vec<(Str, engine::store::naming::ClusterDefinition)> {
        self.cluster_defs
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, c), d)| (c.clone(), d.clone()))
            .collect()
    }

    /// Applies what the Raft thread (or a front end's barrier) sent this core.
    pub fn on_cp(&mut self, msg: crate::cp::CpMsg) {
        let now = self.now();
        match msg {
            crate::cp::CpMsg::Apply(actions) => {
                for action in actions {
                    match action {
                        engine::shard::persistent::EffectAction::Shard(msg) => {
                            if let ShardMsg::Client {
                                client: ClientId::Persistent(..),
                                op,
                                ..
                            } = &msg
                            {
                                match op {
                                    ClientOp::Register { service, instance } => {
                                        self.health_instance(service, instance)
                                    }
                                    ClientOp::Deregister {
                                        service,
                                        host,
                                        port,
                                        ..
                                    } => self.health_removed(service, host, *port),
                                    _ => {}
                                }
                            }
                            self.shard_handle(now, msg)
                        }
                        engine::shard::persistent::EffectAction::Cluster {
                            service,
                            cluster,
                            definition,
                        } => {
                            match definition {
                                Some(d) => {
                                    self.cluster_defs
                                        .insert((service.clone(), cluster.clone()), d);
                                }
                                None => {
                                    self.cluster_defs
                                        .remove(&(service.clone(), cluster.clone()));
                                }
                            }
                            self.health_cluster(&service, &cluster);
                        }
                    }
                }
            }
            crate::cp::CpMsg::Barrier { service, reply } => {
                self.shard.handle_barrier(now, service, reply)
            }
            crate::cp::CpMsg::Namespaces(changes) => {
                for e in changes {
                    match e.record {
                        Some(r) => self.namespaces.insert(e.id, r),
                        None => self.namespaces.remove(&e.id),
                    };
                }
            }
        }
        self.schedule_flush();
    }

    fn waiter(&mut self) -> (ReplyTo, oneshot::Receiver<OpResult>) {
        let (tx, rx) = oneshot::channel();
        self.next_token += 1;
        self.replies.insert(self.next_token, tx);
        (
            ReplyTo {
                shard: self.id,
                token: self.next_token,
            },
            rx,
        )
    }

    fn route(&mut self, owner: usize, msg: ShardMsg) {
        if owner == self.id {
            let now = self.now();
            self.shard_handle(now, msg);
            self.schedule_flush();
        } else {
            self.send_core(owner, CoreMsg::Shard(msg));
        }
    }

    fn send_core(&mut self, peer: usize, msg: CoreMsg) {
        self.outq[peer].push(msg);
        if let Some(Some(bell)) = self.doorbells.get(peer) {
            // Full means a ring is already pending: the sender will take this message too.
            let _ = bell.try_send(());
        }
    }

    fn on_core_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Shard(msg) => {
                let now = self.now();
                self.shard_handle(now, msg);
            }
            CoreMsg::Reply { token, result } => self.complete(token, result),
            CoreMsg::Push {
                subscriber,
                clusters,
                view,
            } => self.deliver_push(subscriber, &clusters, &view),
            CoreMsg::PeerIn { from, body } => self.on_peer_body(from, body),
            CoreMsg::PeerOut { to, body } => self.send_peer(to, body),
            CoreMsg::Members(view) => self.apply_members(view),
            CoreMsg::ForwardIn {
                from,
                id,
                client,
                op,
            } => self.accept_forward(from, id, client, op),
            CoreMsg::UdpSubscribe(sub) => self.udp_subscribe(*sub),
            CoreMsg::Run(job) => job(self),
        }
    }

    /// Flushes the shard behind the tasks already queued, so a burst is flushed once.
    pub fn schedule_flush(&mut self) {
        if self.flush_scheduled {
            return;
        }
        self.flush_scheduled = true;
        glommio::spawn_local(async {
            futures_lite::future::yield_now().await;
            with_core(|c| c.flush_now());
        })
        .detach();
    }

    fn flush_now(&mut self) {
        self.flush_scheduled = false;
        let now = self.now();
        self.shard.flush(now);
        self.execute_commands();
    }

    /// Applies a shard message here (and traces it if it names the traced client).
    fn shard_handle(&mut self, now: engine::shard::Now, msg: ShardMsg) {
        let label = self.trace.as_ref().map(|t| match &msg {
            ShardMsg::Client { client, op, .. } if t.get(client).is_some() => format!("{op:?}"),
            ShardMsg::BeatRelayed {
                client,
                to_claimants,
                ..
            } if t.get(client).is_some() => {
                format!("BeatRelayed (to claimants: {to_claimants})")
            }
            _ => "another client's op".to_string(),
        });
        self.shard.handle(now, msg);
        self.trace_step(|| label.unwrap_or_default());
    }

    /// Logs what changed about the traced client, if anything, after `input`.
    fn trace_step(&mut self, input: impl FnOnce() -> String) {
        let Some(traces) = self.trace.as_mut() else {
            return;
        };
        let (mut input, mut label) = (Some(input), None::<String>);
        for t in traces.iter_mut() {
            if client_shard(t.client(), self.n) == self.id {
                t.observe(&self.shard, || {
                    label
                        .get_or_insert_with(|| input.take().map_or_else(String::new, |f| f()))
                        .clone()
                });
            }
        }
    }

    fn execute_commands(&mut self) {
        while let Some(cmd) = self.shard.poll_command() {
            if let Some(t) = &self.trace {
                match &cmd {
                    Command::Peer { to, partition, msg } => {
                        t.peer_message("to", to, *partition, msg)
                    }
                    Command::RelayBeat { to, client, .. } => {
                        if let Some(t) = t.get(client) {
                            t.event(format_args!("RelayBeat to {to}"))
                        }
                    }
                    _ => {}
                }
            }
            match cmd {
                Command::Send { shard, msg } => self.send_core(shard, CoreMsg::Shard(msg)),
                Command::Peer { to, partition, msg } => {
                    let is_digest = matches!(msg, engine::distro::PeerMsg::Digest { .. });
                    let body = encode_body(&wire::peer::Frame::Partition { partition, msg });
                    if is_digest {
                        if let Some(info) = &self.shared.cluster {
                            info.stats.digest_frames.fetch_add(1, Ordering::Relaxed);
                            info.stats
                                .digest_bytes
                                .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
                        }
                    }
                    self.send_peer(to, body);
                }
                Command::RelayBeat { to, client, op } => {
                    let body = encode_body(&wire::peer::Frame::RelayedBeat { client, op });
                    self.send_peer(to, body);
                }
                Command::Reply { to, result } => {
                    if to.shard == self.id {
                        self.complete(to.token, result);
                    } else {
                        self.send_core(
                            to.shard,
                            CoreMsg::Reply {
                                token: to.token,
                                result,
                            },
                        );
                    }
                }
                Command::Push {
                    subscriber: UDP_SUBSCRIBER,
                    view,
                    ..
                } => self.udp_view(view),
                Command::Push {
                    subscriber,
                    clusters,
                    view,
                } => {
                    let core = client_shard(&ClientId::Conn(subscriber), self.n);
                    if core == self.id {
                        self.deliver_push(subscriber, &clusters, &view);
                    } else {
                        self.send_core(
                            core,
                            CoreMsg::Push {
                                subscriber,
                                clusters,
                                view,
                            },
                        );
                    }
                }
            }
        }
    }

    fn on_timer(&mut self) {
        let now = self.now();
        if self
            .shard
            .poll_timeout()
            .is_some_and(|at| at <= now.mono_ms)
        {
            self.shard.handle_timeout(now);
            self.trace_step(|| "timer".to_string());
            self.execute_commands();
        }
        if self
            .router
            .poll_timeout()
            .is_some_and(|at| at <= now.mono_ms)
        {
            self.router.handle_timeout(now.mono_ms);
            self.execute_route_commands();
        }
        if !self.load_logged && !self.shard.is_loaded() {
            // A node that takes long to report UP says why, every 5 s.
            let due = match self.last_load_report {
                None => {
                    self.last_load_report = Some(Instant::now());
                    false
                }
                Some(t) => t.elapsed() >= Duration::from_secs(5),
            };
            if due {
                self.last_load_report = Some(Instant::now());
                if let Some(status) = self.shard.load_status() {
                    info!(core = self.id, "startup snapshot still loading: {status}");
                }
            }
        }
        if !self.load_logged && self.shard.is_loaded() {
            self.load_logged = true;
            if self.shared.cluster.is_some() {
                let stats = self.shard.stats();
                info!(
                    core = self.id,
                    after_ms = stats.distro.load_ms.load(Ordering::Relaxed),
                    clients = stats.distro.snapshot_received.load(Ordering::Relaxed),
                    "startup snapshot loaded"
                );
            }
        }
    }

    /// Whether to serve an HTTP request of `class` whose bytes were read at `arrived`, or
    /// refuse it as over threshold (by its wait in the connection, then by the core's lag).
    pub fn admit_request(&mut self, class: Class, arrived: Instant) -> bool {
        let admitted = self
            .admission
            .admit_queued(Via::Http, class, arrived, Instant::now())
            && self.admission.admit(class);
        self.count_shed(class, admitted);
        admitted
    }

    /// Whether to serve a gRPC request of `class` accepted at `arrived`.
    pub fn admit_queued(&mut self, class: Class, arrived: Instant) -> bool {
        let admitted = self
            .admission
            .admit_queued(Via::Grpc, class, arrived, Instant::now());
        self.count_shed(class, admitted);
        admitted
    }

    fn count_shed(&self, class: Class, admitted: bool) {
        if !admitted {
            let counter = match class {
                Class::Write => &self.metrics.shed_writes,
                _ => &self.metrics.shed_reads,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Feeds one housekeeping tick's lag to the admission control.
    fn on_lag(&mut self, lag: Duration, wall: Duration, busy: Duration) {
        self.admission.on_tick(lag, wall, busy);
        let (read, write) = self.admission.shedding();
        let shedding = read > 0.0 || write > 0.0 || self.admission.standing_queue();
        if shedding != self.was_shedding {
            self.was_shedding = shedding;
            if shedding {
                warn!(
                    core = self.id,
                    lag_ms = lag.as_millis() as u64,
                    "core overloaded: shedding part of new requests with 503 over threshold"
                );
            } else {
                info!(
                    core = self.id,
                    "core no longer overloaded: admitting every request"
                );
            }
        }
    }

    /// Periodic housekeeping.
    pub fn collect_garbage(&mut self) {
        self.shard.collect_garbage();
        self.interner.collect_garbage();
    }
}

async fn timer_loop() {
    // Shard timers (push merge windows, heartbeat checks) are due within tens of ms; a 10 ms
    // tick keeps pushes within a tick of their window at no measurable cost.
    let tick = Duration::from_millis(10);
    let mut since_detect = Duration::ZERO;
    let mut since_gc = Duration::ZERO;
    let mut last = Instant::now();
    let mut last_cpu = thread_cpu_time();
    loop {
        glommio::timer::sleep(tick).await;
        since_detect += tick;
        since_gc += tick;
        // How late this tick fired is how long a request arriving now waits for its turn.
        let (now, cpu) = (Instant::now(), thread_cpu_time());
        let wall = now - last;
        let busy = cpu.saturating_sub(last_cpu);
        (last, last_cpu) = (now, cpu);
        with_core(|c| {
            c.on_lag(wall.saturating_sub(tick), wall, busy);
            c.on_timer()
        });
        if since_detect >= Duration::from_secs(1) {
            since_detect = Duration::ZERO;
            with_core(|c| c.detect_idle_clients());
        }
        if since_gc >= Duration::from_secs(60) {
            since_gc = Duration::ZERO;
            with_core(|c| c.collect_garbage());
        }
    }
}
