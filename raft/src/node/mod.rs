//! The node runtime: one std thread running openraft on a tokio `current_thread` runtime,
//! and the [`RaftHandle`] every other thread talks to it through (channels only).
//!
//! Tasks on the Raft thread:
//! - the **proposer**: drains the write queue into one batch (bounded by count and bytes),
//!   proposes it as one entry when this node leads, forwards it to the leader otherwise, and
//!   waits for a leader (bounded) when there is none. Up to 8 batches in flight (openraft
//!   pipelines their entries).
//! - the **dispatcher**: incoming messages — replies complete pending calls, requests go to
//!   openraft (bounded number of handlers) or, for forwarded batches, to the proposer.
//! - the **membership** task: forms a new cluster once (the lowest id of the list, when a
//!   majority of the list answers that it is blank too), and, on the leader, makes the Raft
//!   membership follow the member list: new members join as learners and are promoted when
//!   caught up; removed members are removed.
//!
//! Files: this one holds the settings, the errors, the shared context, [`RaftNode::start`] and
//! [`RaftHandle`]; one file per task (`proposer.rs`, `dispatcher.rs`, `membership.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::store::{StoreCommand, StoreEffect, StoreResponse};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, EmptyNode, Raft, ServerState};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::{timeout_at, Instant};

use crate::files::{self, DirLock, FileError};
use crate::log_store::{LogOptions, LogShared, LogStore};
use crate::network::{
    Calls, ForwardError, Forwarded, Network, RaftMessage, Reply, Request, Transport,
};
use crate::state_machine::{SmShared, StateMachine};
use crate::{Batch, NodeId, TypeConfig};

/// Batches of one node in flight at once (each at most `max_batch_writes` writes).
const IN_FLIGHT_BATCHES: usize = 8;

mod dispatcher;
mod membership;
mod proposer;

use dispatcher::dispatcher;
use membership::membership;
use proposer::proposer;

/// Settings of a node. [`RaftConfig::new`] gives the defaults (LAN timings).
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This node's id (unique, stable across restarts).
    pub node_id: NodeId,
    /// The members (this node included); `{node_id}` alone = standalone.
    pub members: BTreeSet<NodeId>,
    /// The data directory; the Raft state lives in `<data_dir>/raft/`.
    pub data_dir: PathBuf,
    /// Leader heartbeat period (default 250 ms).
    pub heartbeat: Duration,
    /// Election timeout range (default 0.75–1.25 s). openraft 0.9 adds a leader lease of the
    /// upper bound when a follower last heard from a leader, so a follower stands for
    /// election 2–2.5 s after the leader's last heartbeat.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is built every this many entries (default 50,000).
    pub snapshot_every: u64,
    /// How long a write may wait for a leader / its commit (default 3 s).
    pub write_timeout: Duration,
    /// Writes per batch (= per Raft entry), at most (default 4,096).
    pub max_batch_writes: usize,
    /// Encoded command bytes per batch, at most (default 256 KiB); a larger single command
    /// is refused.
    pub max_batch_bytes: usize,
    /// Entries per append message, at most (default 16).
    pub max_payload_entries: u64,
    /// Writes queued before `write` answers [`WriteError::Busy`] (default 16,384).
    pub write_queue: usize,
    /// Incoming messages queued before `deliver` drops (default 4,096).
    pub inbound_queue: usize,
    /// Calls to peers waiting for a reply, at most (default 4,096).
    pub max_pending_calls: usize,
    /// A log segment is closed past this size (default 64 MiB).
    pub segment_bytes: u64,
    /// A learner within this many entries of the leader's log is promoted (default 64).
    pub promote_lag: u64,
    /// Entries kept in the log behind a snapshot, for followers slightly behind (default
    /// 1,000); older ones are purged.
    pub keep_after_snapshot: u64,
}

