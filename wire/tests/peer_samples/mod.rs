//! Sample frames with non-trivial values, one or more of every kind: shared by the peer codec
//! tests and `examples/peer_corpus.rs` (the fuzzing seed corpus).

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use engine::distro::{ClientHash, ClientState, EntryState, NodeId, PeerMsg, SyncItem, SLICES};
use engine::shard::InstancePatch;
use engine::{ClientId, ClientOp, Host, Instance, Metadata, OpError, OpOutcome, ServiceKey, Str};
use nacelle_wire::peer::{ForwardId, Frame};

pub fn service(ns: &str, group: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, group, name).expect("valid service key")
}

/// The `i`-th of a spread of instances: IPv4 and named hosts, metadata with preserved keys
/// and escapes, explicit ids, odd weights, unhealthy and disabled ones, several clusters.
pub fn instance(i: u32) -> Instance {
    let host = match i % 4 {
        0 | 1 => Host::V4(Ipv4Addr::from(0x0a00_0000 + i)),
        2 => Host::Name(format!("node-{i}.example.internal").into()),
        _ => Host::Name(format!("fd00::{i:x}").into()),
    };
    let metadata = match i % 3 {
        0 => Metadata::default(),
        1 => Metadata::from_pairs([("zone", format!("z{}", i % 5)), ("ver", "1.0".into())])
            .expect("metadata"),
        _ => Metadata::from_pairs([
            ("preserved.heart.beat.interval", "3000".to_string()),
            ("preserved.heart.beat.timeout", "9000".to_string()),
            ("quote\"and\\slash", "ünïcødé \n tab\t".to_string()),
        ])
        .expect("metadata"),
    };
    let instance_id = i.is_multiple_of(5).then(|| format!("id-{i}#custom"));
    let cluster: Str = ["DEFAULT", "c1", "zone-a.b"][(i % 3) as usize].into();
    Instance::from_parts(
        host,
        (8000 + i % 60_000) as u16,
        [1.0, 0.0, 2.5, 10_000.0, 0.125][(i % 5) as usize],
        i % 7 != 3,
        i % 11 != 4,
        cluster,
        metadata,
        instance_id.as_deref(),
    )
    .expect("valid instance")
}

pub fn client(i: u64) -> ClientId {
    match i % 3 {
        0 => ClientId::Conn(i * 1_000_003 + (u64::MAX - 1_000_000_000)),
        1 => ClientId::V4(Ipv4Addr::from(0xc0a8_0000 + i as u32), (i % 65_536) as u16),
        _ => ClientId::Named(
            format!("host-{i}.example").into(),
            65_535 - (i % 100) as u16,
        ),
    }
}

/// Four services, the same keys on every call: a shard's keys are interned, and the encoder
/// writes one table per distinct key.
pub fn services() -> Vec<ServiceKey> {
    static KEYS: OnceLock<Vec<ServiceKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        vec![
            service("public", "DEFAULT_GROUP", "orders"),
            service("ns-1", "g1", "payments.api"),
            service("", "", "defaults-apply"),
            service("prod", "DEFAULT_GROUP", "名前"),
        ]
    })
    .clone()
}

pub fn entry(i: u32, instances: u32) -> EntryState {
    let svcs = services();
    EntryState {
        service: svcs[i as usize % svcs.len()].clone(),
        rev: 1_000 + u64::from(i),
        publish: Arc::from(
            (0..instances)
                .map(|k| instance(i * 7 + k))
                .collect::<Vec<_>>(),
        ),
    }
}

pub fn client_state(i: u64, entries: u32) -> ClientState {
    ClientState {
        client: client(i),
        rev: 5_000 + i,
        entries: (0..entries)
            .map(|e| entry(i as u32 + e, 1 + e % 3))
            .collect(),
    }
}

/// A sync batch of `n` one-instance upserts (the bench's hot case).
pub fn upsert_batch(n: u32) -> PeerMsg {
    PeerMsg::Sync {
        seq: 77,
        items: (0..n)
            .map(|i| SyncItem::Upsert {
                client: client(u64::from(i)),
                entry: entry(i, 1),
            })
            .collect(),
    }
}

/// A snapshot chunk of `n` clients with one one-instance publish each.
pub fn snapshot_chunk(n: u64) -> PeerMsg {
    let nodes = [NodeId::new("10.0.0.1:8848"), NodeId::new("10.0.0.2:8848")];
    PeerMsg::SnapshotChunk {
        id: 3,
        seq: 12,
        clients: (0..n)
            .map(|i| (nodes[i as usize % 2].clone(), client_state(i, 1)))
            .collect(),
        done: false,
    }
}

