//! # nacelle-raft
//!
//! Nacelle's CP store: an [openraft] 0.9 group whose log entries are batches of the engine's
//! [`engine::store::StoreCommand`]s, applied in log order to the pure `engine::store::Store`
//! on every member. It holds what Nacos keeps in JRaft — persistent (`ephemeral=false`)
//! instances, service and cluster definitions — in key spaces, so that users, permissions
//! and configuration can join later without a new log format. The server (`server/src/cp/`)
//! starts one node, turns its applied effects into shard messages (persistent instances are
//! then served by the same views, caches and pushes as ephemeral ones), and carries its
//! messages between members (`Transport`; `wire` has the codec). `RAFT.md` at the repository
//! root tells the whole path and its invariants.
//!
//! # Layout
//! - this file: the openraft type configuration ([`TypeConfig`], [`Batch`], [`NodeId`]);
//! - [`node`](RaftNode): the runtime — one Raft thread, the proposer that batches writes and
//!   forwards followers' writes to the leader, the message dispatcher, membership following
//!   the member list, and the [`RaftHandle`] the rest of the server uses;
//! - [`log_store`]: the durable log (segments, group commit, recovery) and the vote;
//! - [`state_machine`]: openraft's state machine over `engine::store`, snapshots;
//! - [`network`]: the messages between nodes, the [`Transport`] trait, request/reply by
//!   call id with a bounded table of pending calls;
//! - [`files`]: the directory lock, atomically written CRC'd state files, [`files::FileError`].
//!
//! # Why a log store of our own
//! The log is an append-only sequence of records, truncated at the tail (a new leader's log
//! wins) and purged at the head (behind a snapshot). What it must do is narrow and has to be
//! exact: acknowledge a batch of appends with one `fdatasync`, call openraft back from the
//! thread that did it, cut a torn last record after a power loss and refuse — naming the file
//! and the offset — anything else that is wrong. `log_store.rs` does exactly that in ~700
//! lines of std file IO: segment files of CRC'd records, one flusher thread.
//! The alternatives, and why not them:
//! - RocksDB (openraft's own `raft-kv-rocksdb` example, and JRaft's log in Nacos): an LSM
//!   tree rewrites an append-only log during compaction (openraft's README warns of the write
//!   amplification), brings a C++ build, and is what the Nacos failure reports point at —
//!   `Corruption … MANIFEST` after an upgrade and back (#12881), `fdatasync … Bad file
//!   descriptor` taking a cluster down (#7237), a `LOG` file growing without bound (#10333).
//!   Its recovery decides on its own what a damaged file means; ours is one function
//!   (`recover_segment`) a reviewer can check against the rule above.
//! - sled: removed from openraft's examples for "abnormal memory and disk usage" (#1273).
//! - `raft-log` (0.4, by openraft's maintainer) and third-party stores on redb or fjall:
//!   pre-1.0 or of unknown quality here, and each would still need the torn-tail rule and
//!   the named errors checked against it; the code to check is about the size of ours.
//!
//! # Durability: what is on disk when
//! - **Log entries** are written to the tail segment (`pwrite`) on the Raft thread and
//!   handed to the flusher thread, which takes every flush request queued meanwhile, runs one
//!   `fdatasync` per segment file concerned, then fires all their callbacks: **group commit**
//!   — one fsync covers every append that arrived while the previous one ran. openraft
//!   counts a member's copy of an entry only once that callback fired, so an entry is
//!   committed when it is fsynced on a majority, and [`RaftHandle::write`] resolves only
//!   after commit *and* apply on this node. The proposer adds a second level of batching:
//!   every write queued while the previous batch was in flight goes into the next entry.
//! - **The vote** is written before openraft acts on it: temp file, `fsync`, `rename`,
//!   `fsync` of the directory.
//! - **A truncation** (entries from an index on are gone) is a record fsynced at once.
//! - **The committed index** is a record written without an fsync of its own: losing it
//!   only means re-applying more of the log at restart.
//! - **A full segment** is fsynced before the next one gets data; a new segment's header is
//!   fsynced and so is the directory.
//! - **Snapshots** (every `snapshot_every` entries, default 50,000) are serialised and
//!   written on a thread of their own: temp file, `fsync`, `rename`, directory `fsync`. Only
//!   then are entries behind them (minus `keep_after_snapshot`) purged: the purge point is a
//!   state file written like the vote, then whole dead segments are deleted.
//! - At start the last segment's torn tail is cut (and the cut fsynced); every other problem
//!   is a [`StartError::Storage`] naming the file. One process per directory (`flock`).
//!
//! # Bounds
//! Writes queued: 16,384 (then [`WriteError::Busy`]); per entry: 4,096 writes and 256 KiB of
//! commands (a larger command is [`WriteError::TooLarge`]); a write waits at most
//! `write_timeout` (3 s) for a leader and its commit ([`WriteError::NoLeader`] when no
//! leader took it, [`WriteError::Timeout`] when one did but the result is unknown); 8
//! batches in flight per node; 16 entries per append message; snapshot chunks of 3 MiB;
//! 4,096 incoming messages queued (then dropped: Raft retries), 4,096 calls awaiting a
//! reply, 256 requests handled at once; 1,024 flush requests queued to the flusher; 4,096
//! entries / 32 MiB of decoded entries cached; a record above 256 MiB is corruption.
//!
//! # Threads
//! - `nacelle-raft-<id>`: a tokio `current_thread` runtime running openraft, the proposer,
//!   the dispatcher and the membership task. The effects sink runs here too, in log order.
//! - `nacelle-raft-fsync`: the flusher (blocking `fdatasync`s off the Raft thread).
//! - short-lived threads that encode and write a snapshot, or decode and write a received one,
//!   so a large store never stalls heartbeats.
//!
//! [`RaftHandle`] is `Send + Sync` and talks to the Raft thread through channels only;
//! awaiting [`RaftHandle::write`] needs no tokio reactor, so the server's glommio cores await
//! it directly. Why a thread of its own rather than a glommio-native runtime: openraft 0.9
//! depends on tokio; 0.10's runtime abstraction is alpha and its single-threaded adapters
//! make the handle `!Send`, which would pin every write to one core
//! (`../shared/nacos-persistent.md` §5).

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