impl RaftConfig {
    /// The defaults for `node_id` in a group of `members` storing under `data_dir`.
    pub fn new(node_id: NodeId, members: BTreeSet<NodeId>, data_dir: impl Into<PathBuf>) -> Self {
        RaftConfig {
            node_id,
            members,
            data_dir: data_dir.into(),
            heartbeat: Duration::from_millis(250),
            election_timeout: (Duration::from_millis(750), Duration::from_millis(1250)),
            snapshot_every: 50_000,
            write_timeout: Duration::from_secs(3),
            max_batch_writes: 4096,
            max_batch_bytes: 256 << 10,
            max_payload_entries: 16,
            write_queue: 16_384,
            inbound_queue: 4096,
            max_pending_calls: 4096,
            segment_bytes: 64 << 20,
            promote_lag: 64,
            keep_after_snapshot: 1000,
        }
    }
}

/// Why a node could not start.
#[derive(Debug)]
pub enum StartError {
    /// The Raft directory is locked, or a file in it is unreadable or corrupt.
    Storage(FileError),
    /// The configuration is invalid.
    Config(String),
    /// openraft or the thread could not start.
    Runtime(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Storage(e) => write!(f, "raft storage: {e}"),
            StartError::Config(e) => write!(f, "raft configuration: {e}"),
            StartError::Runtime(e) => write!(f, "raft runtime: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A write applied: its command's response and the log index of its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// What the store answered.
    pub response: StoreResponse,
    /// The Raft log index of the entry holding it.
    pub index: u64,
}

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// No leader within the bound; the write was not handed to any leader (not written).
    NoLeader,
    /// Handed to a leader, but not confirmed (applied here) within the bound: it may or may
    /// not be applied.
    Timeout,
    /// The command is larger than a batch may be.
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The write queue is full.
    Busy,
    /// The node is shut down (or its Raft thread died).
    Shutdown,
    /// openraft failed (storage error, …); the message says what.
    Failed(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::NoLeader => f.write_str("no Raft leader"),
            WriteError::Timeout => f.write_str("write not confirmed in time (outcome unknown)"),
            WriteError::TooLarge { bytes, max } => {
                write!(f, "command of {bytes} bytes exceeds {max}")
            }
            WriteError::Busy => f.write_str("write queue full"),
            WriteError::Shutdown => f.write_str("raft node shut down"),
            WriteError::Failed(e) => write!(f, "raft: {e}"),
        }
    }
}

impl std::error::Error for WriteError {}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Leads the group.
    Leader,
    /// Follows a leader (a voter).
    Follower,
    /// Standing for election.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    /// Stopped.
    Shutdown,
}

/// What [`RaftHandle::metrics`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Highest committed index known here.
    pub committed: Option<u64>,
    /// Highest index applied to the store here.
    pub applied: Option<u64>,
    /// Last index in the log.
    pub last_log: Option<u64>,
    /// Entries held in the log.
    pub log_entries: u64,
    /// Last index covered by the current snapshot.
    pub snapshot: Option<u64>,
    /// Voters of the current membership.
    pub voters: BTreeSet<NodeId>,
    /// Learners of the current membership.
    pub learners: BTreeSet<NodeId>,
    /// On the leader: per peer, how many entries it is behind the leader's last log index.
    pub replication_lag: BTreeMap<NodeId, u64>,
    /// Records in the store.
    pub records: u64,
    /// fsyncs of the log so far.
    pub fsyncs: u64,
    /// Snapshots built / installed so far.
    pub snapshots_built: u64,
    /// Snapshots received from a leader and installed so far.
    pub snapshots_installed: u64,
    /// Incoming messages dropped because the inbound queue was full.
    pub inbound_dropped: u64,
}

/// One queued client write.
struct Pending {
    cmd: StoreCommand,
    bytes: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<Written, WriteError>>,
}

/// A follower's batch, received by (what it believed is) the leader.
struct Remote {
    from: NodeId,
    call: u64,
    cmds: Vec<StoreCommand>,
    bytes: usize,
    deadline: Instant,
}

enum Proposal {
    Local(Pending),
    Remote(Remote),
}

impl Proposal {
    fn count(&self) -> usize {
        match self {
            Proposal::Local(_) => 1,
            Proposal::Remote(r) => r.cmds.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Proposal::Local(p) => p.bytes,
            Proposal::Remote(r) => r.bytes,
        }
    }

