//! Serving a snapshot, driven by hand: what a shard streams to a peer that asks for a
//! partition while the shard's clients keep changing.

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod cluster_shard;

use std::collections::BTreeSet;

use cluster_shard::{loaded_shard, now, register_own_clients, Keep};
use engine::distro::{partition_of, DistroConfig, NodeId, PeerMsg};
use engine::shard::{ClientOp, ShardMsg};
use engine::{ClientId, Command, Host, ServiceKey, Shard};

/// Ten heartbeat clients of node 10.0.0.1 in one partition, registered at 10 ms, with the
/// sync batches that announced them acknowledged.
fn shard_with_one_partition_of_clients(
    distro: DistroConfig,
) -> (Shard, NodeId, u16, ServiceKey, Vec<ClientId>) {
    let (mut shard, peer) = loaded_shard(distro);
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "svc").unwrap();
    let mut partition = None;
    let clients = register_own_clients(&mut shard, &service, 10, |taken, c| {
        let p = *partition.get_or_insert(partition_of(c));
        if taken.len() == 10 {
            Keep::Done
        } else if partition_of(c) == p {
            Keep::Take
        } else {
            Keep::Skip
        }
    });
    let partition = partition.unwrap();
    assert_eq!(clients.len(), 10);
    shard.handle_timeout(now(100));
    for (p, msg) in peer_msgs(&mut shard) {
        if let PeerMsg::Sync { seq, .. } = msg {
            shard.handle_peer(now(100), peer.clone(), p, PeerMsg::SyncAck { seq });
        }
    }
    (shard, peer, partition, service, clients)
}

fn peer_msgs(shard: &mut Shard) -> Vec<(u16, PeerMsg)> {
    let mut out = Vec::new();
    while let Some(cmd) = shard.poll_command() {
        if let Command::Peer { partition, msg, .. } = cmd {
            out.push((partition, msg));
        }
    }
    out
}

fn deregister(shard: &mut Shard, at_ms: u64, service: &ServiceKey, client: &ClientId) {
    let ClientId::V4(ip, port) = client else {
        panic!("a heartbeat client: {client:?}");
    };
    shard.handle(
        now(at_ms),
        ShardMsg::Client {
            client: client.clone(),
            op: ClientOp::Deregister {
                service: service.clone(),
                host: Host::V4(*ip),
                port: *port,
                cluster: "DEFAULT".into(),
            },
            reply: None,
        },
    );
    shard.flush(now(at_ms));
}

#[test]
fn a_client_removed_while_its_partition_streams_does_not_hide_another() {
    // Chunks of 2 clients, one in flight: the stream is still running when a client it
    // already sent goes away. The map's removal moves its last client into the hole, behind
    // where a cursor over the map would stand.
    let distro = DistroConfig {
        snapshot_chunk_clients: 2,
        snapshot_window: 1,
        ..DistroConfig::default()
    };
    let (mut shard, peer, partition, service, clients) =
        shard_with_one_partition_of_clients(distro);
    shard.handle_peer(
        now(200),
        peer.clone(),
        partition,
        PeerMsg::SnapshotRequest { id: 7 },
    );
    let mut received: Vec<ClientId> = Vec::new();
    let mut removed = None;
    let mut t = 200;
    loop {
        let chunks: Vec<(u64, Vec<ClientId>, bool)> = peer_msgs(&mut shard)
            .into_iter()
            .filter_map(|(_, m)| match m {
                PeerMsg::SnapshotChunk {
                    id: 7,
                    seq,
                    clients,
                    done,
                } => Some((
                    seq,
                    clients.into_iter().map(|(_, s)| s.client).collect(),
                    done,
                )),
                _ => None,
            })
            .collect();
        assert_eq!(chunks.len(), 1, "one chunk in flight at a time");
        let (seq, got, done) = chunks.into_iter().next().unwrap();
        received.extend(got);
        if done {
            break;
        }
        t += 10;
        if removed.is_none() {
            let gone = received[0].clone();
            deregister(&mut shard, t, &service, &gone);
            removed = Some(gone);
        }
        shard.handle_peer(
            now(t),
            peer.clone(),
            partition,
            PeerMsg::SnapshotAck { id: 7, seq },
        );
    }
    let removed = removed.unwrap();
    let expected: BTreeSet<&ClientId> = clients.iter().collect();
    let got: BTreeSet<&ClientId> = received.iter().collect();
    assert_eq!(got.len(), received.len(), "no client twice");
    assert_eq!(got, expected, "every client that was there when the request came, {removed:?} included (sent before it went)");
}

#[test]
fn a_snapshot_request_takes_the_place_of_pending_changes_but_not_of_removals() {
    let distro = DistroConfig::default();
    let (mut shard, peer, partition, service, clients) =
        shard_with_one_partition_of_clients(distro);
    // The peer is away for a while (say, restarting): changes pile up for it. One client
    // goes, the others publish in a second service (a change each).
    deregister(&mut shard, 200, &service, &clients[0]);
    let second = ServiceKey::new("public", "DEFAULT_GROUP", "svc2").unwrap();
    let renewed = register_own_clients(&mut shard, &second, 200, |taken, c| {
        if taken.len() == 9 {
            Keep::Done
        } else if clients[1..].contains(c) {
            Keep::Take
        } else {
            Keep::Skip
        }
    });
    assert_eq!(renewed.len(), 9);
    // The peer's new process asks for the partition before the merge window closes.
    shard.handle_peer(
        now(201),
        peer.clone(),
        partition,
        PeerMsg::SnapshotRequest { id: 9 },
    );
    let mut snapshot = BTreeSet::new();
    for (_, msg) in peer_msgs(&mut shard) {
        if let PeerMsg::SnapshotChunk { id: 9, clients, .. } = msg {
            snapshot.extend(clients.into_iter().map(|(_, s)| s.client));
        }
    }
    assert_eq!(
        snapshot,
        clients[1..].iter().cloned().collect::<BTreeSet<_>>()
    );
    // The sync that follows carries only what the snapshot cannot say: the removal.
    shard.handle_timeout(now(300));
    let synced: Vec<String> = peer_msgs(&mut shard)
        .into_iter()
        .filter_map(|(_, m)| match m {
            PeerMsg::Sync { items, .. } => Some(items),
            _ => None,
        })
        .flatten()
        .map(|item| format!("{item:?}"))
        .collect();
    assert_eq!(synced.len(), 1, "{synced:?}");
    assert!(
        synced[0].contains(&format!("{:?}", clients[0])),
        "the removal of {:?}: {synced:?}",
        clients[0]
    );
}
