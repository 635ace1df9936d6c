//! The CP store's Raft messages between nodes: the payload of a peer
//! [`Frame::Raft`](crate::peer::Frame::Raft), the Raft crate's [`RaftMessage`] in postcard.
//!
//! # Why postcard inside a flatbuffer
//! The messages are openraft's own types (append entries, votes, snapshot chunks, with the
//! store's commands inside), whose serde form openraft maintains. Mirroring each of them in
//! `schemas/peer.fbs` would copy openraft's data model into ours for no gain: a Raft message
//! is decoded whole, once, and handed to the Raft thread; nothing routes on a field of it.
//! The flatbuffer frame around it keeps one framing, one hello and one transport for every
//! kind of peer traffic.
//!
//! # Trust
//! The bytes come from a member (mutual TLS), but a member may run another version or be
//! broken, so decoding trusts nothing: a message is at most [`MAX_RAFT_MESSAGE`] bytes with no
//! trailing bytes; postcard refuses a length prefix longer than the bytes that follow, so what
//! a message allocates is bounded by its size; an append carries at most
//! [`MAX_APPEND_ENTRIES`] entries, a forwarded batch at most [`MAX_FORWARD_COMMANDS`]
//! commands, each one a client could have sent
//! ([`check_command`](engine::shard::persistent::check_command)): those are proposed into the
//! log by the receiver. Committed entries are not checked that way — a follower that refused
//! one could never catch up; the registry keeps an invalid record out of its views when it
//! applies it.

use std::fmt;

use raft::{RaftMessage, Request};

/// Largest encoded message accepted: below the peer transport's frame limit (16 MiB), above
/// the Raft crate's largest message (an append of 16 entries of 256 KiB, a 3 MiB snapshot
/// chunk).
pub const MAX_RAFT_MESSAGE: usize = 15 << 20;

/// Largest number of entries in one append.
pub const MAX_APPEND_ENTRIES: usize = 1024;

/// Largest number of commands in one forwarded batch.
pub const MAX_FORWARD_COMMANDS: usize = 65_536;

/// Why bytes are not a Raft message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftDecodeError(pub String);

impl fmt::Display for RaftDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid raft message: {}", self.0)
    }
}

impl std::error::Error for RaftDecodeError {}

/// Encodes `msg` (the payload of a `Frame::Raft`).
pub fn encode_raft(msg: &RaftMessage) -> Result<Vec<u8>, RaftDecodeError> {
    let bytes = postcard::to_stdvec(msg).map_err(|e| RaftDecodeError(e.to_string()))?;
    if bytes.len() > MAX_RAFT_MESSAGE {
        return Err(RaftDecodeError(format!(
            "{} bytes, more than {MAX_RAFT_MESSAGE}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decodes a `Frame::Raft` payload, checking it as the module documentation says.
pub fn decode_raft(bytes: &[u8]) -> Result<RaftMessage, RaftDecodeError> {
    if bytes.len() > MAX_RAFT_MESSAGE {
        return Err(RaftDecodeError(format!(
            "{} bytes, more than {MAX_RAFT_MESSAGE}",
            bytes.len()
        )));
    }
    let (msg, rest) = postcard::take_from_bytes::<RaftMessage>(bytes)
        .map_err(|e| RaftDecodeError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(RaftDecodeError(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    if let RaftMessage::Request { body, .. } = &msg {
        match body {
            Request::Append(append) if append.entries.len() > MAX_APPEND_ENTRIES => {
                return Err(RaftDecodeError(format!(
                    "an append of {} entries, more than {MAX_APPEND_ENTRIES}",
                    append.entries.len()
                )));
            }
            Request::Forward(batch) => {
                if batch.0.len() > MAX_FORWARD_COMMANDS {
                    return Err(RaftDecodeError(format!(
                        "a forwarded batch of {} commands, more than {MAX_FORWARD_COMMANDS}",
                        batch.0.len()
                    )));
                }
                for cmd in &batch.0 {
                    engine::shard::persistent::check_command(cmd)
                        .map_err(|e| RaftDecodeError(format!("forwarded command: {}", e.0)))?;
                }
            }
            _ => {}
        }
    }
    Ok(msg)
}

/// Property of the `raft_message` fuzz target: decoding never panics, and a message that
/// decodes encodes to bytes that decode to the same message (`Debug` shows every field; the
/// openraft types have no `PartialEq` for all of them).
pub fn fuzz_property(data: &[u8]) {
    let Ok(msg) = decode_raft(data) else {
        return;
    };
    let again = encode_raft(&msg).expect("a decoded message encodes");
    let back = decode_raft(&again).expect("a re-encoded message decodes");
    assert_eq!(format!("{msg:?}"), format!("{back:?}"));
}

/// Seeds of the fuzz target and its stable mirror: one message of every kind.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use engine::store::naming::{NamingCommand, PersistentInstance, ServiceRef};
    use engine::store::{StoreCommand, StoreResponse};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
    use raft::{Batch, Entry, ForwardError, Forwarded, Reply};

    let register = |port: u16| {
        StoreCommand::Naming(NamingCommand::Register {
            service: ServiceRef {
                namespace: "public".into(),
                group: "DEFAULT_GROUP".into(),
                name: "db".into(),
            },
            instance: PersistentInstance {
                ip: "127.0.0.1".into(),
                port,
                cluster: "DEFAULT".into(),
                weight: 1.0,
                healthy: true,
                enabled: true,
                metadata: [("k".to_string(), "v".to_string())].into(),
            },
        })
    };
    let log_id = LogId::new(CommittedLeaderId::new(3, 1), 42);
    let messages = [
        (
            "append",
            RaftMessage::Request {
                call: 1,
                body: Request::Append(AppendEntriesRequest {
                    vote: Vote::new_committed(3, 1),
                    prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 41)),
                    entries: vec![Entry {
                        log_id,
                        payload: EntryPayload::Normal(Batch(vec![register(1), register(2)])),
                    }],
                    leader_commit: Some(log_id),
                }),
            },
        ),
        (
            "append-reply",
            RaftMessage::Reply {
                call: 1,
                body: Reply::Append(Ok(AppendEntriesResponse::Success)),
            },
        ),
        (
            "vote",
            RaftMessage::Request {
                call: 2,
                body: Request::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id))),
            },
        ),
        (
            "forward",
            RaftMessage::Request {
                call: 3,
                body: Request::Forward(Batch(vec![register(3)])),
            },
        ),
        (
            "forward-reply",
            RaftMessage::Reply {
                call: 3,
                body: Reply::Forward(Ok(Forwarded {
                    index: 43,
                    responses: vec![StoreResponse::Done { changed: true }],
                })),
            },
        ),
        (
            "forward-refused",
            RaftMessage::Reply {
                call: 4,
                body: Reply::Forward(Err(ForwardError::NotLeader { leader: Some(1) })),
            },
        ),
        (
            "probe",
            RaftMessage::Request {
                call: 5,
                body: Request::Probe,
            },
        ),
    ];
    messages
        .into_iter()
        .map(|(name, m)| (name, encode_raft(&m).expect("seed encodes")))
        .collect()
}