    fn deadline(&self) -> Instant {
        match self {
            Proposal::Local(p) => p.deadline,
            Proposal::Remote(r) => r.deadline,
        }
    }
}

/// Entry point: see [`RaftNode::start`].
pub struct RaftNode;

/// A running node, usable from any thread. Clones share the node.
#[derive(Clone)]
pub struct RaftHandle {
    shared: Arc<HandleShared>,
}

struct HandleShared {
    id: NodeId,
    write_timeout: Duration,
    max_batch_bytes: usize,
    proposals: mpsc::Sender<Proposal>,
    inbound: mpsc::Sender<(NodeId, RaftMessage)>,
    members: watch::Sender<BTreeSet<NodeId>>,
    metrics: watch::Receiver<openraft::RaftMetrics<NodeId, EmptyNode>>,
    log: Arc<LogShared>,
    sm: Arc<SmShared>,
    committed_at_open: Option<u64>,
    inbound_dropped: std::sync::atomic::AtomicU64,
    calls: Arc<Calls>,
    stop: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Drop for HandleShared {
    fn drop(&mut self) {
        stop_and_join(&self.stop);
    }
}

fn stop_and_join(stop: &Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>) {
    let taken = stop.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((tx, thread)) = taken {
        let _ = tx.send(());
        if thread.thread().id() != std::thread::current().id() {
            let _ = thread.join();
        }
    }
}

/// What the Raft thread's tasks share.
struct Ctx {
    id: NodeId,
    raft: Raft<TypeConfig>,
    calls: Arc<Calls>,
    applied: watch::Receiver<u64>,
    proposals: mpsc::Sender<Proposal>,
    write_timeout: Duration,
    max_batch_writes: usize,
    max_batch_bytes: usize,
    promote_lag: u64,
    /// Bounds the follower-side waits for the local apply of forwarded batches.
    apply_waiters: Arc<Semaphore>,
    /// Batches proposed or forwarded and not yet answered (see `proposer`).
    in_flight: Arc<Semaphore>,
    /// Bounds the handlers of incoming requests.
    handlers: Arc<Semaphore>,
}

impl RaftNode {
    /// Opens `<data_dir>/raft/` (locking it), starts the Raft thread and returns the handle.
    /// `effects_sink` is called on the Raft thread, in log order, with every applied entry's
    /// effects (and a loaded or installed snapshot's diff), before the `write` that made
    /// them returns.
    pub fn start<T, F>(
        config: RaftConfig,
        transport: T,
        effects_sink: F,
    ) -> Result<RaftHandle, StartError>
    where
        T: Transport,
        F: FnMut(u64, Vec<StoreEffect>) + Send + 'static,
    {
        if !config.members.contains(&config.node_id) {
            return Err(StartError::Config(format!(
                "the member list {:?} does not hold this node {}",
                config.members, config.node_id
            )));
        }
        let raft_config = openraft::Config {
            cluster_name: "nacelle".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            max_payload_entries: config.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            snapshot_max_chunk_size: 3 << 20,
            max_in_snapshot_log_to_keep: config.keep_after_snapshot,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let (proposals_tx, proposals_rx) = mpsc::channel(config.write_queue.max(1));
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_queue.max(1));
        let (members_tx, members_rx) = watch::channel(config.members.clone());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let transport: Arc<dyn Transport> = Arc::new(transport);
        // Made here so the handle can fail the calls to a peer that reconnected.
        let calls = Arc::new(Calls::new(transport, config.max_pending_calls));
        let calls_for_thread = calls.clone();
        let cfg = config.clone();
        let proposals_for_thread = proposals_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("nacelle-raft-{}", config.node_id))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StartError::Runtime(e.to_string())));
                        return;
                    }
                };
                rt.block_on(run(
                    cfg,
                    Arc::new(raft_config),
                    calls_for_thread,
                    Box::new(effects_sink),
                    Channels {
                        proposals_tx: proposals_for_thread,
                        proposals_rx,
                        inbound_rx,
                        members_rx,
                        stop_rx,
                    },
                    ready_tx,
                ));
            })
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let ready = ready_rx
            .recv()
            .map_err(|_| StartError::Runtime("the Raft thread died while starting".into()));
        let (metrics, log, sm) = match ready.and_then(|r| r) {
            Ok(parts) => parts,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        let committed_at_open = log
            .committed
            .load(std::sync::atomic::Ordering::Relaxed)
            .checked_sub(1);
        Ok(RaftHandle {
            shared: Arc::new(HandleShared {
                id: config.node_id,
                write_timeout: config.write_timeout,
                max_batch_bytes: config.max_batch_bytes,
                proposals: proposals_tx,
                inbound: inbound_tx,
                members: members_tx,
                metrics,
                log,
                sm,
                committed_at_open,
                inbound_dropped: Default::default(),
                calls,
                stop: Mutex::new(Some((stop_tx, thread))),
            }),
        })
    }
}

