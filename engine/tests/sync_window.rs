//! The sync window towards a peer: one window over all the partitions of a shard, taken in
//! turn. Everything towards a peer shares one ordered stream, so a window per partition let a
//! backlog of a quarter million changes queue ahead of a joining peer's snapshot chunks.

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod cluster_shard;

use std::collections::BTreeSet;

use cluster_shard::{loaded_shard, now, register_own_clients, Keep};
use engine::distro::{partition_of, DistroConfig, PeerMsg, PARTITIONS};
use engine::{Command, ServiceKey, Shard};

/// The sync batches the shard sent: (partition, seq).
fn sent_batches(shard: &mut Shard) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    while let Some(cmd) = shard.poll_command() {
        if let Command::Peer {
            partition,
            msg: PeerMsg::Sync { seq, .. },
            ..
        } = cmd
        {
            out.push((partition, seq));
        }
    }
    out
}

#[test]
fn a_backlog_in_every_partition_keeps_one_window_per_peer_and_serves_partitions_in_turn() {
    let distro = DistroConfig {
        max_inflight_batches: 16,
        max_batch_items: 2,
        ..DistroConfig::default()
    };
    let (mut shard, peer) = loaded_shard(distro.clone());
    while shard.poll_command().is_some() {}
    // Three clients in every partition: two batches per partition (2 items each).
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "backlog").unwrap();
    let clients = register_own_clients(&mut shard, &service, 10, |taken, next| {
        let p = partition_of(next);
        let in_p = taken.iter().filter(|c| partition_of(c) == p).count();
        if taken.len() == 3 * usize::from(PARTITIONS) {
            Keep::Done
        } else if in_p == 3 {
            Keep::Skip
        } else {
            Keep::Take
        }
    });
    assert_eq!(clients.len(), 3 * usize::from(PARTITIONS));

    // The sync timer fires: the window fills, one batch per partition.
    shard.handle_timeout(now(10 + distro.sync_delay_ms));
    let mut inflight = sent_batches(&mut shard);
    assert_eq!(inflight.len(), 16, "one window per peer: {inflight:?}");
    let first: BTreeSet<u16> = inflight.iter().map(|(p, _)| *p).collect();
    assert_eq!(first.len(), 16, "16 different partitions: {inflight:?}");

    // Every acknowledgement lets exactly one batch out, and partitions take turns: each gets
    // its second batch only after every partition got its first.
    let mut served: Vec<u16> = inflight.iter().map(|(p, _)| *p).collect();
    let mut t = 100;
    while let Some((partition, seq)) = inflight.first().copied() {
        inflight.remove(0);
        t += 1;
        shard.handle_peer(now(t), peer.clone(), partition, PeerMsg::SyncAck { seq });
        let next = sent_batches(&mut shard);
        assert!(next.len() <= 1, "one slot freed, {next:?} sent");
        served.extend(next.iter().map(|(p, _)| *p));
        inflight.extend(next);
        assert!(inflight.len() <= 16);
    }
    assert_eq!(
        served.len(),
        2 * usize::from(PARTITIONS),
        "every client sent once"
    );
    let (firsts, seconds) = served.split_at(usize::from(PARTITIONS));
    assert_eq!(
        firsts.iter().collect::<BTreeSet<_>>().len(),
        usize::from(PARTITIONS),
        "every partition's first batch before any second one: {served:?}"
    );
    assert_eq!(
        seconds.iter().collect::<BTreeSet<_>>().len(),
        usize::from(PARTITIONS)
    );
    assert_eq!(shard.unsynced_changes(), 0);
}

#[test]
fn a_restarted_peer_asking_for_a_snapshot_frees_the_window_at_once() {
    let distro = DistroConfig {
        max_inflight_batches: 1,
        ..DistroConfig::default()
    };
    let (mut shard, peer) = loaded_shard(distro.clone());
    while shard.poll_command().is_some() {}
    // Two clients in different partitions; a window of one batch.
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "restart").unwrap();
    let clients = register_own_clients(&mut shard, &service, 10, |taken, next| match taken {
        [] => Keep::Take,
        [first] if partition_of(first) != partition_of(next) => Keep::Take,
        [_] => Keep::Skip,
        _ => Keep::Done,
    });
    assert_eq!(clients.len(), 2);
    shard.handle_timeout(now(10 + distro.sync_delay_ms));
    let sent = sent_batches(&mut shard);
    assert_eq!(sent.len(), 1, "the window holds one batch: {sent:?}");
    let (held, _) = sent[0];
    let waiting = clients
        .iter()
        .map(partition_of)
        .find(|p| *p != held)
        .unwrap();

    // The peer restarts (quickly enough that its link never looked lost) and asks for a
    // snapshot of the held batch's partition, long before the 3 s acknowledgement timeout:
    // the batch went to its earlier run, the window is free, and the other partition's
    // batch goes out by the next tick. The held client comes in the snapshot, not as a
    // second sync.
    shard.handle_peer(
        now(500),
        peer.clone(),
        held,
        PeerMsg::SnapshotRequest { id: 7 },
    );
    shard.handle_timeout(now(1_500));
    let mut synced = Vec::new();
    let mut snapshot_clients = 0;
    while let Some(cmd) = shard.poll_command() {
        match cmd {
            Command::Peer {
                partition,
                msg: PeerMsg::Sync { .. },
                ..
            } => synced.push(partition),
            Command::Peer {
                partition,
                msg: PeerMsg::SnapshotChunk { id: 7, clients, .. },
                ..
            } if partition == held => snapshot_clients += clients.len(),
            _ => {}
        }
    }
    assert_eq!(
        synced,
        vec![waiting],
        "the waiting partition's batch, well before 3 s"
    );
    assert_eq!(
        snapshot_clients, 1,
        "the held client travels in the snapshot"
    );
}
