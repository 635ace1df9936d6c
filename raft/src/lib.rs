//! # nacelle-raft
//!
//! (crate documentation: see the end of the work; placeholder)

#![deny(missing_docs)]

pub mod files;
pub mod log_store;
pub mod network;
mod node;
pub mod state_machine;

pub use network::{ForwardError, Forwarded, RaftMessage, Reply, Request, Transport};
pub use node::{Metrics, RaftConfig, RaftHandle, RaftNode, Role, StartError, WriteError, Written};

use engine::store::StoreCommand;
use serde::{Deserialize, Serialize};

/// A node's id in the Raft group (chosen by the caller, unique per member).
pub type NodeId = u64;

/// The payload of one Raft entry: a batch of client writes, applied in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch(pub Vec<StoreCommand>);

openraft::declare_raft_types!(
    /// openraft's type configuration for Nacelle's CP store.
    pub TypeConfig:
        D = Batch,
        R = Vec<engine::store::StoreResponse>,
        NodeId = NodeId,
        Node = openraft::EmptyNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry of this crate.
pub type Entry = openraft::Entry<TypeConfig>;