struct Channels {
    proposals_tx: mpsc::Sender<Proposal>,
    proposals_rx: mpsc::Receiver<Proposal>,
    inbound_rx: mpsc::Receiver<(NodeId, RaftMessage)>,
    members_rx: watch::Receiver<BTreeSet<NodeId>>,
    stop_rx: oneshot::Receiver<()>,
}

type Ready = Result<
    (
        watch::Receiver<openraft::RaftMetrics<NodeId, EmptyNode>>,
        Arc<LogShared>,
        Arc<SmShared>,
    ),
    StartError,
>;

async fn run(
    cfg: RaftConfig,
    raft_config: Arc<openraft::Config>,
    calls: Arc<Calls>,
    sink: crate::state_machine::EffectsSink,
    ch: Channels,
    ready: std::sync::mpsc::SyncSender<Ready>,
) {
    let dir = cfg.data_dir.join("raft");
    let opened = (|| {
        files::ensure_dir(&dir)?;
        let lock = DirLock::acquire(&dir)?;
        files::check_identity(&dir, cfg.node_id)?;
        let log = LogStore::open(
            &dir.join("log"),
            LogOptions {
                segment_bytes: cfg.segment_bytes,
            },
        )?;
        let (sm, applied, sm_shared) = StateMachine::open(&dir.join("snapshot"), sink)?;
        Ok::<_, FileError>((lock, log, sm, applied, sm_shared))
    })();
    let (lock, log, sm, applied, sm_shared) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(StartError::Storage(e)));
            return;
        }
    };
    let log_shared = log.shared();
    let network = Network {
        calls: calls.clone(),
    };
    let raft = match Raft::new(cfg.node_id, raft_config, network, log, sm).await {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(StartError::Runtime(e.to_string())));
            return;
        }
    };
    let ctx = Arc::new(Ctx {
        id: cfg.node_id,
        raft: raft.clone(),
        calls,
        applied,
        proposals: ch.proposals_tx,
        write_timeout: cfg.write_timeout,
        max_batch_writes: cfg.max_batch_writes.max(1),
        max_batch_bytes: cfg.max_batch_bytes,
        promote_lag: cfg.promote_lag,
        apply_waiters: Arc::new(Semaphore::new(64)),
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT_BATCHES)),
        handlers: Arc::new(Semaphore::new(256)),
    });
    if ready
        .send(Ok((raft.metrics(), log_shared, sm_shared)))
        .is_err()
    {
        let _ = raft.shutdown().await;
        return;
    }
    let tasks = [
        tokio::spawn(proposer(ctx.clone(), ch.proposals_rx)),
        tokio::spawn(dispatcher(ctx.clone(), ch.inbound_rx)),
        tokio::spawn(membership(ctx.clone(), ch.members_rx)),
    ];
    let _ = ch.stop_rx.await;
    for t in &tasks {
        t.abort();
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    drop(ctx);
    drop(raft);
    drop(lock);
}

// ---- the proposer ----

