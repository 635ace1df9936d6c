//! The CP half on this node: the Raft node that stores persistent instances and service and
//! cluster definitions (`nacelle-raft`), the road from its applied effects into the cores'
//! shards, and the write path the HTTP and gRPC front ends share.
//!
//! ```text
//!  front end (core k) ── write(cmd) ──▶ Raft thread ── commit (fsync on a majority) ──┐
//!        ▲                                                                          apply
//!        │                       effects, in log order, per owning core ◀───────────┘
//!        │                                   │ (bounded channel per core)
//!        └── reply after the views show it ◀─┴── Barrier on the same channel (read-your-writes)
//! ```
//!
//! Every node applies the log, so every node feeds the same effects to its own shards: the
//! persistent instances are in every node's views, served like ephemeral ones. A write is
//! answered once it is committed *and* this node's views show it: its effects reached the
//! owning core's channel before the Raft write resolved, and the barrier that follows them on
//! that channel travels behind them through the shards (`Shard::handle_barrier`).
//!
//! # Layout
//! - this file: startup ([`start`]), the effect dispatch on the Raft thread, the per-core
//!   inbox, [`write`];
//! - [`naming`]: the naming commands the front ends build, and the service-kind rule;
//! - [`peers`]: a cluster's Raft traffic over the QUIC peer layer, and members' Raft ids.

pub mod naming;
pub mod peers;

use std::path::PathBuf;
use std::sync::Arc;

use engine::model::ServiceKey;
use engine::shard::persistent::{action_for, EffectAction};
use engine::shard::{client_shard, ReplyTo, ShardMsg};
use engine::store::{StoreCommand, StoreEffect, StoreResponse};
use engine::view::service_shard;
use tracing::{error, info, warn};

use crate::core::with_core;

/// Messages from the Raft thread (and the front ends' barriers) to one core.
pub enum CpMsg {
    /// Applied effects whose owner is this core, in log order.
    Apply(Vec<EffectAction>),
    /// Namespaces created, changed or deleted (every core gets them all, in log order).
    Namespaces(Vec<engine::store::NamespaceEffect>),
    /// Answer `reply` once everything before this message is in the views (of `service`).
    Barrier {
        /// The service the write changed.
        service: ServiceKey,
        /// The waiter.
        reply: ReplyTo,
    },
}

/// Largest number of effect batches waiting for one core: past it the Raft thread waits for
/// the core (backpressure reaches the log's apply, never unbounded memory).
const INBOX_BATCHES: usize = 4096;
/// Largest number of effects in one batch to a core (a snapshot install yields millions).
const BATCH_EFFECTS: usize = 4096;

/// This node's CP handle, shared by every core.
pub struct Cp {
    raft: raft::RaftHandle,
    inboxes: Vec<flume::Sender<CpMsg>>,
    /// The log index the views must show before clients are answered (see [`Cp::replayed`]).
    replay_target: Option<u64>,
    replay: Arc<Replay>,
}

/// The cores' messages while nobody reads the bounded inboxes yet. Opening the Raft node
/// re-applies the committed log (inside `Raft::new`, before `cp::start` returns, so before the
/// cores that drain the inboxes run): had those effects gone into the bounded inboxes, a log
/// of more than `INBOX_BATCHES` entries would have blocked the Raft thread, and the start,
/// forever. They are queued here (in log order, without bound: what the cores will hold
/// anyway), then a feeder thread moves them into the inboxes; only once it has moved all of
/// them do messages go to the inboxes directly again, so no message overtakes an older one.
struct Replay {
    queued: std::sync::Mutex<Option<Vec<(usize, CpMsg)>>>,
}

impl Replay {
    /// Queues `msg` for `core` while replaying; gives it back once messages go directly.
    fn queue(&self, core: usize, msg: CpMsg) -> Option<CpMsg> {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        match q.as_mut() {
            Some(v) => {
                v.push((core, msg));
                None
            }
            None => Some(msg),
        }
    }

    /// Moves the queued messages into the inboxes (blocking while a core is behind), until
    /// none is left; then messages go directly.
    fn feed(&self, inboxes: &[flume::Sender<CpMsg>]) {
        loop {
            let batch = {
                let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
                match q.as_mut() {
                    Some(v) if !v.is_empty() => std::mem::take(v),
                    _ => {
                        *q = None;
                        return;
                    }
                }
            };
            for (core, msg) in batch {
                if inboxes[core].send(msg).is_err() {
                    warn!(
                        core,
                        "core inbox closed: replayed effects dropped (shutting down)"
                    );
                    *self.queued.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return;
                }
            }
        }
    }
}

