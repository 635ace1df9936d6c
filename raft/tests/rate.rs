//! Durable write rate of a standalone node (ignored: a measurement, not a check):
//! `cargo test --release -p nacelle-raft --test rate -- --ignored --nocapture`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{register, rt, NoNet};
use nacelle_raft::{RaftConfig, RaftNode, Role};

fn measure(writers: usize, secs: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    // The sink only counts: this measures Raft and the store, not a test model.
    let h = RaftNode::start(RaftConfig::new(1, [1].into(), dir.path()), NoNet, |_, _| {})
        .expect("start");
    let t = Instant::now();
    while h.metrics().role != Role::Leader {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new(3).expect("histogram"),
    ));
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (h, stop, hist) = (h.clone(), stop.clone(), hist.clone());
            tasks.push(tokio::spawn(async move {
                let mut local = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let svc = format!("svc-{w}");
                    h.write(register(&svc, (i % 60000) as u16))
                        .await
                        .expect("write");
                    local
                        .record(t.elapsed().as_micros() as u64)
                        .expect("record");
                    i += 1;
                }
                hist.lock().expect("hist").add(local).expect("add");
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("task");
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let hist = hist.lock().expect("hist");
    let m = h.metrics();
    println!(
        "{writers:>4} writers: {:>7.0} durable writes/s, p50 {:.2} ms, p99 {:.2} ms, {} entries, {} fsyncs",
        hist.len() as f64 / elapsed,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        m.last_log.unwrap_or(0),
        m.fsyncs,
    );
    h.shutdown();
}

#[test]
#[ignore]
fn standalone_durable_write_rate() {
    for writers in std::env::var("RATE_WRITERS")
        .map(|v| {
            v.split(',')
                .filter_map(|x| x.parse().ok())
                .collect::<Vec<usize>>()
        })
        .unwrap_or_else(|_| vec![1, 16, 256])
    {
        measure(writers, 4);
    }
}
