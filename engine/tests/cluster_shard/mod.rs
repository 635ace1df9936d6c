//! A clustered shard driven by hand, shared by the tests that need one: node 10.0.0.1 with
//! node 10.0.0.2 UP, loaded (the peer answered every snapshot request with nothing).

#![allow(dead_code)]

use std::sync::Arc;

use engine::distro::{DistroConfig, Health, Members, NodeId, PeerMsg, PARTITIONS};
use engine::shard::{ClientOp, ShardMsg};
use engine::{ClientId, Host, Instance, Now, ReadIndex, ServiceKey, Shard, ShardConfig};

/// Virtual time `ms`.
pub fn now(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        unix_ms: 1_700_000_000_000 + ms,
    }
}

/// The members as node 10.0.0.1 sees them.
pub fn members() -> Members {
    Members {
        me: Some(NodeId::new("10.0.0.1:8848")),
        peers: vec![(NodeId::new("10.0.0.2:8848"), Health::Up)],
    }
}

/// One shard (of one) of node 10.0.0.1, loaded at t = 1 ms, and its peer.
pub fn loaded_shard(distro: DistroConfig) -> (Shard, NodeId) {
    let cfg = ShardConfig {
        shard_count: 1,
        distro: Some(distro),
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(0, cfg, ReadIndex::new(1, 1 << 20), now(0));
    let peer = NodeId::new("10.0.0.2:8848");
    shard.handle_members(now(0), members());
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
    (shard, peer)
}

/// Registers heartbeat clients 10.9.x.y:8080 that node 10.0.0.1 is responsible for, at
/// `at_ms`, until `keep` says it has enough; returns them.
pub fn register_own_clients(
    shard: &mut Shard,
    service: &ServiceKey,
    at_ms: u64,
    mut keep: impl FnMut(&[ClientId], &ClientId) -> Keep,
) -> Vec<ClientId> {
    let members = members();
    let mut clients = Vec::new();
    for n in 0..=u16::MAX {
        let host = Host::V4([10, 9, (n >> 8) as u8, n as u8].into());
        let client = ClientId::for_address(&host, 8080);
        if !members.is_mine(&client) {
            continue;
        }
        match keep(&clients, &client) {
            Keep::Skip => continue,
            Keep::Done => break,
            Keep::Take => {}
        }
        let instance = Instance::new(host, 8080, Arc::from("DEFAULT"));
        shard.handle(
            now(at_ms),
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
    }
    shard.flush(now(at_ms));
    clients
}

/// A loaded shard of node 10.0.0.1 (default Distro timings) holding one heartbeat client it
/// is responsible for, registered at 2 ms in `service` and never beating; and its peer.
pub fn one_own_client(service: &ServiceKey) -> (Shard, NodeId, ClientId) {
    let (mut shard, peer) = loaded_shard(DistroConfig::default());
    let clients = register_own_clients(&mut shard, service, 2, |taken, _| {
        if taken.is_empty() {
            Keep::Take
        } else {
            Keep::Done
        }
    });
    let client = clients[0].clone();
    (shard, peer, client)
}

/// What `register_own_clients` does with the next candidate.
pub enum Keep {
    Take,
    Skip,
    Done,
}
