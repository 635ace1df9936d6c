//! Persistent instances in a clustered shard: applied from the Raft store's effects, they are
//! served like ephemeral ones, but Distro never carries, verifies, expires or hands them over.

#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod cluster_shard;

use std::collections::BTreeMap;

use cluster_shard::{loaded_shard, now};
use engine::distro::{DistroConfig, PeerMsg};
use engine::shard::persistent::{action_for, EffectAction};
use engine::store::naming::{NamingEffect, PersistentInstance, ServiceRef};
use engine::view::InstanceKind;
use engine::{Command, Shard};

fn db() -> ServiceRef {
    ServiceRef {
        namespace: "public".into(),
        group: "DEFAULT_GROUP".into(),
        name: "db".into(),
    }
}

fn stored(port: u16) -> PersistentInstance {
    PersistentInstance {
        ip: "127.0.0.7".into(),
        port,
        cluster: "DEFAULT".into(),
        weight: 1.0,
        healthy: true,
        enabled: true,
        metadata: BTreeMap::new(),
    }
}

fn apply(shard: &mut Shard, at_ms: u64, effect: NamingEffect) {
    let EffectAction::Shard(msg) = action_for(&effect).unwrap() else {
        panic!("not a shard message: {effect:?}");
    };
    shard.handle(now(at_ms), msg);
    shard.flush(now(at_ms));
}

/// The Distro messages among `commands`.
fn distro_messages(shard: &mut Shard) -> Vec<PeerMsg> {
    std::iter::from_fn(|| shard.poll_command())
        .filter_map(|c| match c {
            Command::Peer { msg, .. } => Some(msg),
            _ => None,
        })
        .collect()
}

#[test]
fn a_persistent_instance_is_served_never_synced_and_outlives_every_heartbeat_timeout() {
    let distro = DistroConfig::default();
    let (mut shard, _peer) = loaded_shard(distro.clone());
    while shard.poll_command().is_some() {}
    let index = shard.index().clone();
    apply(
        &mut shard,
        10,
        NamingEffect::InstanceUpserted {
            service: db(),
            instance: stored(3306),
        },
    );
    let key = engine::shard::persistent::service_key(&db()).unwrap();
    let view = index.view(&key).unwrap();
    assert_eq!(view.instance_count, 1);
    assert_eq!(view.kind(), Some(InstanceKind::Persistent));

    // Sync, verify and expiry all get their turn over a minute: nothing about the client
    // reaches the peer, and the instance (which never beats) stays.
    let mut sent = Vec::new();
    for t in (20..60_000).step_by(250) {
        shard.handle_timeout(now(t));
        sent.extend(distro_messages(&mut shard));
    }
    let carried: Vec<&PeerMsg> = sent
        .iter()
        .filter(|m| matches!(m, PeerMsg::Sync { .. } | PeerMsg::SnapshotChunk { .. }))
        .collect();
    assert!(
        carried.is_empty(),
        "persistent client sent to a peer: {carried:?}"
    );
    let view = index.view(&key).unwrap();
    assert_eq!(view.instance_count, 1, "a persistent instance expired");
    assert!(view.instances().all(|i| i.healthy && !i.ephemeral));

    // Only its deregistration removes it.
    apply(
        &mut shard,
        60_000,
        NamingEffect::InstanceRemoved {
            service: db(),
            instance: stored(3306),
        },
    );
    let gone = index.view(&key).map_or(0, |v| v.instance_count);
    assert_eq!(gone, 0);
}

#[test]
fn a_health_flip_is_republished_in_place() {
    let (mut shard, _peer) = loaded_shard(DistroConfig::default());
    let index = shard.index().clone();
    apply(
        &mut shard,
        10,
        NamingEffect::InstanceUpserted {
            service: db(),
            instance: stored(5432),
        },
    );
    let mut sick = stored(5432);
    sick.healthy = false;
    apply(
        &mut shard,
        20,
        NamingEffect::InstanceUpserted {
            service: db(),
            instance: sick,
        },
    );
    let key = engine::shard::persistent::service_key(&db()).unwrap();
    let view = index.view(&key).unwrap();
    assert_eq!(view.instance_count, 1);
    assert!(view.instances().all(|i| !i.healthy));
}

#[test]
fn a_barrier_answers_only_after_the_service_owner_published_what_came_before_it() {
    use engine::shard::{client_shard, ReplyTo, ShardConfig, ShardMsg};
    use engine::ReadIndex;
    let cfg = ShardConfig {
        shard_count: 2,
        ..ShardConfig::default()
    };
    let index = ReadIndex::new(2, 1 << 20);
    let mut shards: Vec<Shard> = (0..2)
        .map(|id| Shard::new(id, cfg.clone(), index.clone(), now(0)))
        .collect();
    // A service owned by the other shard than the persistent client's.
    let mut found = None;
    for n in 0..1000 {
        let service = ServiceRef {
            name: format!("db{n}"),
            ..db()
        };
        let key = engine::shard::persistent::service_key(&service).unwrap();
        let client = engine::shard::persistent::persistent_client("127.0.0.7", 3306).unwrap();
        let (c, s) = (client_shard(&client, 2), index.owner_of(&key));
        if c != s {
            found = Some((service, key, c, s));
            break;
        }
    }
    let (service, key, client_owner, service_owner) = found.unwrap();
    let EffectAction::Shard(msg) = action_for(&NamingEffect::InstanceUpserted {
        service,
        instance: stored(3306),
    })
    .unwrap() else {
        panic!("not a shard message");
    };
    let waiter = ReplyTo { shard: 1, token: 9 };
    shards[client_owner].handle(now(1), msg);
    shards[client_owner].handle_barrier(now(1), key.clone(), waiter);
    shards[client_owner].flush(now(1));
    let sends: Vec<ShardMsg> = std::iter::from_fn(|| shards[client_owner].poll_command())
        .filter_map(|c| match c {
            Command::Send { shard, msg } if shard == service_owner => Some(msg),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 2, "the upsert then the barrier: {sends:?}");
    assert!(index.view(&key).is_none_or(|v| v.instance_count == 0));
    for msg in sends {
        shards[service_owner].handle(now(2), msg);
    }
    let before_flush: Vec<Command> =
        std::iter::from_fn(|| shards[service_owner].poll_command()).collect();
    assert!(
        !before_flush
            .iter()
            .any(|c| matches!(c, Command::Reply { .. })),
        "answered before the view was published: {before_flush:?}"
    );
    shards[service_owner].flush(now(2));
    let replies: Vec<Command> = std::iter::from_fn(|| shards[service_owner].poll_command())
        .filter(|c| matches!(c, Command::Reply { .. }))
        .collect();
    assert_eq!(
        replies,
        vec![Command::Reply {
            to: waiter,
            result: Ok(engine::OpOutcome::Unchanged)
        }]
    );
    assert_eq!(index.view(&key).unwrap().instance_count, 1);
}
