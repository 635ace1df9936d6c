//! Engine hot paths: register, deregister, query of a 100-instance service, and the flush that
//! republishes a changed 100-instance view. Single shard, no IO: what one core does per request.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use engine::{
    ClientId, ClientOp, Command, Host, Instance, Now, ReadIndex, ServiceKey, Shard, ShardConfig,
    ShardMsg, Str,
};

const NOW: Now = Now {
    mono_ms: 1_000,
    unix_ms: 1_700_000_000_000,
};
/// Services the register/deregister benches spread over (a flush rebuilds each dirty one).
const SERVICES: usize = 100;
/// Messages between flushes, as a server core would batch them.
const FLUSH_EVERY: usize = 64;
/// Fresh shard every this many registrations, so memory stays flat however long criterion runs.
const CHUNK: u64 = 20_000;

fn shard() -> Shard {
    let cfg = ShardConfig {
        shard_count: 1,
        ..ShardConfig::default()
    };
    Shard::new(0, cfg, ReadIndex::new(1, 64 << 20), NOW)
}

fn services() -> Vec<ServiceKey> {
    (0..SERVICES)
        .map(|i| {
            ServiceKey::new("public", "DEFAULT_GROUP", &format!("bench-svc-{i}")).expect("valid")
        })
        .collect()
}

fn addr(i: u64) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i as u32))
}

fn instance(ip: Ipv4Addr, port: u16, cluster: &Str, weight: f64) -> Instance {
    let mut i = Instance::new(Host::V4(ip), port, cluster.clone());
    i.weight = weight;
    i
}

/// Register messages of `n` distinct HTTP clients (one instance each at the client's address).
fn register_msgs(n: u64, services: &[ServiceKey], cluster: &Str) -> Vec<ShardMsg> {
    (0..n)
        .map(|i| {
            let ip = addr(i);
            ShardMsg::Client {
                client: ClientId::V4(ip, 8080),
                op: ClientOp::Register {
                    service: services[i as usize % services.len()].clone(),
                    instance: instance(ip, 8080, cluster, 1.0),
                },
                reply: None,
            }
        })
        .collect()
}

fn deregister_msgs(n: u64, services: &[ServiceKey], cluster: &Str) -> Vec<ShardMsg> {
    (0..n)
        .map(|i| {
            let ip = addr(i);
            ShardMsg::Client {
                client: ClientId::V4(ip, 8080),
                op: ClientOp::Deregister {
                    service: services[i as usize % services.len()].clone(),
                    host: Host::V4(ip),
                    port: 8080,
                    cluster: cluster.clone(),
                },
                reply: None,
            }
        })
        .collect()
}

/// Applies `msgs`, flushing every `flush_every` and at the end; drains the commands.
fn apply(shard: &mut Shard, msgs: Vec<ShardMsg>, flush_every: usize) {
    for (k, msg) in msgs.into_iter().enumerate() {
        shard.handle(NOW, msg);
        if k % flush_every == flush_every - 1 {
            shard.flush(NOW);
        }
    }
    shard.flush(NOW);
    while let Some(cmd) = shard.poll_command() {
        black_box(cmd);
    }
}

fn quick(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("engine");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn bench_register_deregister(c: &mut Criterion) {
    let services = services();
    let cluster: Str = "DEFAULT".into();
    let mut g = quick(c);
    // Per registration, including a share of the view rebuilds: with a flush every 64
    // messages (a busy core's batch), and with one flush per 20k-message burst.
    for (name, flush_every) in [
        ("register/http_client_flush_every_64", FLUSH_EVERY),
        ("register/http_client_burst", usize::MAX),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    left -= n;
                    let mut s = shard();
                    let msgs = register_msgs(n, &services, &cluster);
                    let t = Instant::now();
                    apply(&mut s, msgs, flush_every);
                    total += t.elapsed();
                    drop(s);
                }
                total
            })
        });
    }
    g.bench_function("deregister/http_client_flush_every_64", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK);
                left -= n;
                let mut s = shard();
                apply(&mut s, register_msgs(n, &services, &cluster), usize::MAX);
                let msgs = deregister_msgs(n, &services, &cluster);
                let t = Instant::now();
                apply(&mut s, msgs, FLUSH_EVERY);
                total += t.elapsed();
                assert_eq!(s.client_count(), 0);
            }
            total
        })
    });
    g.finish();
}

/// A shard holding one service with 100 instances from 100 connection clients (two clusters,
/// one in ten unhealthy).
fn hundred() -> (Shard, ServiceKey, Arc<ReadIndex>) {
    let mut s = shard();
    let key = ServiceKey::new("public", "DEFAULT_GROUP", "hundred").expect("valid");
    let clusters: [Str; 2] = ["A".into(), "B".into()];
    for i in 0..100u64 {
        let mut inst = instance(addr(i), 8080, &clusters[i as usize % 2], 1.0);
        inst.healthy = i % 10 != 0;
        s.handle(
            NOW,
            ShardMsg::Client {
                client: ClientId::Conn(i),
                op: ClientOp::Register {
                    service: key.clone(),
                    instance: inst,
                },
                reply: None,
            },
        );
    }
    s.flush(NOW);
    let index = s.index().clone();
    (s, key, index)
}

fn bench_query(c: &mut Criterion) {
    let (_shard, key, index) = hundred();
    assert_eq!(index.view(&key).map(|v| v.instance_count), Some(100));
    let mut g = quick(c);
    g.bench_function("query/select_100_all", |b| {
        b.iter(|| {
            index.read(black_box(&key), |v| {
                v.map(|v| v.select(&[], false, true).instances.len())
            })
        })
    });
    g.bench_function("query/select_100_healthy_only_cluster_a", |b| {
        b.iter(|| {
            index.read(black_box(&key), |v| {
                v.map(|v| v.select(&["A"], true, true).instances.len())
            })
        })
    });
    g.bench_function("query/view_arc_100", |b| {
        b.iter(|| index.view(black_box(&key)).map(|v| v.instance_count))
    });
    g.finish();
}

fn bench_flush(c: &mut Criterion) {
    let (mut shard, key, index) = hundred();
    let cluster: Str = "A".into();
    let mut g = quick(c);
    let mut k = 0u64;
    // One client changes its instance (weight flips), then the flush rebuilds and republishes
    // the 100-instance view.
    g.bench_function("flush/publish_changed_100_view", |b| {
        b.iter_batched(
            || {
                k += 1;
                ShardMsg::Client {
                    client: ClientId::Conn(0),
                    op: ClientOp::Register {
                        service: key.clone(),
                        instance: instance(addr(0), 8080, &cluster, 1.0 + (k % 2) as f64),
                    },
                    reply: None,
                }
            },
            |msg| {
                shard.handle(NOW, msg);
                shard.flush(NOW);
                while let Some(cmd) = shard.poll_command() {
                    if let Command::Push { .. } = cmd {
                        unreachable!("no subscribers");
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    assert_eq!(index.view(&key).map(|v| v.instance_count), Some(100));
}

criterion_group!(benches, bench_register_deregister, bench_query, bench_flush);
criterion_main!(benches);
