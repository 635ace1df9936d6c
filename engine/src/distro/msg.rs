//! The messages Distro peers exchange, as engine types. `wire::peer` turns them into
//! flatbuffers and back; nothing here knows about bytes.
//!
//! Every message belongs to one *partition* of the client space (see
//! [`super::partition_of`]); the transport routes it to the shard that owns the partition on
//! the receiving node, so the whole exchange of one partition stays on one core per node.

use crate::model::{ClientId, Publish, ServiceKey};

/// A node of the cluster, named by its member address `ip:httpPort` as in `cluster.conf`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(pub crate::model::Str);

impl NodeId {
    /// The node called `addr` (`ip:httpPort`).
    pub fn new(addr: &str) -> NodeId {
        NodeId(addr.into())
    }
    /// The member address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One publish of a client as replicated: the service, the revision at which the client last
/// changed it, and the instances.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryState {
    /// Service.
    pub service: ServiceKey,
    /// Revision of the client when this publish last changed.
    pub rev: u64,
    /// Instances (non-empty).
    pub publish: Publish,
}

/// The whole replicated state of one client.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientState {
    /// Client.
    pub client: ClientId,
    /// The client's revision (its newest change); replaces anything older.
    pub rev: u64,
    /// Its publishes, one per service.
    pub entries: Vec<EntryState>,
}

/// One change carried by a [`PeerMsg::Sync`] batch.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncItem {
    /// The client's publish in one service is now `entry`.
    Upsert {
        /// Client.
        client: ClientId,
        /// New publish.
        entry: EntryState,
    },
    /// The client no longer publishes in `service`; `rev` is newer than the removed publish.
    Remove {
        /// Client.
        client: ClientId,
        /// Service.
        service: ServiceKey,
        /// Revision of the removal.
        rev: u64,
    },
    /// Everything the client publishes, replacing what the receiver holds.
    Full(ClientState),
    /// The client is gone (connection closed, heartbeats expired).
    Drop {
        /// Client.
        client: ClientId,
        /// Revision of the removal.
        rev: u64,
    },
}

/// A client of a slice as the verifying node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHash {
    /// Client.
    pub client: ClientId,
    /// Hash of the client's publish revisions ([`super::client_digest`]).
    pub state_hash: u64,
}

/// A message between the Distro cores of two nodes for one partition.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerMsg {
    /// Changes of clients the sender is responsible for. Answered by [`PeerMsg::SyncAck`].
    Sync {
        /// Sender-chosen batch number, echoed by the ack.
        seq: u64,
        /// The changes.
        items: Vec<SyncItem>,
    },
    /// The batch `seq` was applied.
    SyncAck {
        /// Batch number.
        seq: u64,
    },
    /// Verify, step 1: the digest of every client the sender is responsible for in the
    /// partition. Equal digests renew every replica of the partition at once.
    Digest {
        /// Verify round of the sender.
        round: u64,
        /// Sum of the slice digests.
        root: u64,
        /// The sender's revision clock. Every node sees every other's clock each round, so
        /// revision clocks stay together even when a node restarts or its wall clock lags.
        clock: u64,
    },
    /// Verify, step 2 (receiver → sender): the root differed; these are the receiver's slice
    /// digests of the sender's clients.
    SliceDigests {
        /// Round being answered.
        round: u64,
        /// One digest per slice ([`super::SLICES`] entries).
        slices: Vec<u64>,
    },
    /// Verify, step 3 (sender → receiver): the slices that matched, and the client lists of
    /// some that did not. Long lists are split over several messages.
    SliceClients {
        /// Round being answered.
        round: u64,
        /// The sender's revision clock when it listed the clients: an unlisted replica
        /// changed after this is newer than the list and is kept. 0 when the sender is
        /// still loading its snapshot: the list may be incomplete, so nothing is removed.
        as_of: u64,
        /// Slices that matched (renew every replica in them).
        matched: Vec<u16>,
        /// For slices that differ: the slice and every client the sender holds in it.
        lists: Vec<(u16, Vec<ClientHash>)>,
    },
    /// Verify, step 4 (receiver → sender): send these clients' full state.
    Resync {
        /// The clients wanted.
        clients: Vec<ClientId>,
    },
    /// Snapshot, step 1: send everything you hold in this partition.
    SnapshotRequest {
        /// Requester-chosen id.
        id: u64,
    },
    /// Snapshot, step 2: a bounded chunk; `done` on the last one.
    SnapshotChunk {
        /// Request id.
        id: u64,
        /// Chunk number, from 0.
        seq: u64,
        /// Clients and the node responsible for each.
        clients: Vec<(NodeId, ClientState)>,
        /// This is the last chunk.
        done: bool,
    },
    /// Snapshot flow control: the chunk `seq` was applied; send more.
    SnapshotAck {
        /// Request id.
        id: u64,
        /// Chunk number.
        seq: u64,
    },
}
