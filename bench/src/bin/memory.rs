//! Memory per instance of the engine alone: registers N HTTP instances (distinct `ip:port`
//! clients, S services, two short metadata entries each) into two shards, flushes, and prints
//! the RSS growth per instance. Uses the server's allocator (mimalloc).
//!
//!     cargo run --release -p bench --bin memory -- [instances=1000000] [services=10000]

use engine::shard::client_shard;
use engine::{
    ClientId, ClientOp, Command, InstanceSpec, Interner, Metadata, Now, ReadIndex, ServiceKey,
    Shard, ShardConfig, ShardMsg,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    sizes();
    let mut args = std::env::args().skip(1);
    let instances: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let services: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n = 2;
    let index = ReadIndex::new(n, 64 << 20);
    let now = Now {
        mono_ms: 1,
        unix_ms: 1_700_000_000_000,
    };
    let cfg = ShardConfig {
        shard_count: n,
        ..ShardConfig::default()
    };
    let mut shards: Vec<Shard> = (0..n)
        .map(|i| Shard::new(i, cfg.clone(), index.clone(), now))
        .collect();
    let keys: Vec<ServiceKey> = (0..services)
        .map(|s| ServiceKey::new("public", "DEFAULT_GROUP", &format!("svc-{s}")).expect("key"))
        .collect();
    let mut interner = Interner::default();
    let before = rss_kb();
    for id in 0..instances {
        let spec = InstanceSpec {
            ip: format!("10.{}.{}.{}", (id >> 16) & 255, (id >> 8) & 255, id & 255),
            port: 1024 + (id >> 24) as i64,
            metadata: Metadata::from_pairs([("zone", "z1"), ("ver", "1.0")]).expect("metadata"),
            ..Default::default()
        };
        let instance = spec.build(&mut interner).expect("valid");
        let client = ClientId::for_address(&instance.host, instance.port);
        let owner = client_shard(&client, n);
        let service = keys[(id % services) as usize].clone();
        shards[owner].handle(
            now,
            ShardMsg::Client {
                client,
                op: ClientOp::Register { service, instance },
                reply: None,
            },
        );
        if id % 1024 == 1023 || id + 1 == instances {
            // Deliver cross-shard messages and flush, as the server's cores do per burst.
            loop {
                let mut moved = false;
                for i in 0..n {
                    shards[i].flush(now);
                    let mut out = Vec::new();
                    while let Some(cmd) = shards[i].poll_command() {
                        if let Command::Send { shard, msg } = cmd {
                            out.push((shard, msg));
                        }
                    }
                    for (to, msg) in out {
                        moved = true;
                        shards[to].handle(now, msg);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
    }
    for s in shards.iter_mut() {
        s.flush(now);
    }
    let after = rss_kb();
    let count: i64 = shards
        .iter()
        .map(|s| {
            s.stats()
                .instances
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    println!(
        "instances={count} services={services} rss_before={before}kB rss_after={after}kB bytes_per_instance={:.0}",
        (after - before) as f64 * 1024.0 / count as f64
    );
    drop(std::hint::black_box(shards));
}

#[allow(dead_code)]
fn sizes() {
    eprintln!(
        "Instance={} ClientId={} Host={} Metadata={}",
        std::mem::size_of::<engine::Instance>(),
        std::mem::size_of::<ClientId>(),
        std::mem::size_of::<engine::Host>(),
        std::mem::size_of::<Metadata>()
    );
}
