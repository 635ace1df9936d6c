//! The node-to-node codec on the replication path: encode and decode of a Distro sync batch
//! of 512 one-instance upserts (the largest batch a shard sends) and of a snapshot chunk of
//! 2,000 one-instance clients (what a joining node receives per round trip). Instances look
//! like HTTP registrations: IPv4 host, two metadata entries, services shared by many clients
//! (keys interned, as a shard's are).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::distro::{ClientState, EntryState, NodeId, PeerMsg, SyncItem};
use engine::{ClientId, Host, Instance, Metadata, ServiceKey, Str};
use wire::peer::{decode_frame, peek_partition, Encoder, Frame, LENGTH_PREFIX};

/// Distinct services in a batch.
const SERVICES: usize = 50;

/// Cluster names are interned by the shard, as service keys are.
fn cluster() -> Str {
    Str::from("DEFAULT")
}

fn services() -> Vec<ServiceKey> {
    (0..SERVICES)
        .map(|s| ServiceKey::new("public", "DEFAULT_GROUP", &format!("service-{s}")).expect("key"))
        .collect()
}

fn entry(services: &[ServiceKey], cluster: &Str, i: u32) -> EntryState {
    let metadata =
        Metadata::from_pairs([("zone", format!("z{}", i % 3)), ("version", "1.4.2".into())])
            .expect("metadata");
    let instance = Instance::from_parts(
        Host::V4(Ipv4Addr::from(0x0a00_0000 + i)),
        8080,
        1.0,
        true,
        true,
        cluster.clone(),
        metadata,
        None,
    )
    .expect("instance");
    EntryState {
        service: services[i as usize % services.len()].clone(),
        rev: 1_000_000 + u64::from(i),
        publish: Arc::from(vec![instance]),
    }
}

fn client(i: u32) -> ClientId {
    // Half connection clients, half HTTP clients, as in a mixed cluster.
    if i.is_multiple_of(2) {
        ClientId::Conn(u64::from(i) * 64 + 3)
    } else {
        ClientId::V4(Ipv4Addr::from(0x0a00_0000 + i), 8080)
    }
}

fn sync_batch() -> Frame {
    let (services, cluster) = (services(), cluster());
    Frame::Partition {
        partition: 3,
        msg: PeerMsg::Sync {
            seq: 42,
            items: (0..512)
                .map(|i| SyncItem::Upsert {
                    client: client(i),
                    entry: entry(&services, &cluster, i),
                })
                .collect(),
        },
    }
}

fn snapshot_chunk() -> Frame {
    let (services, cluster) = (services(), cluster());
    let nodes = [
        NodeId::new("10.0.0.1:8848"),
        NodeId::new("10.0.0.2:8848"),
        NodeId::new("10.0.0.3:8848"),
    ];
    Frame::Partition {
        partition: 3,
        msg: PeerMsg::SnapshotChunk {
            id: 1,
            seq: 7,
            clients: (0..2_000)
                .map(|i| {
                    let state = ClientState {
                        client: client(i),
                        rev: 2_000_000 + u64::from(i),
                        entries: vec![entry(&services, &cluster, i)],
                    };
                    (nodes[i as usize % nodes.len()].clone(), state)
                })
                .collect(),
            done: false,
        },
    }
}

fn peer_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer_codec");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for (name, frame, items) in [
        ("sync batch, 512 one-instance upserts", sync_batch(), 512),
        (
            "snapshot chunk, 2000 one-instance clients",
            snapshot_chunk(),
            2_000,
        ),
    ] {
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        enc.encode_frame(&frame, &mut out);
        println!("{name}: {} bytes", out.len());
        g.throughput(Throughput::Elements(items));
        g.bench_function(format!("encode {name}"), |b| {
            b.iter(|| {
                out.clear();
                enc.encode_frame(black_box(&frame), &mut out);
                black_box(out.len())
            })
        });
        let mut bytes = Vec::new();
        enc.encode_frame(&frame, &mut bytes);
        let body = &bytes[LENGTH_PREFIX..];
        g.bench_function(format!("decode {name}"), |b| {
            b.iter(|| black_box(decode_frame(black_box(body)).expect("decodes")))
        });
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("peek_partition {name}"), |b| {
            b.iter(|| black_box(peek_partition(black_box(body))))
        });
    }
    g.finish();
}

criterion_group!(benches, peer_codec);
criterion_main!(benches);
