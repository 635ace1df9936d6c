//! The scenarios and what they share.

mod churn;
mod flood;
mod list;
mod persist;
mod query;
mod register;
mod subscribe;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{Common, Scenario};
use crate::grpc::{self, counters, Conn, ConnOpts, PushHandler};
use crate::layout::Names;
use crate::stats::{bar, Recorder, Report};

/// Runs a scenario to its report.
pub async fn run(s: Scenario) -> Result<Report, String> {
    let (mut report, config) = match s {
        Scenario::Register(a) => (register::run(&a).await?, serde_json::to_value(&a)),
        Scenario::Query(a) => (query::run(&a).await?, serde_json::to_value(&a)),
        Scenario::List(a) => (list::run(&a).await?, serde_json::to_value(&a)),
        Scenario::Subscribe(a) => (subscribe::run(&a, false).await?, serde_json::to_value(&a)),
        Scenario::Converge(a) => (subscribe::run(&a, true).await?, serde_json::to_value(&a)),
        Scenario::Churn(a) => (churn::run(&a).await?, serde_json::to_value(&a)),
        Scenario::Flood(a) => (flood::run(&a).await?, serde_json::to_value(&a)),
        Scenario::Persist(a) => (persist::run(&a).await?, serde_json::to_value(&a)),
        Scenario::Listen(a) => (persist::listen(&a).await?, serde_json::to_value(&a)),
    };
    report.extra("stream", stream_counters());
    report.extra("config", config.unwrap_or(Value::Null));
    Ok(report)
}

/// What every scenario derives from the common flags.
#[derive(Clone)]
pub struct Ctx {
    /// Request naming.
    pub names: Names,
    /// `host:grpcPort` per target.
    pub grpc_addrs: Vec<String>,
    /// `host:httpPort` per target.
    pub http_addrs: Vec<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Connect concurrency.
    pub connect_concurrency: usize,
    /// Hide progress bars.
    pub hidden: bool,
    /// Metadata entries per instance.
    pub metadata_entries: usize,
}

impl Ctx {
    /// Resolves the common flags.
    pub fn new(c: &Common) -> Result<Ctx, String> {
        if c.targets.is_empty() {
            return Err("--targets is empty".into());
        }
        let grpc_addrs = c
            .targets
            .iter()
            .map(|t| t.grpc_addr(c.grpc_port_offset))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Ctx {
            names: Names {
                namespace: c.namespace.clone(),
                group: c.group.clone(),
                prefix: c.service_prefix.clone(),
            },
            grpc_addrs,
            http_addrs: c.targets.iter().map(|t| t.http_addr()).collect(),
            timeout: Duration::from_millis(c.timeout_ms.max(1)),
            connect_concurrency: c.connect_concurrency.max(1),
            hidden: c.no_progress,
            metadata_entries: c.metadata_entries,
        })
    }

    /// Service name of index `s`.
    pub fn service(&self, s: u32) -> String {
        crate::layout::service_name(&self.names.prefix, s)
    }

    /// Connection options.
    pub fn opts(&self, push: Option<PushHandler>) -> ConnOpts {
        ConnOpts {
            timeout: self.timeout,
            push,
        }
    }

    /// Opens `n` gRPC connections over `addrs` with a progress bar; fails if none opened.
    pub async fn connect(
        &self,
        addrs: &[String],
        n: usize,
        push: Option<PushHandler>,
        what: &str,
    ) -> Result<(Vec<Option<Conn>>, Recorder), String> {
        let opts = self.opts(push);
        self.connect_with(addrs, n, what, |addr, i, t| {
            let opts = opts.clone();
            async move { Conn::connect(&addr, i, t, &opts).await }
        })
        .await
    }

    /// Opens `n` connections with `connect(addr, index, target)` over `addrs` with a progress
    /// bar (see [`grpc::connect_many_with`]); fails if none opened.
    pub async fn connect_with<C, F, Fut>(
        &self,
        addrs: &[String],
        n: usize,
        what: &str,
        connect: F,
    ) -> Result<(Vec<Option<C>>, Recorder), String>
    where
        F: Fn(String, usize, usize) -> Fut,
        Fut: std::future::Future<Output = Result<C, crate::stats::OpError>>,
    {
        let pb = bar(n as u64, what, self.hidden);
        let (conns, rec) =
            grpc::connect_many_with(addrs, n, self.connect_concurrency, &pb, connect).await;
        pb.finish_and_clear();
        let up = conns.iter().filter(|c| c.is_some()).count();
        if up == 0 && n > 0 {
            return Err(format!(
                "no gRPC connection could be opened to {} ({})",
                addrs.join(","),
                rec.errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        if up < n {
            eprintln!("loadgen: {} of {n} {what} connections failed", n - up);
        }
        Ok((conns, rec))
    }
}

/// The stream counters as JSON.
pub fn stream_counters() -> Value {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "pushes_received": g(&counters::PUSHES),
        "client_detections_answered": g(&counters::DETECTIONS),
        "connect_resets": g(&counters::RESETS),
        "health_checks": g(&counters::HEALTH_CHECKS),
        "health_check_failures": g(&counters::HEALTH_FAILURES),
        "streams_closed": g(&counters::STREAMS_CLOSED),
        "setup_ack_timeouts": g(&counters::SETUP_ACK_TIMEOUTS),
    })
}

/// Keeps whatever the caller holds alive for `secs` seconds (-1 = until Ctrl-C), printing a
/// status line every 5 s built by `status`. Returns the time held.
pub async fn hold(secs: i64, status: impl Fn() -> String) -> Duration {
    let start = tokio::time::Instant::now();
    if secs == 0 {
        return Duration::ZERO;
    }
    let until = (secs > 0).then(|| start + Duration::from_secs(secs as u64));
    match until {
        Some(_) => println!("holding for {secs} s (Ctrl-C to stop early)"),
        None => println!("holding until Ctrl-C"),
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        let sleep = async {
            match until {
                Some(u) => tokio::time::sleep_until(u).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = &mut ctrl_c => { println!("Ctrl-C: ending hold"); break; }
            _ = sleep => break,
            _ = tick.tick() => {
                println!("[hold {:>6.0} s] {}", start.elapsed().as_secs_f64(), status());
            }
        }
    }
    start.elapsed()
}

/// A one-line summary of `alive` of `total` connections and stream traffic.
pub fn stream_status(alive: usize, total: usize) -> String {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "{alive}/{total} connections alive, health checks {} (failed {}), detections {}, pushes {}",
        g(&counters::HEALTH_CHECKS),
        g(&counters::HEALTH_FAILURES),
        g(&counters::DETECTIONS),
        g(&counters::PUSHES)
    )
}

/// Tiny deterministic PRNG (xorshift64*), enough to pick services and operations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}
