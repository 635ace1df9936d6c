//! The Raft group of a cluster over the peer layer: Raft ids of members, the outbox from the
//! Raft thread to core 0 (which owns the QUIC transport), and incoming Raft frames.
//!
//! Raft messages take the same road as Distro frames: one ordered QUIC stream per pair of
//! nodes, mutual TLS, no second port. The Raft thread is not a glommio executor, so it cannot
//! touch the transport: [`PeerOutbox::send`] queues the message (bounded, dropped when full —
//! openraft retries a call that gets no reply) and core 0 encodes and sends it
//! ([`run_outbox`]). Incoming `Frame::Raft`s are decoded on core 0 and handed to the Raft
//! thread ([`deliver`]), which never blocks core 0 either.
//!
//! # Raft ids
//! openraft names nodes by a `u64`; the registry names members by `ip:httpPort`. A member's
//! Raft id is a hash of that name ([`raft_id`]), so every node derives the same ids from the
//! same member list without a coordination step, and a node keeps its id across restarts as
//! long as its address stays (a member whose address changes is a new member: it joins as a
//! learner and the old one is removed, as a replaced node would).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use engine::distro::NodeId;
use tracing::warn;

use crate::cluster::PeerIo;

/// Raft messages waiting for core 0 to send them.
const OUTBOX_MESSAGES: usize = 4096;

/// The Raft id of the member called `name` (`ip:httpPort`): FNV-1a, never 0 or 1 (1 is the
/// id of a standalone node).
pub fn raft_id(member: &NodeId) -> raft::NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.as_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(2)
}

/// The Raft ids of `me` and `peers`.
pub fn raft_ids<'a>(me: &NodeId, peers: impl IntoIterator<Item = &'a NodeId>) -> BTreeSet<u64> {
    std::iter::once(raft_id(me))
        .chain(peers.into_iter().map(raft_id))
        .collect()
}

/// The Raft runtime's transport: a bounded queue to core 0.
pub struct PeerOutbox {
    tx: flume::Sender<(raft::NodeId, raft::RaftMessage)>,
    /// Messages dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

/// Core 0's end of the outbox.
pub type OutboxReceiver = flume::Receiver<(raft::NodeId, raft::RaftMessage)>;

impl PeerOutbox {
    /// A new outbox and the receiver core 0 drains.
    pub fn new() -> (PeerOutbox, OutboxReceiver) {
        let (tx, rx) = flume::bounded(OUTBOX_MESSAGES);
        (
            PeerOutbox {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }
}

impl raft::Transport for PeerOutbox {
    fn send(&self, to: raft::NodeId, msg: raft::RaftMessage) {
        if self.tx.try_send((to, msg)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Core 0: sends what the Raft thread queued, each message to the member with its Raft id.
pub async fn run_outbox(rx: OutboxReceiver, io: Rc<RefCell<PeerIo>>) {
    let mut refused = 0u64;
    while let Ok((to, msg)) = rx.recv_async().await {
        let payload = match wire::raft::encode_raft(&msg) {
            Ok(p) => p,
            Err(e) => {
                refused += 1;
                if refused.is_power_of_two() {
                    warn!(refused, "a Raft message was not sent: {e}");
                }
                continue;
            }
        };
        let body = wire::peer::encode_body(&wire::peer::Frame::Raft { payload });
        {
            let io = io.borrow();
            let node = io.peers().find(|n| raft_id(n) == to).cloned();
            match node {
                Some(node) => io.send(&node, body),
                // A member that left the list: openraft stops calling it once the membership
                // change is committed; until then its calls time out.
                None => io.count_dropped(),
            }
        }
        glommio::yield_if_needed().await;
    }
}

/// Core 0: a `Frame::Raft` payload from member `from`. `Err`: why it was refused.
pub fn deliver(raft: &raft::RaftHandle, from: &NodeId, payload: &[u8]) -> Result<(), String> {
    let msg = wire::raft::decode_raft(payload).map_err(|e| e.to_string())?;
    raft.deliver(raft_id(from), msg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable_distinct_and_never_the_standalone_id() {
        let a = NodeId::new("127.0.0.1:8848");
        let b = NodeId::new("127.0.0.2:8848");
        let c = NodeId::new("127.0.0.1:8849");
        assert_eq!(raft_id(&a), raft_id(&NodeId::new("127.0.0.1:8848")));
        let ids = raft_ids(&a, [&b, &c]);
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|id| *id > 1));
        // Pinned: a node's id must not change between releases (it is in its Raft log).
        // FNV-1a 64 of "127.0.0.1:8848", computed independently.
        assert_eq!(raft_id(&a), 0xd6a3_02ae_2a99_87d0);
    }
}
