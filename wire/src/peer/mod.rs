//! The node-to-node codec: [`Frame`]s between cluster members as flatbuffers
//! (`schemas/peer.fbs`).
//!
//! # Frame format
//! A connection carries a stream of frames, each a `u32` little-endian length `n` followed by
//! `n` bytes of one `Frame` flatbuffer (the *frame body*; no file identifier). The first frame
//! each way is [`Frame::Hello`]. [`FrameReader`] splits a byte stream into bodies and refuses a
//! length over its maximum before buffering it; [`peek_partition`] reads the partition of a
//! body without decoding it, so the IO core can hand the bytes to the core that owns the
//! partition, which then calls [`decode_frame`].
//!
//! # Why flatbuffers, and why this shape
//! Replication moves batches of up to 512 changes and snapshot chunks of 2,000 clients, so the
//! encoder must be cheap: [`Encoder`] reuses one builder and its scratch space for every frame
//! (no allocation per field or per frame once warm), writes scalars equal to their schema
//! default not at all, and shares what repeats inside a frame — a service table written once
//! per distinct service, one copy of each namespace, group, cluster and node string.
//!
//! The bytes come from the network, so decoding trusts nothing: the buffer is verified with
//! bounded depth, table count and apparent size, then every value is checked as a request
//! from a client would be (service keys by [`ServiceKey::new`](engine::ServiceKey::new),
//! instances by [`Instance::from_parts`](engine::Instance::from_parts), metadata parsed as
//! JSON, unknown kinds refused). A peer can make a frame fail; it cannot make this code panic
//! or store what a client could not.
//!
//! # Layout
//! - this file: the shared types ([`Frame`], [`PeerDecodeError`]) and limits;
//! - `encode`: [`Encoder`] and [`encode_frame`];
//! - `decode`: [`decode_frame`] and the checks of every value;
//! - `peek`: [`peek_partition`], routing without decoding;
//! - `framing`: the length prefix and [`FrameReader`].

use std::fmt;

use engine::distro::{NodeId, PeerMsg};
use engine::{ClientId, ClientOp, OpResult};

mod decode;
mod encode;
mod framing;
mod peek;

pub use decode::decode_frame;

pub use encode::{encode_body, encode_frame, Encoder};
pub use framing::FrameReader;
pub use peek::peek_partition;

/// Largest frame body [`FrameReader::default`] accepts (16 MiB). A sync batch of 512
/// one-instance upserts is about 64 KiB and a snapshot chunk of 2,000 one-instance clients
/// about 300 KiB, so this only stops a broken or hostile peer from making a node buffer
/// without bound (and a client publishing in thousands of services still fits).
pub const MAX_FRAME: usize = 16 << 20;

/// Bytes of the length prefix before every frame body.
pub const LENGTH_PREFIX: usize = 4;

/// One message between two nodes.
#[derive(Clone, Debug)]
pub enum Frame {
    /// The first frame on a connection, each way: who is talking, and which run of it (a node
    /// that restarted has a new incarnation, so the peer knows its old state is gone).
    Hello {
        /// The sender.
        node: NodeId,
        /// The sender's incarnation (e.g. its start time).
        incarnation: u64,
    },
    /// Distro traffic of one partition, handled by the core that owns the partition.
    Partition {
        /// Partition, `< PARTITIONS`.
        partition: u16,
        /// The message.
        msg: PeerMsg,
    },
    /// An HTTP write that arrived here for a client another node is responsible for.
    Forward {
        /// Who waits for the answer on the sender, echoed by the [`Frame::ForwardReply`].
        id: ForwardId,
        /// The client the operation is for.
        client: ClientId,
        /// The operation (Register, Deregister, Update or Beat in practice).
        op: ClientOp,
    },
    /// A beat relayed to a node that claims its client (the engine's `Command::RelayBeat`):
    /// applied as a relayed beat, never answered.
    RelayedBeat {
        /// The client.
        client: ClientId,
        /// The beat.
        op: ClientOp,
    },
    /// The outcome of a [`Frame::Forward`].
    ForwardReply {
        /// The forward's id.
        id: ForwardId,
        /// Its outcome.
        result: OpResult,
    },
    /// The members the sender has a working connection to. A member that is down for the
    /// receiver but reachable by a member it can reach is alive (see the server's cluster
    /// module: indirect reachability).
    Reachable {
        /// Members the sender reaches (at most [`MAX_REACHABLE`]).
        up: Vec<NodeId>,
    },
    /// A message of the CP store's Raft runtimes: [`crate::raft`]'s bytes, decoded by
    /// [`crate::raft::decode_raft`] (opaque to this codec, which only carries them).
    Raft {
        /// The encoded message.
        payload: Vec<u8>,
    },
}

/// The waiter of a forwarded write on the node that sent it: the core that holds it and its
/// token there.
///
/// On the wire the two share the `Forward`/`ForwardReply` frames' one `id` field as
/// `token * 256 + core`, and a `Forward` whose id is below 256 (token 0) is a
/// [`Frame::RelayedBeat`]: the layout every released node speaks, kept inside the codec so
/// that no caller packs or unpacks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForwardId {
    /// The sender's core (cores are fewer than 256).
    pub core: u8,
    /// The waiter's token on that core; never 0 (0 marks a relayed beat).
    pub token: u64,
}

impl ForwardId {
    /// The id field's value.
    pub(crate) fn to_wire(self) -> u64 {
        self.token.wrapping_shl(8) | u64::from(self.core)
    }

    /// The id field's value read back.
    pub(crate) fn from_wire(id: u64) -> ForwardId {
        ForwardId {
            core: (id & 0xFF) as u8,
            token: id >> 8,
        }
    }
}

/// Most members a [`Frame::Reachable`] lists (a cluster is a handful of nodes; a bound keeps a
/// hostile frame small).
pub const MAX_REACHABLE: usize = 256;

/// Why bytes from a peer were refused. After any of these the connection's state is unknown,
/// so the caller should close it (the peer reconnects and verify repairs what was lost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerDecodeError {
    /// The body is not a well-formed `Frame` flatbuffer: truncated, corrupt, or over the
    /// verifier's depth, table or size limits.
    Malformed(String),
    /// Well-formed, but a value is missing, of an unknown kind, or not acceptable.
    Invalid(String),
    /// A length prefix announced a frame body larger than the reader's maximum.
    TooLarge {
        /// Announced length.
        len: usize,
        /// Largest accepted.
        max: usize,
    },
}

impl fmt::Display for PeerDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerDecodeError::Malformed(m) => write!(f, "malformed peer frame: {m}"),
            PeerDecodeError::Invalid(m) => write!(f, "invalid peer frame: {m}"),
            PeerDecodeError::TooLarge { len, max } => {
                write!(f, "peer frame of {len} bytes is over the limit of {max}")
            }
        }
    }
}

impl std::error::Error for PeerDecodeError {}

fn invalid(msg: impl Into<String>) -> PeerDecodeError {
    PeerDecodeError::Invalid(msg.into())
}

/// How many distinct cluster names or node ids one frame's decoder keeps to share: a frame has
/// a handful, and a bound keeps a hostile frame from making the lookups quadratic.
const SHARED_STRINGS: usize = 8;