/// What a CP write can end in besides the store's own answer.
#[derive(Debug)]
pub enum CpError {
    /// No leader within the bound, or the node is shutting down: Nacos's 503.
    Unavailable(String),
    /// Nacos's service-kind rule: an instance of the other kind than the service holds
    /// (a `NacosRuntimeException` in Nacos, whose text carries its code).
    KindRule(String),
    /// The store refused the command (`code`: 400, 404 or 409).
    Refused {
        /// HTTP-like code.
        code: u16,
        /// Message.
        message: String,
    },
}

/// Where the Raft store lives, and who is in the group.
pub struct CpConfig {
    /// `<data-dir>`; the Raft files go to `<data-dir>/raft`.
    pub data_dir: PathBuf,
    /// Number of cores.
    pub cores: usize,
    /// Who is in the Raft group.
    pub group: Group,
}

/// The Raft group this node is in.
pub enum Group {
    /// A one-voter group (no peers, no flags).
    Standalone,
    /// The cluster's members, one voter each; messages go through `outbox` to core 0.
    Cluster {
        /// This node.
        me: engine::distro::NodeId,
        /// The other members at start (the list then follows `cluster.conf`).
        peers: Vec<engine::distro::NodeId>,
        /// The Raft thread's transport.
        outbox: peers::PeerOutbox,
    },
}

/// Opens the store (replaying it into the cores' inboxes as they start) and starts the Raft
/// node. Returns the handle and each core's inbox receiver.
pub fn start(cfg: CpConfig) -> Result<(Arc<Cp>, Vec<flume::Receiver<CpMsg>>), String> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..cfg.cores)
        .map(|_| flume::bounded(inbox_batches()))
        .unzip();
    let replay = Arc::new(Replay {
        queued: std::sync::Mutex::new(Some(Vec::new())),
    });
    let dispatch = Dispatch {
        cores: cfg.cores,
        inboxes: senders.clone(),
        replay: replay.clone(),
    };
    let sink = move |index, effects| dispatch.deliver(index, effects);
    let standalone = matches!(cfg.group, Group::Standalone);
    let started = match cfg.group {
        Group::Standalone => {
            let raft_cfg = tuned(raft::RaftConfig::new(
                STANDALONE_ID,
                std::collections::BTreeSet::from([STANDALONE_ID]),
                cfg.data_dir.clone(),
            ));
            raft::RaftNode::start(raft_cfg, NoPeers, sink)
        }
        Group::Cluster { me, peers, outbox } => {
            let id = peers::raft_id(&me);
            let members = peers::raft_ids(&me, &peers);
            info!(raft_id = id, me = %me, voters = members.len(), "Raft group of the cluster");
            let raft_cfg = tuned(raft::RaftConfig::new(id, members, cfg.data_dir.clone()));
            raft::RaftNode::start(raft_cfg, outbox, sink)
        }
    };
    let raft = started.map_err(|e| {
        format!(
            "cannot open the Raft store under {}: {e}",
            cfg.data_dir.display()
        )
    })?;
    info!(data_dir = %cfg.data_dir.display(), "Raft store open");
    // A one-voter group commits its whole log once it leads again, and its committed index
    // on disk may lag (written without an fsync): its target is the last entry. A member of
    // a cluster shows what it knew committed; the rest arrives as replication.
    let replay_target = if standalone {
        raft.committed_at_open().max(raft.metrics().last_log)
    } else {
        raft.committed_at_open()
    };
    let feeder = (replay.clone(), senders.clone());
    std::thread::Builder::new()
        .name("nacelle-cp-replay".into())
        .spawn(move || feeder.0.feed(&feeder.1))
        .map_err(|e| format!("cannot start the replay feeder: {e}"))?;
    Ok((
        Arc::new(Cp {
            raft,
            inboxes: senders,
            replay_target,
            replay,
        }),
        receivers,
    ))
}