impl RaftHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// Writes `cmd` through Raft. Resolves once the command is committed and applied on this
    /// node (its effects already given to the effects sink), or fails within about the write
    /// timeout. Needs no tokio reactor in the caller: any executor can await it.
    pub async fn write(&self, cmd: StoreCommand) -> Result<Written, WriteError> {
        let bytes = postcard::experimental::serialized_size(&cmd)
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        if bytes > self.shared.max_batch_bytes {
            return Err(WriteError::TooLarge {
                bytes,
                max: self.shared.max_batch_bytes,
            });
        }
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            cmd,
            bytes,
            deadline: Instant::now() + self.shared.write_timeout,
            reply: tx,
        };
        self.shared
            .proposals
            .try_send(Proposal::Local(pending))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Busy,
                mpsc::error::TrySendError::Closed(_) => WriteError::Shutdown,
            })?;
        rx.await.unwrap_or(Err(WriteError::Shutdown))
    }

    /// An incoming message from node `from`. Never blocks: dropped when the inbound queue is
    /// full (Raft retries).
    pub fn deliver(&self, from: NodeId, msg: RaftMessage) {
        if self.shared.inbound.try_send((from, msg)).is_err() {
            self.shared
                .inbound_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The transport has a new connection to node `peer` (it reconnected, or the peer
    /// restarted): every call to it still waiting for a reply fails now instead of at its
    /// timeout. Their requests went out on a connection that is gone, or were dropped while
    /// there was none, so their replies most likely never come; a snapshot chunk's call
    /// would otherwise wait out the whole 10 s snapshot timeout before openraft resends it
    /// (perf/chaos `persistent-leader-isolated`). Failing a call whose reply was still
    /// coming only makes openraft send it again, as after any timeout.
    pub fn peer_reconnected(&self, peer: NodeId) {
        self.shared.calls.fail_pending_to(peer);
    }

    /// The member list changed: the leader makes the Raft membership follow it.
    pub fn set_members(&self, members: BTreeSet<NodeId>) {
        self.shared.members.send_replace(members);
    }

    /// The highest index this node knew committed when its store opened (`None`: nothing).
    /// Until it is applied, this node's views show less than it had acknowledged before it
    /// stopped, so the server waits for it before it answers clients.
    pub fn committed_at_open(&self) -> Option<u64> {
        self.shared.committed_at_open
    }

    /// A snapshot of the node's state.
    pub fn metrics(&self) -> Metrics {
        use std::sync::atomic::Ordering::Relaxed;
        let m = self.shared.metrics.borrow();
        let mem = m.membership_config.membership();
        let last_log = m.last_log_index;
        let replication_lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.shared.id)
                    .map(|(id, matched)| {
                        let have = matched.map_or(0, |l| l.index + 1);
                        (*id, last_log.map_or(0, |l| l + 1).saturating_sub(have))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let committed = self.shared.log.committed.load(Relaxed);
        Metrics {
            id: self.shared.id,
            role: match (&m.running_state, m.state) {
                (Err(_), _) => Role::Shutdown,
                (_, ServerState::Leader) => Role::Leader,
                (_, ServerState::Follower) => Role::Follower,
                (_, ServerState::Candidate) => Role::Candidate,
                (_, ServerState::Learner) => Role::Learner,
                (_, ServerState::Shutdown) => Role::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader,
            committed: committed.checked_sub(1),
            applied: m.last_applied.map(|l| l.index),
            last_log,
            log_entries: self.shared.log.entries.load(Relaxed),
            snapshot: m.snapshot.map(|l| l.index),
            voters: mem.voter_ids().collect(),
            learners: mem.learner_ids().collect(),
            replication_lag,
            records: self.shared.sm.records.load(Relaxed),
            fsyncs: self.shared.log.fsyncs.load(Relaxed),
            snapshots_built: self.shared.sm.built.load(Relaxed),
            snapshots_installed: self.shared.sm.installed.load(Relaxed),
            inbound_dropped: self.shared.inbound_dropped.load(Relaxed),
        }
    }

    /// Stops the node: openraft shuts down, the Raft thread ends, the directory lock is
    /// released. Blocks until then (a few ms); later writes fail with `Shutdown`.
    pub fn shutdown(&self) {
        stop_and_join(&self.shared.stop);
    }
}
