//! Messages between nodes, the [`Transport`] the server provides, and openraft's
//! `RaftNetwork` on top of it: request/reply by call id, a bounded table of pending calls
//! with timeouts.
//!
//! The transport is fire-and-forget: `send` hands a [`RaftMessage`] to the server, which
//! carries it (over its QUIC peer connections, in the `wire` crate's byte codec) and gives it
//! to the receiving node's [`crate::RaftHandle::deliver`]. A message may be lost; a call
//! whose reply does not come in time fails, and openraft retries.
//!
//! Size bounds: an append carries at most `max_payload_entries` entries, each at most
//! `max_batch_bytes` of commands (plus framing); a snapshot chunk at most 3 MiB; a forwarded
//! batch at most `max_batch_bytes`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::store::StoreResponse;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::EmptyNode;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{Batch, NodeId, TypeConfig};

/// Carries messages to other nodes. Fire-and-forget, callable from the Raft thread; must not
/// block (queue or drop).
pub trait Transport: Send + Sync + 'static {
    /// Sends `msg` to node `to` (dropping it when `to` is unknown or unreachable is fine).
    fn send(&self, to: NodeId, msg: RaftMessage);
}

/// One message between two nodes' Raft runtimes.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftMessage {
    /// A call; the receiver answers with a [`RaftMessage::Reply`] of the same `call`.
    Request {
        /// Call id, unique per sender.
        call: u64,
        /// What is asked.
        body: Request,
    },
    /// The answer to a call.
    Reply {
        /// The call answered.
        call: u64,
        /// The answer.
        body: Reply,
    },
}

/// What a call asks.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft AppendEntries (also heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's batch of client writes for the leader to propose.
    Forward(Batch),
    /// Whether the receiver's Raft state is initialised (used once, to form a new cluster).
    Probe,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Request::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Snapshot`].
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To [`Request::Forward`].
    Forward(Result<Forwarded, ForwardError>),
    /// To [`Request::Probe`].
    Probe {
        /// The receiver has Raft state (a log or a vote).
        initialized: bool,
    },
}

/// A forwarded batch was committed and applied on the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    /// Its log index.
    pub index: u64,
    /// The response of each command, in order.
    pub responses: Vec<StoreResponse>,
}

/// Why a forwarded batch was not (or not surely) written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver is not the leader; nothing was proposed. `leader`: whom it believes is.
    NotLeader {
        /// The receiver's idea of the leader.
        leader: Option<NodeId>,
    },
    /// The receiver's write queue is full; nothing was proposed.
    Busy,
    /// Proposed, but the outcome is unknown (leadership lost, timeout).
    Unknown(String),
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallError {
    /// No reply within the timeout; the request may have been processed.
    Timeout,
    /// Too many calls pending; nothing was sent.
    Overloaded,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("no reply in time"),
            CallError::Overloaded => f.write_str("too many calls pending"),
        }
    }
}

impl std::error::Error for CallError {}

/// Calls in flight: call id → where the reply goes. Bounded.
pub(crate) struct Calls {
    transport: Arc<dyn Transport>,
    /// Call id → (the node called, where its reply goes).
    pending: Mutex<HashMap<u64, (NodeId, oneshot::Sender<Reply>)>>,
    next: AtomicU64,
    max_pending: usize,
}

/// Removes a call from the table when its caller stops waiting (timeout or cancellation).
struct PendingGuard<'a> {
    calls: &'a Calls,
    call: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.calls.lock().remove(&self.call);
    }
}

impl Calls {
    pub(crate) fn new(transport: Arc<dyn Transport>, max_pending: usize) -> Calls {
        Calls {
            transport,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            max_pending,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (NodeId, oneshot::Sender<Reply>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Sends `body` to `to` and waits at most `timeout` for its reply.
    pub(crate) async fn call(
        &self,
        to: NodeId,
        body: Request,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let call = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock();
            if pending.len() >= self.max_pending {
                return Err(CallError::Overloaded);
            }
            pending.insert(call, (to, tx));
        }
        let _guard = PendingGuard { calls: self, call };
        self.transport.send(to, RaftMessage::Request { call, body });
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(CallError::Timeout),
        }
    }

    /// A reply arrived: hands it to its caller (late or unknown replies are dropped).
    pub(crate) fn complete(&self, call: u64, reply: Reply) {
        if let Some((_, tx)) = self.lock().remove(&call) {
            let _ = tx.send(reply);
        }
    }

    /// Fails every call to `to` still waiting for its reply (its caller sees
    /// [`CallError::Timeout`] at once: the request may have been processed).
    pub(crate) fn fail_pending_to(&self, to: NodeId) {
        // Dropping a sender wakes its caller with an error.
        self.lock().retain(|_, (node, _)| *node != to);
    }
}

/// openraft's network factory over [`Calls`].
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) calls: Arc<Calls>,
}

/// A connection to one peer.
pub(crate) struct PeerClient {
    target: NodeId,
    calls: Arc<Calls>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &EmptyNode) -> PeerClient {
        PeerClient {
            target,
            calls: self.calls.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, EmptyNode, RaftError<NodeId, E>>;

fn call_failed<E: std::error::Error>(e: CallError) -> RpcErr<E> {
    match e {
        CallError::Timeout => RPCError::Network(NetworkError::new(&e)),
        CallError::Overloaded => RPCError::Unreachable(Unreachable::new(&e)),
    }
}

fn wrong_reply<E: std::error::Error>(what: &str) -> RpcErr<E> {
    let e = std::io::Error::other(format!("unexpected reply to {what}"));
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self
            .calls
            .call(self.target, Request::Append(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::Append(Ok(r))) => Ok(r),
            Ok(Reply::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(wrong_reply("append")),
            Err(e) => Err(call_failed(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .calls
            .call(self.target, Request::Snapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::Snapshot(Ok(r))) => Ok(r),
            Ok(Reply::Snapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(wrong_reply("snapshot")),
            Err(e) => Err(call_failed(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self
            .calls
            .call(self.target, Request::Vote(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::Vote(Ok(r))) => Ok(r),
            Ok(Reply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(wrong_reply("vote")),
            Err(e) => Err(call_failed(e)),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport that loses everything (a link that is down).
    struct Lost;

    impl Transport for Lost {
        fn send(&self, _to: NodeId, _msg: RaftMessage) {}
    }

    fn vote() -> Request {
        Request::Vote(VoteRequest::new(openraft::Vote::new(1, 1), None))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reconnected_peer_fails_its_pending_calls_at_once_and_only_its() {
        let calls = Arc::new(Calls::new(Arc::new(Lost), 16));
        let to_2 = tokio::spawn({
            let calls = calls.clone();
            async move { calls.call(2, vote(), Duration::from_secs(10)).await }
        });
        let to_3 = tokio::spawn({
            let calls = calls.clone();
            async move { calls.call(3, vote(), Duration::from_millis(300)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(calls.lock().len(), 2);
        let t0 = std::time::Instant::now();
        calls.fail_pending_to(2);
        assert!(matches!(
            to_2.await.expect("the call task"),
            Err(CallError::Timeout)
        ));
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "failed at once, not at its 10 s timeout"
        );
        // The call to node 3 still waits for its reply, and times out as before.
        assert_eq!(calls.lock().len(), 1);
        assert!(matches!(
            to_3.await.expect("the call task"),
            Err(CallError::Timeout)
        ));
        assert!(calls.lock().is_empty());
    }
}