/// The inbox bound, `INBOX_BATCHES` unless `NACELLE_CP_INBOX_BATCHES` says otherwise: tests
/// make it tiny to replay a log far longer than the inboxes hold (`tests/persistent_replay.rs`).
fn inbox_batches() -> usize {
    std::env::var("NACELLE_CP_INBOX_BATCHES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(INBOX_BATCHES)
}

/// The snapshot cadence from the environment, for the fault harness (perf/chaos), which
/// needs snapshots and log purges within seconds: `NACELLE_RAFT_SNAPSHOT_EVERY` (entries
/// between snapshots, default 50,000) and `NACELLE_RAFT_KEEP_AFTER_SNAPSHOT` (entries kept
/// behind one, default 1,000). Not flags: no operator needs them.
fn tuned(mut cfg: raft::RaftConfig) -> raft::RaftConfig {
    let var = |name: &str| -> Option<u64> {
        let raw = std::env::var(name).ok()?;
        match raw.parse::<u64>() {
            Ok(v) if v > 0 || name.ends_with("KEEP_AFTER_SNAPSHOT") => Some(v),
            _ => {
                warn!(name, raw, "not a valid count; the default is used");
                None
            }
        }
    };
    if let Some(v) = var("NACELLE_RAFT_SNAPSHOT_EVERY") {
        cfg.snapshot_every = v;
    }
    if let Some(v) = var("NACELLE_RAFT_KEEP_AFTER_SNAPSHOT") {
        cfg.keep_after_snapshot = v;
    }
    cfg
}

/// The Raft id of a standalone node (a one-voter group).
const STANDALONE_ID: raft::NodeId = 1;

/// The transport of a one-voter group: there is nobody to send to.
struct NoPeers;

impl raft::Transport for NoPeers {
    fn send(&self, _to: raft::NodeId, _msg: raft::RaftMessage) {}
}

/// Sends applied effects to the cores that own them (runs on the Raft thread).
struct Dispatch {
    cores: usize,
    inboxes: Vec<flume::Sender<CpMsg>>,
    replay: Arc<Replay>,
}

impl Dispatch {
    fn deliver(&self, log_index: u64, effects: Vec<StoreEffect>) {
        let mut per_core: Vec<Vec<EffectAction>> = (0..self.cores).map(|_| Vec::new()).collect();
        let mut namespaces = Vec::new();
        for effect in effects {
            let effect = match effect {
                StoreEffect::Naming(e) => e,
                StoreEffect::Namespace(e) => {
                    namespaces.push(e);
                    continue;
                }
                StoreEffect::Auth(engine::store::AuthEffect::Changed(space)) => {
                    crate::auth::publish(space);
                    continue;
                }
            };
            let action = match action_for(&effect) {
                Ok(a) => a,
                Err(e) => {
                    error!(log_index, error = %e, ?effect, "stored record refused by the registry; not shown");
                    continue;
                }
            };
            match &action {
                EffectAction::Shard(ShardMsg::Client { client, .. }) => {
                    per_core[client_shard(client, self.cores)].push(action)
                }
                EffectAction::Shard(ShardMsg::Service { service, .. }) => {
                    per_core[service_shard(service, self.cores)].push(action)
                }
                EffectAction::Shard(ShardMsg::BeatRelayed { .. }) => {}
                // Every core probes the instances it owns: each needs the checker settings.
                EffectAction::Cluster { .. } => {
                    for batch in per_core.iter_mut() {
                        batch.push(action.clone());
                    }
                }
            }
        }
        if !namespaces.is_empty() {
            // Few and small: every core keeps the whole table.
            for core in 0..self.cores {
                let msg = CpMsg::Namespaces(namespaces.clone());
                let Some(msg) = self.replay.queue(core, msg) else {
                    continue;
                };
                if self.inboxes[core].send(msg).is_err() {
                    warn!(core, "core inbox closed: effects dropped (shutting down)");
                    return;
                }
            }
        }
        for (core, batch) in per_core.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let mut batch = batch;
            while !batch.is_empty() {
                let rest = batch.split_off(batch.len().min(BATCH_EFFECTS));
                // Blocks the Raft thread while the core is BATCH_EFFECTS * INBOX_BATCHES
                // behind: applying waits rather than queueing without bound.
                let Some(msg) = self.replay.queue(core, CpMsg::Apply(batch)) else {
                    batch = rest;
                    continue;
                };
                if self.inboxes[core].send(msg).is_err() {
                    warn!(core, "core inbox closed: effects dropped (shutting down)");
                    return;
                }
                batch = rest;
            }
        }
    }
}

/// The task that feeds core `id`'s inbox into its shard.
pub async fn run_inbox(rx: flume::Receiver<CpMsg>) {
    while let Ok(msg) = rx.recv_async().await {
        with_core(|c| c.on_cp(msg));
    }
}

impl Cp {
    /// Writes `cmd` through Raft; once committed, waits until this node's views show it
    /// (`barrier`: the core owning the change and the service it changed).
    pub async fn write(
        &self,
        cmd: StoreCommand,
        barrier: Option<(usize, ServiceKey)>,
    ) -> Result<StoreResponse, CpError> {
        let written = self.raft.write(cmd).await.map_err(write_error)?;
        if let StoreResponse::Refused { code, message } = written.response {
            return Err(CpError::Refused { code, message });
        }
        if let Some((core, service)) = barrier {
            let (reply, rx) = with_core(|c| c.cp_waiter());
            // Behind the effects still queued by the replay, if any (see `Replay`).
            if let Some(msg) = self.replay.queue(core, CpMsg::Barrier { service, reply }) {
                if self.inboxes[core].send_async(msg).await.is_err() {
                    return Err(CpError::Unavailable("shutting down".into()));
                }
            }
            // As an ephemeral write's reply: it comes once the owner's flush published
            // the change (a core answers every barrier it is sent).
            let _ = rx.await;
        }
        Ok(written.response)
    }

