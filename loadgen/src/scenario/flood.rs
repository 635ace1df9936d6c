//! `flood`: open-loop queries through a cheap raw client ([`crate::raw`] for gRPC,
//! [`crate::raw_http`] for HTTP/1.1), for overload tests where the generator must offer more
//! than the server can answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::query::{prepare, report_prepared};
use super::Ctx;
use crate::cli::{FloodArgs, Mode};
use crate::http::path_with_query;
use crate::raw::{encode_request, Caller, RawConn};
use crate::raw_http::{encode_get, HttpCaller, HttpFloodConn};
use crate::stats::{OpError, Recorder, Report};

/// Sends one pre-encoded query on one connection.
#[derive(Clone)]
enum Sender {
    Grpc(Caller),
    Http(HttpCaller),
}

impl Sender {
    async fn request(self, frame: Bytes) -> Result<(), OpError> {
        match self {
            Sender::Grpc(c) => c.request(frame).await,
            Sender::Http(c) => c.request(frame).await,
        }
    }
}

/// The open connections of either protocol.
enum Conns {
    Grpc(Vec<RawConn>),
    Http(Vec<HttpFloodConn>),
}

/// What one dispatcher measured.
struct ShardOut {
    /// Answered requests (latency from the intended send time) and failures by kind.
    rec: Recorder,
    /// Answered requests, latency from the actual send.
    service: Recorder,
    /// How late requests were issued.
    lag: Recorder,
    /// Requests still unanswered when the drain ended.
    unfinished: usize,
    /// When the last request was issued.
    last_issue: Instant,
    /// The answers by the second (since the start) in which they came.
    per_sec: Vec<Recorder>,
}

/// The schedule shared by the dispatchers: ticket `i` is due at `start + i / rate`, goes to
/// service `i % services` on connection `i % connections`; dispatcher `k` of `n` owns the
/// tickets `i ≡ k (mod n)`.
struct Plan {
    start: Instant,
    interval_ns: f64,
    total: u64,
    /// The request of each service, per row (one row per target for HTTP, whose requests
    /// name their `Host`; one row for gRPC).
    frames: Vec<Vec<Bytes>>,
    /// Each connection's sender and its row of `frames`.
    callers: Vec<(Sender, usize)>,
    timeout: Duration,
    max_inflight: usize,
}

impl Plan {
    fn at(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((self.interval_ns * i as f64) as u64)
    }
}

