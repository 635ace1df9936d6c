//! Every message kind survives a round trip through bytes (the server's transport carries
//! them as bytes; postcard here, the `wire` crate's codec there).

mod common;

use common::register;
use engine::store::StoreResponse;
use nacelle_raft::{Batch, Entry, ForwardError, Forwarded, RaftMessage, Reply, Request};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

fn round_trip(msg: RaftMessage) {
    let bytes = postcard::to_stdvec(&msg).expect("encode");
    let back: RaftMessage = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(format!("{msg:?}"), format!("{back:?}"));
    // A cut message is an error, never a panic.
    for cut in [0, 1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
        if cut < bytes.len() {
            let _ = postcard::from_bytes::<RaftMessage>(&bytes[..cut]);
        }
    }
}

#[test]
fn every_message_kind_round_trips_through_postcard() {
    let log_id = LogId::new(CommittedLeaderId::new(3, 1), 42);
    let entry = Entry {
        log_id,
        payload: EntryPayload::Normal(Batch(vec![register("a", 1), register("b", 2)])),
    };
    round_trip(RaftMessage::Request {
        call: 1,
        body: Request::Append(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 41)),
            entries: vec![entry],
            leader_commit: Some(log_id),
        }),
    });
    round_trip(RaftMessage::Request {
        call: 2,
        body: Request::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id))),
    });
    round_trip(RaftMessage::Request {
        call: 3,
        body: Request::Forward(Batch(vec![register("c", 3)])),
    });
    round_trip(RaftMessage::Request {
        call: 4,
        body: Request::Probe,
    });
    round_trip(RaftMessage::Reply {
        call: 1,
        body: Reply::Append(Ok(AppendEntriesResponse::Success)),
    });
    round_trip(RaftMessage::Reply {
        call: 1,
        body: Reply::Append(Err(RaftError::Fatal(Fatal::Stopped))),
    });
    round_trip(RaftMessage::Reply {
        call: 3,
        body: Reply::Forward(Ok(Forwarded {
            index: 42,
            responses: vec![
                StoreResponse::Done { changed: true },
                StoreResponse::Refused {
                    code: 404,
                    message: "no such instance".into(),
                },
            ],
        })),
    });
    round_trip(RaftMessage::Reply {
        call: 3,
        body: Reply::Forward(Err(ForwardError::NotLeader { leader: Some(2) })),
    });
    round_trip(RaftMessage::Reply {
        call: 4,
        body: Reply::Probe { initialized: true },
    });
}