    /// Writes an auth command through Raft and waits (at most 5 s) until this node applied
    /// it, so that the auth state this node publishes shows it (a follower learns the commit
    /// a little after the leader answered it).
    pub async fn write_auth(
        &self,
        cmd: engine::store::AuthCommand,
    ) -> Result<StoreResponse, CpError> {
        let written = self
            .raft
            .write(StoreCommand::Auth(cmd))
            .await
            .map_err(write_error)?;
        if let StoreResponse::Refused { code, message } = written.response {
            return Err(CpError::Refused { code, message });
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self
            .raft
            .metrics()
            .applied
            .is_none_or(|a| a < written.index)
            && std::time::Instant::now() < until
        {
            glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
        }
        Ok(written.response)
    }

    /// Resolves once this node's views show everything it knew committed when its store
    /// opened: the replay applied up to that index, and every effect it produced published
    /// by every core. Until then a client would see instances vanish across a restart (an
    /// empty list, pushed to subscribers as such), so the front ends wait for this before
    /// answering (their sockets are bound: connections queue in the backlog).
    pub async fn replayed(&self) {
        let Some(target) = self.replay_target else {
            return;
        };
        let started = std::time::Instant::now();
        let mut reported = started;
        while self.raft.metrics().applied.is_none_or(|a| a < target) {
            if reported.elapsed() >= std::time::Duration::from_secs(5) {
                reported = std::time::Instant::now();
                info!(
                    applied = ?self.raft.metrics().applied,
                    target,
                    "replaying the Raft log before answering clients"
                );
            }
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Effects go from the inbox of the core owning the client to the core owning the
        // service: a barrier from every inbox to every core follows all of them.
        let cores = self.inboxes.len();
        for (core, inbox) in self.inboxes.iter().enumerate() {
            for owner in 0..cores {
                let Some(service) = service_owned_by(owner, cores) else {
                    continue;
                };
                let (reply, rx) = with_core(|c| c.cp_waiter());
                // Behind the effects still queued by the replay, if any (see `Replay`).
                if let Some(msg) = self.replay.queue(core, CpMsg::Barrier { service, reply }) {
                    if inbox.send_async(msg).await.is_err() {
                        return;
                    }
                }
                let _ = rx.await;
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        if ms >= 100 {
            info!(
                index = target,
                after_ms = ms,
                "Raft log replayed into the views"
            );
        }
    }

    /// Writes `cmd` through Raft and answers once this core has applied what it changed
    /// (for writes that change no service: namespaces).
    pub async fn write_here(&self, cmd: StoreCommand) -> Result<StoreResponse, CpError> {
        let (core, cores) = with_core(|c| (c.id, c.n));
        let barrier = service_owned_by(core, cores).map(|s| (core, s));
        self.write(cmd, barrier).await
    }

    /// The Raft node's metrics.
    pub fn raft(&self) -> &raft::RaftHandle {
        &self.raft
    }
}

/// A Raft write's failure as the front ends report it.
fn write_error(e: raft::WriteError) -> CpError {
    use raft::WriteError as W;
    match e {
        W::NoLeader => CpError::Unavailable(
            "no Raft leader (an election, or this node is on the minority side of a partition): not written, retry".into(),
        ),
        W::Timeout => CpError::Unavailable(
            "the write was not confirmed in time: it may or may not be applied; retry (writes are idempotent)".into(),
        ),
        W::TooLarge { bytes, max } => CpError::Refused {
            code: 400,
            message: format!("the request is too large to store ({bytes} bytes, at most {max})"),
        },
        W::Busy => CpError::Unavailable("server is over its threshold, retry later".into()),
        W::Shutdown => CpError::Unavailable("this node is shutting down".into()),
        W::Failed(m) => CpError::Unavailable(format!("the Raft store failed: {m}")),
    }
}

/// A service name owned by core `owner` of `cores` (for barriers; never stored).
fn service_owned_by(owner: usize, cores: usize) -> Option<ServiceKey> {
    (0..10_000u32).find_map(|i| {
        let key = ServiceKey::new("", "", &format!("nacelle-barrier-{i}")).ok()?;
        (service_shard(&key, cores) == owner).then_some(key)
    })
}
