//! Silence is not death to a member that was apart (DISTRO.md, I1 "No flaps";
//! `replication/apart.rs`): a heartbeat client the responsible node expired while a peer was
//! DOWN may have been beating that peer. Its removal is held back from the peer until the
//! peer has been UP for the client's hold (two beat intervals and a second), and the peer's
//! copy, offered back meanwhile, is refused without a `Drop`: the client's next beat
//! re-registers it, and only a client that stays silent is dropped there, one hold later.

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod cluster_shard;

use cluster_shard::{members, now, one_own_client};
use engine::distro::{
    partition_of, ClientState, EntryState, Health, Members, NodeId, PeerMsg, SyncItem,
};
use engine::shard::{ClientOp, ShardMsg};
use engine::{ClientId, Command, Host, Instance, ServiceKey, Shard};
use std::sync::Arc;

/// The hold of a client with the default 5 s beat interval.
const HOLD_MS: u64 = 2 * 5_000 + 1_000;

fn instance_count(shard: &Shard, service: &ServiceKey) -> usize {
    shard.index().view(service).map_or(0, |v| v.instance_count)
}

fn host_of(client: &ClientId) -> Host {
    match client {
        ClientId::V4(a, _) => Host::V4(*a),
        _ => unreachable!("heartbeat clients here are v4"),
    }
}

fn with_peer(health: Health) -> Members {
    let mut m = members();
    m.peers[0].1 = health;
    m
}

/// The `Drop`s of `client` sent to `peer` among the commands since the last call.
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

/// Runs the shard's timers from `from` to `to` (ms), counting the `Drop`s of `client` it
/// sends to `peer`.
fn run(shard: &mut Shard, peer: &NodeId, client: &ClientId, from: u64, to: u64) -> usize {
    let mut drops = 0;
    let mut t = from;
    while t < to {
        t += 100;
        shard.handle_timeout(now(t));
        shard.flush(now(t));
        drops += drops_to(shard, peer, client);
    }
    drops
}

/// Node 10.0.0.1 holds one heartbeat client (registered at 2 ms, never beating); its peer
/// goes DOWN at 1 s, the client expires (30 s deletion timeout) while the peer is away, and
/// the peer is back at `back`. Returns the shard, the peer, the service and the client.
fn expired_while_apart(back: u64) -> (Shard, NodeId, ServiceKey, ClientId) {
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "apart").unwrap();
    let (mut shard, peer, client) = one_own_client(&service);
    shard.handle_members(now(1_000), with_peer(Health::Down));
    let drops = run(&mut shard, &peer, &client, 1_000, back);
    assert_eq!(instance_count(&shard, &service), 0, "expired (no beats)");
    assert_eq!(drops, 0, "nothing goes to a DOWN peer");
    shard.handle_members(now(back), with_peer(Health::Up));
    shard.flush(now(back));
    (shard, peer, service, client)
}

/// The peer's full state of `client`: it held the client (and heard its beats) meanwhile.
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
fn a_removal_made_while_a_peer_was_down_waits_for_the_hold_after_it_is_back() {
    let back = 40_000;
    let (mut shard, peer, _, client) = expired_while_apart(back);
    let early = drops_to(&mut shard, &peer, &client)
        + run(&mut shard, &peer, &client, back, back + HOLD_MS - 500);
    assert_eq!(early, 0, "held while the peer may still pass on a beat");
    let late = run(
        &mut shard,
        &peer,
        &client,
        back + HOLD_MS - 500,
        back + HOLD_MS + 2_000,
    );
    assert!(
        late > 0,
        "a client that stayed silent is dropped after the hold"
    );
}

#[test]
fn a_peers_live_copy_is_refused_without_a_drop_and_its_next_beat_brings_it_back() {
    let back = 40_000;
    let (mut shard, peer, service, client) = expired_while_apart(back);
    shard.handle_peer(
        now(back + 100),
        peer.clone(),
        partition_of(&client),
        peer_copy(&client, &service),
    );
    shard.flush(now(back + 100));
    assert_eq!(
        instance_count(&shard, &service),
        0,
        "not shown here: it may be a dead client a stand-in kept"
    );
    let held = drops_to(&mut shard, &peer, &client)
        + run(&mut shard, &peer, &client, back + 100, back + 1_000);
    assert_eq!(held, 0, "the peer's copy is not dropped by our \"nothing\"");
    // The client's next beat, forwarded by the peer, re-registers it here.
    let instance = Instance::new(host_of(&client), 8080, Arc::from("DEFAULT"));
    shard.handle(
        now(back + 1_000),
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
    shard.flush(now(back + 1_000));
    assert_eq!(
        instance_count(&shard, &service),
        1,
        "re-registered by its beat"
    );
    let after = run(
        &mut shard,
        &peer,
        &client,
        back + 1_000,
        back + HOLD_MS + 3_000,
    );
    assert_eq!(after, 0, "a live client is never dropped at the peer");
}

#[test]
fn a_peer_back_for_longer_than_a_hold_gets_the_removal_at_once() {
    // The peer came back long before the client expired: it would have passed any beat on.
    let service = ServiceKey::new("public", "DEFAULT_GROUP", "apart").unwrap();
    let (mut shard, peer, client) = one_own_client(&service);
    shard.handle_members(now(1_000), with_peer(Health::Down));
    shard.handle_members(now(2_000), with_peer(Health::Up));
    let drops = run(&mut shard, &peer, &client, 2_000, 33_000);
    assert_eq!(instance_count(&shard, &service), 0, "expired (no beats)");
    assert!(drops > 0, "the removal goes out at once");
}
