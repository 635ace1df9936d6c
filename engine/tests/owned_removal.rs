//! A heartbeat client that the responsible node removed as its owner (expired: its beats
//! stopped) is not taken back from another node's copy within a lease: that node held it
//! while it could not reach us (a stand-in) or took it over from a stale copy, and taken
//! back, the dead instance would live a whole new deletion timeout. The sender is told with
//! a `Drop`. Found by the simulator's silently dying HTTP clients (seeds 601 and 811 of the
//! standard sweep, replayed by `distro_sim`'s sweep); DISTRO.md, "Membership changes".

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod cluster_shard;

use cluster_shard::{now, one_own_client};
use engine::distro::{ClientState, DistroConfig, EntryState, NodeId, PeerMsg, SyncItem};
use engine::shard::{ClientOp, ShardMsg};
use engine::{ClientId, Command, Host, Instance, ServiceKey, Shard};
use std::sync::Arc;

fn instance_count(shard: &Shard, service: &ServiceKey) -> usize {
    shard.index().view(service).map_or(0, |v| v.instance_count)
}

fn host_of(client: &ClientId) -> Host {
    match client {
        ClientId::V4(a, _) => Host::V4(*a),
        _ => unreachable!("heartbeat clients here are v4"),
    }
}

/// The `Drop`s of `client` the shard sends to `peer` from now on.
fn drops_to(shard: &mut Shard, peer: &NodeId, client: &ClientId) -> usize {
    let mut drops = 0;
    while let Some(cmd) = shard.poll_command() {
        if let Command::Peer {
            to,
            msg: PeerMsg::Sync { items, .. },
            ..
        } = cmd
        {
            drops += items
                .iter()
                .filter(|i| matches!(i, SyncItem::Drop { client: c, .. } if c == client))
                .filter(|_| &to == peer)
                .count();
        }
    }
    drops
}

/// Node 10.0.0.1 is responsible for one heartbeat client, registered at 2 ms, that never
/// beats: it expires after its deletion timeout (30 s). Returns the time it is gone.
fn expired_client() -> (Shard, NodeId, ServiceKey, ClientId, u64) {
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "owned").unwrap();
    let (mut shard, peer, client) = one_own_client(&service);
    assert_eq!(instance_count(&shard, &service), 1);
    let mut t = 2;
    while instance_count(&shard, &service) == 1 && t < 60_000 {
        t += 500;
        shard.handle_timeout(now(t));
        shard.flush(now(t));
    }
    assert_eq!(instance_count(&shard, &service), 0, "expired (no beats)");
    while shard.poll_command().is_some() {}
    (shard, peer, service, client, t)
}

/// The peer's full state of `client`, stamped with revisions newer than anything we saw
/// (it took the client over from its copy while it could not reach us, restamping it).
fn peer_copy(client: &ClientId, service: &ServiceKey) -> PeerMsg {
    let rev = (1_700_000_000_000u64 + 100_000) << 16;
    let instance = Instance::new(host_of(client), 8080, Arc::from("DEFAULT"));
    PeerMsg::Sync {
        seq: 1,
        items: vec![SyncItem::Full(ClientState {
            client: client.clone(),
            rev,
            entries: vec![EntryState {
                service: service.clone(),
                rev,
                publish: vec![instance].into(),
            }],
        })],
    }
}

#[test]
fn a_client_we_expired_is_not_taken_back_from_a_peers_copy_and_the_peer_gets_a_drop() {
    let (mut shard, peer, service, client, t) = expired_client();
    let partition = engine::distro::partition_of(&client);
    shard.handle_peer(
        now(t + 100),
        peer.clone(),
        partition,
        peer_copy(&client, &service),
    );
    shard.flush(now(t + 100));
    assert_eq!(
        instance_count(&shard, &service),
        0,
        "the dead instance does not come back with the peer's copy"
    );
    shard.handle_timeout(now(t + 200));
    shard.flush(now(t + 200));
    assert!(
        drops_to(&mut shard, &peer, &client) > 0,
        "the peer hears that we removed {client:?}"
    );
}

#[test]
fn a_live_client_we_expired_comes_back_with_its_next_beat() {
    let (mut shard, peer, service, client, t) = expired_client();
    let partition = engine::distro::partition_of(&client);
    shard.handle_peer(now(t + 100), peer, partition, peer_copy(&client, &service));
    shard.flush(now(t + 100));
    let instance = Instance::new(host_of(&client), 8080, Arc::from("DEFAULT"));
    shard.handle(
        now(t + 1_000),
        ShardMsg::Client {
            client: client.clone(),
            op: ClientOp::Beat {
                service: service.clone(),
                host: host_of(&client),
                port: 8080,
                cluster: Arc::from("DEFAULT"),
                reregister: Some(instance),
            },
            reply: None,
        },
    );
    shard.flush(now(t + 1_000));
    assert_eq!(
        instance_count(&shard, &service),
        1,
        "re-registered by its beat"
    );
}

#[test]
fn after_a_lease_the_responsible_node_takes_a_peers_copy_again() {
    // The memory is bounded: a lease after the removal, a copy is taken as usual.
    let (mut shard, peer, service, client, t) = expired_client();
    let lease = DistroConfig::default().replica_lease_ms;
    let later = t + lease + 1_000;
    let mut at = t;
    while at < later {
        at += 500;
        shard.handle_timeout(now(at));
    }
    while shard.poll_command().is_some() {}
    let partition = engine::distro::partition_of(&client);
    shard.handle_peer(now(later), peer, partition, peer_copy(&client, &service));
    shard.flush(now(later));
    assert_eq!(instance_count(&shard, &service), 1);
}

/// A node that is shutting down makes no removals: the peer links close under it, so a
/// `Drop` made now may reach nobody, and after its restart the node would load the client
/// back from a peer's copy — a dead instance gone and back (chaos `rolling-restart`, seeds
/// 1 and 2). The client stays until its owner (the successor, or this node restarted)
/// expires it.
#[test]
fn a_shutting_down_owner_neither_expires_nor_marks_its_silent_clients() {
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "owned").unwrap();
    let (mut shard, peer, client) = one_own_client(&service);
    shard.handle_shutdown(now(1_000));
    while shard.poll_command().is_some() {}
    for t in (1_500..60_000).step_by(500) {
        shard.handle_timeout(now(t));
        shard.flush(now(t));
    }
    assert_eq!(
        instance_count(&shard, &service),
        1,
        "still listed, long past its deletion timeout"
    );
    let healthy = shard
        .index()
        .view(&service)
        .is_some_and(|v| v.instances().all(|i| i.healthy));
    assert!(healthy, "not marked unhealthy either");
    assert_eq!(drops_to(&mut shard, &peer, &client), 0, "no Drop sent");
}