async fn dispatch(plan: Arc<Plan>, k: u64, n: u64) -> ShardOut {
    let mut out = ShardOut {
        rec: Recorder::new(),
        service: Recorder::new(),
        lag: Recorder::new(),
        unfinished: 0,
        last_issue: plan.start,
        per_sec: Vec::new(),
    };
    let mut pending = FuturesUnordered::new();
    let mut i = k;
    let sleep = tokio::time::sleep_until(plan.at(i));
    tokio::pin!(sleep);
    let mut armed = plan.at(i);
    let mut drain_until: Option<Instant> = None;
    let max_inflight = plan.max_inflight.max(1);
    loop {
        let now = Instant::now();
        while i < plan.total {
            let t = plan.at(i);
            if t > now {
                break;
            }
            out.lag.ok(now.saturating_duration_since(t));
            if pending.len() >= max_inflight {
                out.rec.err(&OpError::Dropped);
            } else {
                let (caller, row) = &plan.callers[(i % plan.callers.len() as u64) as usize];
                let frames = &plan.frames[*row];
                let frame = frames[(i % frames.len() as u64) as usize].clone();
                let caller = caller.clone();
                let timeout = plan.timeout;
                pending.push(async move {
                    let sent = Instant::now();
                    let r = tokio::time::timeout(timeout, caller.request(frame))
                        .await
                        .unwrap_or(Err(OpError::Timeout));
                    (t, sent, r)
                });
            }
            out.last_issue = now;
            i += n;
        }
        if i >= plan.total {
            if pending.is_empty() {
                break;
            }
            let until = *drain_until.get_or_insert(now + plan.timeout + Duration::from_secs(1));
            if armed != until {
                sleep.as_mut().reset(until);
                armed = until;
            }
        } else {
            let next = plan.at(i);
            if armed != next {
                sleep.as_mut().reset(next);
                armed = next;
            }
        }
        tokio::select! {
            biased;
            Some((t, sent, r)) = pending.next(), if !pending.is_empty() => {
                let done = Instant::now();
                let latency = done.saturating_duration_since(t);
                out.rec.record(&r, latency);
                let sec = done.saturating_duration_since(plan.start).as_secs() as usize;
                if out.per_sec.len() <= sec {
                    out.per_sec.resize_with(sec + 1, Recorder::new);
                }
                out.per_sec[sec].record(&r, latency);
                if r.is_ok() {
                    out.service.ok(done.saturating_duration_since(sent));
                }
            }
            _ = &mut sleep => {
                if drain_until.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    out.unfinished = pending.len();
    out
}

/// This process's CPU time (user + system).
#[allow(unsafe_code)]
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass by valid pointer; all-zero is a valid
    // rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `flood`.
pub async fn run(a: &FloodArgs) -> Result<Report, String> {
    let ctx = Ctx::new(&a.common)?;
    if !(a.rate > 0.0 && a.duration > 0.0) || a.set.services == 0 || a.connections == 0 {
        return Err("--rate, --duration, --services and --connections must be > 0".into());
    }
    let mut prepare_rec = None;
    let mut holders = Vec::new();
    if a.set.prepare {
        let n = a.connections.min(a.set.services).max(1) as usize;
        let (conns, _) = ctx.connect(&ctx.grpc_addrs, n, None, "prepare").await?;
        println!(
            "prepare: {} instances in each of {} services",
            a.set.instances_per_service, a.set.services
        );
        prepare_rec =
            Some(prepare(&ctx, &conns, a.set.services, a.set.instances_per_service, 0).await);
        holders = conns;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut connect_rec = Recorder::new();
    let n = a.connections as usize;
    let (conns, callers, frames, shed_kind) = match a.protocol {
        Mode::Grpc => {
            let mut conns = Vec::with_capacity(n);
            for c in 0..n {
                let addr = &ctx.grpc_addrs[c % ctx.grpc_addrs.len()];
                let t0 = std::time::Instant::now();
                match RawConn::connect(addr, ctx.timeout).await {
                    Ok(conn) => {
                        connect_rec.ok(t0.elapsed());
                        conns.push(conn);
                    }
                    Err(e) => return Err(format!("raw gRPC connection to {addr} failed: {e}")),
                }
            }
            let frames: Vec<Bytes> = (0..a.set.services)
                .map(|s| {
                    encode_request(
                        "ServiceQueryRequest",
                        ctx.names.query_request(&ctx.service(s), a.set.healthy_only),
                    )
                })
                .collect();
            let callers = conns
                .iter()
                .map(|c| (Sender::Grpc(c.caller()), 0))
                .collect();
            (
                Conns::Grpc(conns),
                callers,
                vec![frames],
                OpError::Nacos(503).kind(),
            )
        }
        Mode::Http => {
            let addrs = &ctx.http_addrs;
            let mut conns = Vec::with_capacity(n);
            for c in 0..n {
                let addr = &addrs[c % addrs.len()];
                let t0 = std::time::Instant::now();
                match HttpFloodConn::connect(addr, ctx.timeout, a.pipeline as usize).await {
                    Ok(conn) => {
                        connect_rec.ok(t0.elapsed());
                        conns.push(conn);
                    }
                    Err(e) => return Err(format!("HTTP connection to {addr} failed: {e}")),
                }
            }
            let frames: Vec<Vec<Bytes>> = addrs
                .iter()
                .map(|host| {
                    (0..a.set.services)
                        .map(|s| encode_get(host, &list_path(&ctx, s, a.set.healthy_only)))
                        .collect()
                })
                .collect();
            let callers = conns
                .iter()
                .enumerate()
                .map(|(c, conn)| (Sender::Http(conn.caller()), c % addrs.len()))
                .collect();
            (
                Conns::Http(conns),
                callers,
                frames,
                OpError::Http(503).kind(),
            )
        }
    };
    let total = (a.rate * a.duration).round().max(1.0) as u64;
    let shards = tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
        .clamp(1, n) as u64;
    println!(
        "flood: {total} {} queries at {}/s over {} connections, {} services, {shards} dispatcher(s)",
        match a.protocol {
            Mode::Grpc => "gRPC",
            Mode::Http => "HTTP",
        },
        a.rate,
        a.connections,
        a.set.services
    );
    let plan = Arc::new(Plan {
        start: Instant::now() + Duration::from_millis(10),
        interval_ns: 1e9 / a.rate,
        total,
        frames,
        callers,
        timeout: ctx.timeout,
        max_inflight: a.set.max_inflight.div_ceil(shards as usize),
    });
    let cpu0 = cpu_time();
    let tasks: Vec<_> = (0..shards)
        .map(|k| tokio::spawn(dispatch(plan.clone(), k, shards)))
        .collect();
    let mut rec = Recorder::new();
    let mut service = Recorder::new();
    let mut lag = Recorder::new();
    let mut unfinished = 0;
    let mut last_issue = plan.start;
    let mut per_sec: Vec<Recorder> = Vec::new();
    for t in tasks {
        let o = t.await.map_err(|e| format!("dispatcher failed: {e}"))?;
        rec.merge(&o.rec);
        service.merge(&o.service);
        lag.merge(&o.lag);
        unfinished += o.unfinished;
        last_issue = last_issue.max(o.last_issue);
        for (i, r) in o.per_sec.iter().enumerate() {
            if per_sec.len() <= i {
                per_sec.resize_with(i + 1, Recorder::new);
            }
            per_sec[i].merge(r);
        }
    }
    let took = plan.start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    // gRPC connections are not reopened: those dead at the end; HTTP ones are: every loss.
    let (lost, down) = match &conns {
        Conns::Grpc(c) => {
            let dead = c.iter().filter(|c| !c.alive()).count() as u64;
            (dead, dead)
        }
        Conns::Http(c) => (
            c.iter().map(HttpFloodConn::losses).sum(),
            c.iter().filter(|c| !c.alive()).count() as u64,
        ),
    };
    drop(conns);
    drop(holders);

    let secs = took.as_secs_f64().max(1e-9);
    let window = last_issue
        .saturating_duration_since(plan.start)
        .as_secs_f64();
    let shed = rec.errors.get(&shed_kind).copied().unwrap_or(0);
    let dropped = rec.errors.get("overload-dropped").copied().unwrap_or(0);
    let issued = total - dropped;
    let mut report = Report::new("flood", "query", rec, took);
    report.extra(
        "mode",
        json!(match a.protocol {
            Mode::Grpc => "grpc-raw",
            Mode::Http => "http1-raw",
        }),
    );
    report.extra("protocol", json!(a.protocol));
    report.extra("shed_kind", json!(shed_kind));
    report.extra("target_rate", json!(a.rate));
    report.extra("scheduled", json!(total));
    report.extra("issued", json!(issued));
    report.extra(
        "offered_per_s",
        json!(if window > 0.0 {
            (issued as f64 / window * 10.0).round() / 10.0
        } else {
            0.0
        }),
    );
    report.extra("shed", json!(shed));
    report.extra(
        "shed_per_s",
        json!((shed as f64 / secs * 10.0).round() / 10.0),
    );
    report.extra("unfinished", json!(unfinished));
    report.extra(
        "timeline",
        json!(per_sec
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let lat = r.latency_json();
                json!({
                    "s": i,
                    "answered": r.oks(),
                    "shed": r.errors.get(&shed_kind).copied().unwrap_or(0),
                    "other_errors": r.error_count()
                        - r.errors.get(&shed_kind).copied().unwrap_or(0),
                    "p50_us": lat["p50"],
                    "p99_us": lat["p99"],
                    "max_us": lat["max"],
                })
            })
            .collect::<Vec<_>>()),
    );
    report.extra("connections_lost", json!(lost));
    report.extra("connections_down_at_end", json!(down));
    report.extra("dispatchers", json!(shards));
    report.extra(
        "loadgen_cpu_s",
        json!((cpu.as_secs_f64() * 1000.0).round() / 1000.0),
    );
    report.extra(
        "loadgen_cpu_per_request_us",
        json!(((cpu.as_secs_f64() * 1e6 / issued.max(1) as f64) * 100.0).round() / 100.0),
    );
    report.notes.push(format!(
        "{:<18} offered {:.0}/s, shed {shed} ({:.0}/s), generator CPU {:.2} s ({:.0} % of the run)",
        "flood",
        if window > 0.0 {
            issued as f64 / window
        } else {
            0.0
        },
        shed as f64 / secs,
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / secs * 100.0
    ));
    report.extra_latency("service_latency_us", "from actual send", &service);
    report.extra_latency("send_lag_us", "send lag", &lag);
    report.extra_latency("connect_latency_us", "connect", &connect_rec);
    report_prepared(&mut report, prepare_rec, a.set.instances_per_service);
    Ok(report)
}

/// `/nacos/v1/ns/instance/list?serviceName=..&namespaceId=..&groupName=..` for service `s`.
fn list_path(ctx: &Ctx, s: u32, healthy_only: bool) -> String {
    let service = ctx.service(s);
    let mut params = vec![
        ("serviceName", service.as_str()),
        ("namespaceId", ctx.names.namespace.as_str()),
        ("groupName", ctx.names.group.as_str()),
    ];
    if healthy_only {
        params.push(("healthyOnly", "true"));
    }
    path_with_query("/nacos/v1/ns/instance/list", &params)
}
