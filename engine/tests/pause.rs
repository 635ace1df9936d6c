//! A clustered shard that did not run for a while (SIGSTOP, a VM pause) and comes back as
//! the owner of heartbeat clients its peer took over meanwhile: its clients are not expired
//! across the gap, and the peer's deletion of one of them wins over its stale copy.

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

use engine::distro::{DistroConfig, Health, Members, NodeId, PeerMsg, SyncItem, PARTITIONS};
use engine::shard::{ClientOp, ShardMsg};
use engine::{ClientId, Host, Instance, Now, ReadIndex, ServiceKey, Shard, ShardConfig};
use std::sync::Arc;

fn now(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        unix_ms: 1_700_000_000_000 + ms,
    }
}

/// A shard of node 10.0.0.1 with node 10.0.0.2 UP (loaded: the peer answered with nothing),
/// and two heartbeat clients it is responsible for, registered at t = 0.
fn node_with_two_clients() -> (Shard, NodeId, ServiceKey, Vec<ClientId>) {
    let cfg = ShardConfig {
        shard_count: 1,
        distro: Some(DistroConfig::default()),
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(0, cfg, ReadIndex::new(1, 1 << 20), now(0));
    let peer = NodeId::new("10.0.0.2:8848");
    let members = Members {
        me: Some(NodeId::new("10.0.0.1:8848")),
        peers: vec![(peer.clone(), Health::Up)],
    };
    shard.handle_members(now(0), members.clone());
    // The peer has nothing: every partition's snapshot is empty.
    let mut requests = Vec::new();
    while let Some(cmd) = shard.poll_command() {
        if let engine::Command::Peer {
            partition,
            msg: PeerMsg::SnapshotRequest { id },
            ..
        } = cmd
        {
            requests.push((partition, id));
        }
    }
    assert_eq!(requests.len(), usize::from(PARTITIONS));
    for (partition, id) in requests {
        let done = PeerMsg::SnapshotChunk {
            id,
            seq: 0,
            clients: Vec::new(),
            done: true,
        };
        shard.handle_peer(now(1), peer.clone(), partition, done);
    }
    assert!(shard.is_loaded());
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "paused").unwrap();
    let mut clients = Vec::new();
    for last in 1..=250u8 {
        let host = Host::V4([10, 9, 0, last].into());
        let client = ClientId::for_address(&host, 8080);
        if !members.is_mine(&client) {
            continue;
        }
        let instance = Instance::new(host, 8080, Arc::from("DEFAULT"));
        shard.handle(
            now(2),
            ShardMsg::Client {
                client: client.clone(),
                op: ClientOp::Register {
                    service: service.clone(),
                    instance,
                },
                reply: None,
            },
        );
        clients.push(client);
        if clients.len() == 2 {
            break;
        }
    }
    shard.flush(now(2));
    assert_eq!(clients.len(), 2);
    while shard.poll_command().is_some() {}
    (shard, peer, service, clients)
}

fn instance_count(shard: &Shard, service: &ServiceKey) -> usize {
    shard.index().view(service).map_or(0, |v| v.instance_count)
}

#[test]
fn a_resumed_node_keeps_its_clients_and_takes_the_peers_deletion() {
    let (mut shard, peer, service, clients) = node_with_two_clients();
    shard.handle_timeout(now(5_000));
    assert_eq!(instance_count(&shard, &service), 2);
    // Stopped from 5 s to 65 s: past the 30 s delete timeout. The overdue check runs.
    shard.handle_timeout(now(65_000));
    assert_eq!(instance_count(&shard, &service), 2, "kept across the gap");
    // The peer, which held the first client meanwhile and saw it die, deletes it.
    let drop = |client: &ClientId| PeerMsg::Sync {
        seq: 0,
        items: vec![SyncItem::Drop {
            client: client.clone(),
            rev: u64::MAX / 2,
        }],
    };
    let partition = engine::distro::partition_of(&clients[0]);
    shard.handle_peer(now(65_010), peer.clone(), partition, drop(&clients[0]));
    shard.flush(now(65_010));
    assert_eq!(
        instance_count(&shard, &service),
        1,
        "the peer's deletion wins"
    );
    // The second client beats us again: ours once more, a peer's Drop is refused as usual.
    shard.handle(
        now(65_020),
        ShardMsg::Client {
            client: clients[1].clone(),
            op: ClientOp::Beat {
                service: service.clone(),
                host: match &clients[1] {
                    ClientId::V4(a, _) => Host::V4(*a),
                    _ => unreachable!(),
                },
                port: 8080,
                cluster: Arc::from("DEFAULT"),
                reregister: None,
            },
            reply: None,
        },
    );
    let partition = engine::distro::partition_of(&clients[1]);
    shard.handle_peer(now(65_030), peer, partition, drop(&clients[1]));
    shard.flush(now(65_030));
    assert_eq!(instance_count(&shard, &service), 1, "heard again: ours");
}