pub fn peer_msgs() -> Vec<PeerMsg> {
    let svcs = services();
    vec![
        PeerMsg::Sync {
            seq: u64::MAX,
            items: vec![
                SyncItem::Upsert {
                    client: client(0),
                    entry: entry(1, 3),
                },
                SyncItem::Upsert {
                    client: client(1),
                    entry: entry(2, 1),
                },
                SyncItem::Remove {
                    client: client(2),
                    service: svcs[1].clone(),
                    rev: 42,
                },
                SyncItem::Full(client_state(3, 4)),
                SyncItem::Full(ClientState {
                    client: client(4),
                    rev: 0,
                    entries: vec![],
                }),
                SyncItem::Drop {
                    client: client(5),
                    rev: 1 << 40,
                },
            ],
        },
        PeerMsg::Sync {
            seq: 0,
            items: vec![],
        },
        upsert_batch(40),
        PeerMsg::SyncAck { seq: 12345 },
        PeerMsg::Digest {
            round: 9,
            root: 0xdead_beef_cafe_f00d,
            clock: 1_700_000_000_000_123,
        },
        PeerMsg::SliceDigests {
            round: 10,
            slices: (0..u64::from(SLICES))
                .map(|s| s.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect(),
        },
        PeerMsg::SliceClients {
            round: 11,
            as_of: 987_654,
            matched: vec![0, 1, 5, SLICES - 1],
            lists: vec![
                (
                    2,
                    (0..10)
                        .map(|i| ClientHash {
                            client: client(i),
                            state_hash: i * 31,
                        })
                        .collect(),
                ),
                (SLICES - 2, vec![]),
            ],
        },
        PeerMsg::Resync {
            clients: (0..9).map(client).collect(),
        },
        PeerMsg::SnapshotRequest { id: 7 },
        snapshot_chunk(25),
        PeerMsg::SnapshotChunk {
            id: 7,
            seq: 3,
            clients: vec![],
            done: true,
        },
        PeerMsg::SnapshotAck { id: 7, seq: 3 },
    ]
}

pub fn client_ops() -> Vec<ClientOp> {
    let svcs = services();
    vec![
        ClientOp::Register {
            service: svcs[0].clone(),
            instance: instance(2),
        },
        ClientOp::BatchRegister {
            service: svcs[1].clone(),
            instances: (0..6).map(instance).collect(),
        },
        ClientOp::Deregister {
            service: svcs[2].clone(),
            host: Host::V4(Ipv4Addr::new(10, 1, 2, 3)),
            port: 8080,
            cluster: "DEFAULT".into(),
        },
        ClientOp::Update {
            service: svcs[3].clone(),
            host: Host::Name("fd00::1".into()),
            port: 0,
            cluster: "c1".into(),
            patch: InstancePatch {
                weight: Some(3.5),
                enabled: Some(false),
                healthy: None,
                metadata: Some(Metadata::from_pairs([("k", "v")]).expect("metadata")),
            },
        },
        ClientOp::Update {
            service: svcs[0].clone(),
            host: Host::V4(Ipv4Addr::new(10, 1, 2, 3)),
            port: 65_535,
            cluster: "DEFAULT".into(),
            patch: InstancePatch {
                weight: None,
                enabled: None,
                healthy: Some(true),
                metadata: Some(Metadata::default()),
            },
        },
        ClientOp::Update {
            service: svcs[0].clone(),
            host: Host::V4(Ipv4Addr::new(10, 1, 2, 3)),
            port: 1,
            cluster: "DEFAULT".into(),
            patch: InstancePatch::default(),
        },
        ClientOp::Beat {
            service: svcs[0].clone(),
            host: Host::V4(Ipv4Addr::new(10, 1, 2, 3)),
            port: 8080,
            cluster: "DEFAULT".into(),
            reregister: Some(instance(5)),
        },
        ClientOp::Beat {
            service: svcs[1].clone(),
            host: Host::Name("node-1.example".into()),
            port: 8080,
            cluster: "c1".into(),
            reregister: None,
        },
        ClientOp::Subscribe {
            service: svcs[0].clone(),
            clusters: "c1,DEFAULT".into(),
        },
        ClientOp::Unsubscribe {
            service: svcs[0].clone(),
        },
        ClientOp::Disconnect,
    ]
}

/// Every kind of frame, every peer message, sync item, client operation and result.
pub fn all_frames() -> Vec<Frame> {
    let mut frames = vec![
        Frame::Hello {
            node: NodeId::new("10.0.0.1:8848"),
            incarnation: 1_700_000_000_123,
        },
        Frame::Hello {
            node: NodeId::new("[fd00::1]:8848"),
            incarnation: 0,
        },
        Frame::Reachable {
            up: vec![NodeId::new("10.0.0.2:8848"), NodeId::new("10.0.0.3:8848")],
        },
        Frame::Reachable { up: vec![] },
        Frame::Raft {
            payload: nacelle_wire::raft::seeds().swap_remove(2).1,
        },
        Frame::Raft { payload: vec![] },
    ];
    for (i, msg) in peer_msgs().into_iter().enumerate() {
        frames.push(Frame::Partition {
            partition: (i as u16 * 7) % engine::distro::PARTITIONS,
            msg,
        });
    }
    for (i, op) in client_ops().into_iter().enumerate() {
        let id = ForwardId {
            core: (i % 7) as u8,
            token: 1 + i as u64 * 1_000_000_007,
        };
        frames.push(Frame::RelayedBeat {
            client: client(i as u64 + 100),
            op: op.clone(),
        });
        frames.push(Frame::Forward {
            id,
            client: client(i as u64),
            op,
        });
    }
    let results = [
        Ok(OpOutcome::Changed),
        Ok(OpOutcome::Unchanged),
        Ok(OpOutcome::Beat { interval_ms: 5_000 }),
        Err(OpError::NotFound("instance 10.0.0.1:80 not found".into())),
        Err(OpError::Invalid("weight -1 must be a number >= 0".into())),
        Err(OpError::Conflict(String::new())),
        Err(OpError::Unavailable(
            "10.0.0.2:8848 did not answer in 3000 ms".into(),
        )),
    ];
    for (i, result) in results.into_iter().enumerate() {
        frames.push(Frame::ForwardReply {
            id: ForwardId {
                core: 255 - i as u8,
                token: (u64::MAX >> 8) - i as u64,
            },
            result,
        });
    }
    frames
}
