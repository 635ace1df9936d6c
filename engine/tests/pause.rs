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

#[test]
fn a_resync_asked_before_the_peers_deletion_arrives_does_not_renew_a_client_not_heard_since() {
    // The peer expired the first client while we were stopped (its Drop is stamped then) and
    // asks us to resync it when our verify lists it. If its Resync overtakes its Drop, our
    // answer must not restamp the client: fresh revisions would beat the Drop, and the dead
    // instance would come back on every peer until our own heartbeat check (the chaos
    // harness's pause scenario, 2 seeds in 8).
    let (mut shard, peer, service, clients) = node_with_two_clients();
    shard.handle_timeout(now(5_000));
    shard.handle_timeout(now(65_000));
    // What goes out from here on is what the peer gets of the client: the batch retried at
    // this tick (never acknowledged) already carries its current state, so the resync below
    // is not answered a second time (a resync of a client on its way is not resent).
    let mut answered = Vec::new();
    let collect = |shard: &mut engine::Shard, answered: &mut Vec<SyncItem>| {
        while let Some(cmd) = shard.poll_command() {
            if let engine::Command::Peer {
                msg: PeerMsg::Sync { items, .. },
                ..
            } = cmd
            {
                answered.extend(items);
            }
        }
    };
    collect(&mut shard, &mut answered);
    let dead = &clients[0];
    let partition = engine::distro::partition_of(dead);
    let resync = PeerMsg::Resync {
        clients: vec![dead.clone()],
    };
    shard.handle_peer(now(65_005), peer.clone(), partition, resync);
    shard.handle_timeout(now(65_100));
    collect(&mut shard, &mut answered);
    while let Some(cmd) = shard.poll_command() {
        if let engine::Command::Peer {
            msg: PeerMsg::Sync { items, .. },
            ..
        } = cmd
        {
            answered.extend(items);
        }
    }
    assert!(
        answered
            .iter()
            .any(|i| format!("{i:?}").contains(&format!("{dead:?}"))),
        "the resync is answered with our state: {answered:?}"
    );
    let expired_at = (1_700_000_000_000u64 + 30_000) << 16;
    let drop = PeerMsg::Sync {
        seq: 0,
        items: vec![SyncItem::Drop {
            client: dead.clone(),
            rev: expired_at,
        }],
    };
    shard.handle_peer(now(65_200), peer, partition, drop);
    shard.flush(now(65_200));
    assert_eq!(
        instance_count(&shard, &service),
        1,
        "the peer's deletion still wins over our copy"
    );
}

#[test]
fn a_peer_away_while_we_expired_its_client_gets_the_drop_when_it_is_back() {
    // Node 10.0.0.2 is DOWN: we hold its heartbeat client, which dies. When 10.0.0.2 comes
    // back the client is its own again, and its stale copy would bring the dead instance
    // back on every node unless it hears that we removed it.
    let (mut shard, peer) = loaded_shard(DistroConfig::default());
    let mut down = cluster_shard::members();
    down.peers[0].1 = engine::distro::Health::Down;
    shard.handle_members(now(10), down);
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "away").unwrap();
    let theirs = (0..=255u8)
        .map(|n| Host::V4([10, 8, 0, n].into()))
        .find(|h| !cluster_shard::members().is_mine(&ClientId::for_address(h, 8080)))
        .unwrap();
    let client = ClientId::for_address(&theirs, 8080);
    shard.handle(
        now(20),
        ShardMsg::Client {
            client: client.clone(),
            op: ClientOp::Register {
                service: service.clone(),
                instance: engine::Instance::new(theirs, 8080, Arc::from("DEFAULT")),
            },
            reply: None,
        },
    );
    shard.flush(now(20));
    assert_eq!(
        instance_count(&shard, &service),
        1,
        "ours while the peer is DOWN"
    );
    let mut t = 20;
    while instance_count(&shard, &service) == 1 && t < 120_000 {
        t += 500;
        shard.handle_timeout(now(t));
        shard.flush(now(t));
    }
    assert_eq!(instance_count(&shard, &service), 0, "expired (no beats)");
    while shard.poll_command().is_some() {}
    shard.handle_members(now(t + 1_000), cluster_shard::members());
    // The peer was away when the client expired: the removal waits for the client's hold
    // (two beat intervals and a second) after it is back, in case the beats went to it
    // (DISTRO.md, "Silence is not death to a member that was apart").
    let hold = 2 * 5_000 + 1_000;
    let mut dropped = false;
    let mut at = t + 1_000;
    while at < t + 1_000 + hold + 1_500 {
        at += 100;
        shard.handle_timeout(now(at));
        shard.flush(now(at));
        while let Some(cmd) = shard.poll_command() {
            if let engine::Command::Peer {
                to,
                msg: PeerMsg::Sync { items, .. },
                ..
            } = cmd
            {
                assert_eq!(to, peer);
                dropped |= items
                    .iter()
                    .any(|i| matches!(i, SyncItem::Drop { client: c, .. } if c == &client));
            }
        }
    }
    assert!(dropped, "the peer hears that we removed {client:?}");
}
