//! The startup load's pacing, driven by hand: which `SnapshotRequest`s a loading shard sends
//! as chunks arrive (or do not) over virtual time.

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

use std::sync::Arc;

use engine::distro::{
    ClientState, DistroConfig, EntryState, Health, Members, NodeId, PeerMsg, PARTITIONS,
};
use engine::{ClientId, Command, Host, Instance, Now, ReadIndex, ServiceKey, Shard, ShardConfig};

fn now(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        unix_ms: 1_700_000_000_000 + ms,
    }
}

/// One shard of node 10.0.0.1 that has just started, with node 10.0.0.2 UP, and the
/// snapshot request it sent for each partition (partition → request id).
fn loading_shard() -> (Shard, NodeId, Vec<(u16, u64)>) {
    let cfg = ShardConfig {
        shard_count: 1,
        distro: Some(DistroConfig::default()),
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(0, cfg, ReadIndex::new(1, 1 << 20), now(0));
    let peer = NodeId::new("10.0.0.2:8848");
    shard.handle_members(
        now(0),
        Members {
            me: Some(NodeId::new("10.0.0.1:8848")),
            peers: vec![(peer.clone(), Health::Up)],
        },
    );
    let requests = snapshot_requests(&mut shard);
    assert_eq!(
        requests.len(),
        usize::from(PARTITIONS),
        "one request per partition"
    );
    (shard, peer, requests)
}

fn snapshot_requests(shard: &mut Shard) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    while let Some(cmd) = shard.poll_command() {
        if let Command::Peer {
            partition,
            msg: PeerMsg::SnapshotRequest { id },
            ..
        } = cmd
        {
            out.push((partition, id));
        }
    }
    out
}

/// A (not final) chunk of partition `p` holding one connection client of the peer.
fn chunk(p: u16, id: u64, seq: u64) -> PeerMsg {
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "svc").unwrap();
    let instance = Instance::new(
        Host::V4([10, 1, 0, 1].into()),
        8080 + seq as u16,
        Arc::from("DEFAULT"),
    );
    let client = ClientId::Conn(u64::from(p) + u64::from(PARTITIONS) * (seq + 1));
    PeerMsg::SnapshotChunk {
        id,
        seq,
        clients: vec![(
            NodeId::new("10.0.0.2:8848"),
            ClientState {
                client,
                rev: 10 + seq,
                entries: vec![EntryState {
                    service,
                    rev: 10 + seq,
                    publish: Arc::from(vec![instance]),
                }],
            },
        )],
        done: false,
    }
}

/// Advances the shard's timers up to `to_ms` in 100 ms steps, returning the snapshot
/// requests it sent meanwhile.
fn run_until(shard: &mut Shard, from_ms: u64, to_ms: u64) -> Vec<(u16, u64)> {
    let mut sent = Vec::new();
    let mut t = from_ms;
    while t < to_ms {
        t += 100;
        if shard.poll_timeout().is_some_and(|at| at <= t) {
            shard.handle_timeout(now(t));
        }
        sent.extend(snapshot_requests(shard));
    }
    sent
}

#[test]
fn a_partition_queued_behind_a_streaming_peer_is_not_asked_again() {
    let (mut shard, peer, requests) = loading_shard();
    let (busy, busy_id) = requests[0];
    // The peer streams partition `busy` for 4 s, one chunk every 500 ms; every other
    // partition is still waiting for its first chunk (queued behind the peer's window).
    let mut t = 0;
    for seq in 0..8 {
        let again = run_until(&mut shard, t, t + 500);
        assert!(
            again.is_empty(),
            "re-requested {again:?} at {} ms while the peer was streaming",
            t + 500
        );
        t += 500;
        shard.handle_peer(now(t), peer.clone(), busy, chunk(busy, busy_id, seq));
        let _ = snapshot_requests(&mut shard);
    }
    // The peer goes quiet. It answered (it sent frames after the requests), so the waiting
    // partitions are queued, not lost: nothing is asked again before the stall timeout
    // (3 s), then every partition is, once.
    let again = run_until(&mut shard, t, t + 2_900);
    assert!(
        again.is_empty(),
        "asked again before the stall timeout: {again:?}"
    );
    let again = run_until(&mut shard, t + 2_900, t + 3_200);
    assert_eq!(again.len(), usize::from(PARTITIONS), "{again:?}");
    assert!(again.iter().all(|(_, id)| *id > busy_id));
}

#[test]
fn a_peer_silent_since_the_requests_is_asked_again_after_a_second() {
    // The requests went into a connection the peer still held to this node's previous
    // process: nothing at all comes back.
    let (mut shard, _peer, requests) = loading_shard();
    let again = run_until(&mut shard, 0, 900);
    assert!(again.is_empty(), "{again:?}");
    let again = run_until(&mut shard, 900, 1_200);
    assert_eq!(again.len(), usize::from(PARTITIONS), "{again:?}");
    let first: std::collections::HashMap<u16, u64> = requests.into_iter().collect();
    assert!(
        again.iter().all(|(p, id)| first[p] < *id),
        "new request ids"
    );
}

#[test]
fn a_first_chunk_behind_the_peers_sync_traffic_gets_the_stall_timeout() {
    // The peer got the requests (it keeps sending sync batches) but its stream is busy:
    // leaving it after a second would open a second stream behind the first one.
    let (mut shard, peer, _requests) = loading_shard();
    let mut t = 0;
    for seq in 0..5 {
        let again = run_until(&mut shard, t, t + 500);
        assert!(again.is_empty(), "asked again at {} ms: {again:?}", t + 500);
        t += 500;
        let sync = PeerMsg::Sync {
            seq,
            items: Vec::new(),
        };
        shard.handle_peer(now(t), peer.clone(), 3, sync);
        let _ = snapshot_requests(&mut shard);
    }
    // 2.5 s: still waiting (3 s since the requests went out, no chunk from the peer yet).
    let again = run_until(&mut shard, t, 2_900);
    assert!(again.is_empty(), "{again:?}");
    let again = run_until(&mut shard, 2_900, 3_200);
    assert_eq!(again.len(), usize::from(PARTITIONS), "{again:?}");
}
