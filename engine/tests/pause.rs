//! A clustered shard that did not run for a while (SIGSTOP, a VM pause) and comes back as
//! the owner of heartbeat clients its peer took over meanwhile: its clients are not expired
//! across the gap, and the peer's deletion of one of them wins over its stale copy.

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod cluster_shard;

use cluster_shard::{loaded_shard, now, register_own_clients, Keep};
use engine::distro::{DistroConfig, NodeId, PeerMsg, SyncItem};
use engine::shard::{ClientOp, ShardMsg};
use engine::{ClientId, Host, ServiceKey, Shard};
use std::sync::Arc;

/// A shard of node 10.0.0.1 with node 10.0.0.2 UP (loaded: the peer answered with nothing),
/// and two heartbeat clients it is responsible for, registered at t = 2 ms.
fn node_with_two_clients() -> (Shard, NodeId, ServiceKey, Vec<ClientId>) {
    let (mut shard, peer) = loaded_shard(DistroConfig::default());
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "paused").unwrap();
    let clients = register_own_clients(&mut shard, &service, 2, |taken, _| {
        if taken.len() == 2 {
            Keep::Done
        } else {
            Keep::Take
        }
    });
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
