//! `register`: reach N instances as fast as possible (or at a rate), then optionally hold them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::json;

use super::{hold, stream_status, Ctx};
use crate::cli::{GrpcClient, Mode, RegisterArgs};
use crate::grpc::Conn;
use crate::http::{path_with_query, HttpConn};
use crate::layout::{self, instance_addr, instance_json, metadata_json, Sizes};
use crate::raw::{encode_request, RawConn};
use crate::stats::{bar, OpError, Pacer, Recorder, Report, Shared};

/// Runs `register`.
pub async fn run(a: &RegisterArgs) -> Result<Report, String> {
    let ctx = Ctx::new(&a.common)?;
    match a.mode {
        Mode::Grpc => grpc(a, &ctx).await,
        Mode::Http => http(a, &ctx).await,
    }
}

#[derive(Deserialize)]
struct Hosts {
    hosts: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct QueryReply {
    #[serde(rename = "serviceInfo")]
    service_info: Option<Hosts>,
}

/// Number of hosts in a `QueryServiceResponse` (gRPC) or an `/instance/list` answer (HTTP).
pub fn count_hosts(body: &[u8], grpc: bool) -> Option<usize> {
    if grpc {
        let r: QueryReply = serde_json::from_slice(body).ok()?;
        Some(r.service_info?.hosts.map_or(0, |h| h.len()))
    } else {
        let r: Hosts = serde_json::from_slice(body).ok()?;
        Some(r.hosts.map_or(0, |h| h.len()))
    }
}

/// A registering connection through either gRPC client.
enum RegConn {
    Tonic(Conn),
    Raw(RawConn),
}

impl RegConn {
    /// Sends one request and returns the answer's JSON body (empty for the raw client unless
    /// `want_body`: its answers are classified without decoding them).
    async fn request(
        &self,
        kind: &str,
        json: Vec<u8>,
        want_body: bool,
    ) -> Result<Vec<u8>, OpError> {
        match self {
            RegConn::Tonic(c) => c.request(kind, json).await.map(|r| r.body),
            RegConn::Raw(c) => {
                let frame = encode_request(kind, json);
                let call = async {
                    if want_body {
                        c.caller().request_body(frame).await
                    } else {
                        c.caller().request(frame).await.map(|()| Vec::new())
                    }
                };
                tokio::time::timeout(c.timeout(), call)
                    .await
                    .unwrap_or(Err(OpError::Timeout))
            }
        }
    }

    fn alive(&self) -> bool {
        match self {
            RegConn::Tonic(c) => c.alive(),
            RegConn::Raw(c) => c.alive(),
        }
    }
}

/// Registers the planned publishes of one connection, `inflight` at a time.
#[allow(clippy::too_many_arguments)]
async fn register_conn(
    ctx: &Ctx,
    conn: Option<&RegConn>,
    pubs: Vec<layout::Publish>,
    batched: bool,
    inflight: usize,
    pacer: &Pacer,
    rec: &Shared,
    registered: &AtomicU64,
    pb: &indicatif::ProgressBar,
) {
    futures_util::stream::iter(pubs)
        .for_each_concurrent(inflight.max(1), |p| async move {
            let Some(conn) = conn else {
                rec.lock().err(&OpError::NotConnected);
                pb.inc(u64::from(p.count));
                return;
            };
            let service = ctx.service(p.service);
            let instances: Vec<String> = (p.first..p.first + u64::from(p.count))
                .map(|i| {
                    let (ip, port) = instance_addr(i);
                    instance_json(&ip, port, ctx.metadata_entries, &[])
                })
                .collect();
            let (kind, body) = if batched {
                (
                    "BatchInstanceRequest",
                    ctx.names.batch_request(&service, &instances),
                )
            } else {
                let inst = instances.first().map(String::as_str).unwrap_or("{}");
                (
                    "InstanceRequest",
                    ctx.names.instance_request(&service, inst, true),
                )
            };
            pacer.wait().await;
            let t0 = Instant::now();
            let r = conn.request(kind, body, false).await;
            rec.lock().record(&r, t0.elapsed());
            if r.is_ok() {
                registered.fetch_add(u64::from(p.count), Ordering::Relaxed);
            }
            pb.inc(u64::from(p.count));
        })
        .await;
}

/// How `a` spreads instances over services.
fn sizes(a: &RegisterArgs) -> Sizes {
    match a.skew {
        Some(shape) => Sizes::Pareto {
            shape,
            max: a.skew_max,
        },
        None => Sizes::Even,
    }
}

async fn grpc(a: &RegisterArgs, ctx: &Ctx) -> Result<Report, String> {
    let plan = layout::plan_sized(a.instances, a.services, a.connections, a.batch, sizes(a))?;
    let requests: usize = plan.per_conn.iter().map(Vec::len).sum();
    let expected = plan.service_count(a.services);
    println!(
        "register: {} instances in {} services over {} gRPC connections to {} ({} {}requests)",
        plan.instances(),
        a.services,
        a.connections,
        ctx.grpc_addrs.join(","),
        requests,
        if a.batch > 1 { "batch " } else { "" }
    );
    let (conns, connect_rec) = match a.client {
        GrpcClient::Tonic => {
            let (conns, rec) = ctx
                .connect(&ctx.grpc_addrs, a.connections as usize, None, "connect")
                .await?;
            (
                conns.into_iter().map(|c| c.map(RegConn::Tonic)).collect(),
                rec,
            )
        }
        GrpcClient::Raw => {
            let timeout = ctx.timeout;
            ctx.connect_with(
                &ctx.grpc_addrs,
                a.connections as usize,
                "connect",
                |addr, _, _| async move { RawConn::connect(&addr, timeout).await.map(RegConn::Raw) },
            )
            .await?
        }
    };
    let conns: Arc<Vec<Option<RegConn>>> = Arc::new(conns);
    let rec = Shared::new();
    let registered = Arc::new(AtomicU64::new(0));
    let pacer = Arc::new(Pacer::new(a.rate));
    let pb = bar(a.instances, "register", ctx.hidden);
    let ctx = Arc::new(ctx.clone());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, pubs) in plan.per_conn.into_iter().enumerate() {
        let (conns, rec, registered, pacer, pb, ctx) = (
            conns.clone(),
            rec.clone(),
            registered.clone(),
            pacer.clone(),
            pb.clone(),
            ctx.clone(),
        );
        let (batched, inflight) = (a.batch > 1, a.inflight);
        tasks.spawn(async move {
            let conn = conns.get(c).and_then(Option::as_ref);
            register_conn(
                &ctx,
                conn,
                pubs,
                batched,
                inflight,
                &pacer,
                &rec,
                &registered,
                &pb,
            )
            .await;
        });
    }
    while tasks.join_next().await.is_some() {}
    let took = start.elapsed();
    pb.finish_and_clear();
    let done = registered.load(Ordering::Relaxed);
    let mut report = summary(a, "grpc", rec.snapshot(), done, took);
    report.extra(
        "connections_up",
        json!(conns.iter().filter(|c| c.is_some()).count()),
    );
    report.extra_latency("connect_latency_us", "connect", &connect_rec);

    if !a.no_verify {
        let first = conns.iter().flatten().next();
        if let Some(conn) = first {
            let names = &ctx.names;
            let v = verify(&ctx, &expected, |service| async move {
                let body = names.query_request(&service, false);
                let r = conn.request("ServiceQueryRequest", body, true).await?;
                count_hosts(&r, true).ok_or(OpError::Decode)
            })
            .await;
            v.apply(&mut report);
        }
    }

    let held = hold(a.hold, || {
        let alive = conns.iter().flatten().filter(|c| c.alive()).count();
        format!(
            "{} instances registered; {}",
            registered.load(Ordering::Relaxed),
            stream_status(alive, conns.len())
        )
    })
    .await;
    report.extra("hold_s", json!(held.as_secs_f64().round()));
    if a.hold != 0 {
        report.extra(
            "connections_alive_after_hold",
            json!(conns.iter().flatten().filter(|c| c.alive()).count()),
        );
    }
    Ok(report)
}

/// Prints the registration line and starts the report both modes share: `done` of
/// `--instances` registered in `took`.
fn summary(a: &RegisterArgs, mode: &str, rec: Recorder, done: u64, took: Duration) -> Report {
    let per_s = done as f64 / took.as_secs_f64().max(1e-9);
    println!(
        "registered {done}/{} instances in {:.2} s ({per_s:.0} instances/s)",
        a.instances,
        took.as_secs_f64(),
    );
    let mut report = Report::new("register", "request", rec, took);
    report.extra("mode", json!(mode));
    report.extra("instances_target", json!(a.instances));
    report.extra("instances_registered", json!(done));
    report.extra("instances_per_s", json!(per_s.round()));
    report.extra("connections", json!(a.connections));
    report
}

/// Result of counting every service's instances after the run.
pub struct Verified {
    seen: u64,
    expected: u64,
    mismatched: Vec<(u32, u64, u64)>,
    failed: u64,
}

impl Verified {
    fn apply(&self, report: &mut Report) {
        report.extra(
            "verify",
            json!({
                "instances_seen": self.seen,
                "instances_expected": self.expected,
                "services_mismatched": self.mismatched.len(),
                "queries_failed": self.failed,
            }),
        );
        let mut line = format!(
            "{:<18} {} of {} instances seen by queries",
            "verify", self.seen, self.expected
        );
        if !self.mismatched.is_empty() {
            let ex: Vec<String> = self
                .mismatched
                .iter()
                .take(3)
                .map(|(s, got, want)| format!("svc#{s} {got}/{want}"))
                .collect();
            line.push_str(&format!(
                "; {} services differ (e.g. {})",
                self.mismatched.len(),
                ex.join(", ")
            ));
        }
        if self.failed > 0 {
            line.push_str(&format!("; {} queries failed", self.failed));
        }
        report.notes.push(line);
    }
}

/// Counts every service with `count` (32 at a time), retrying mismatches for up to 5 s
/// (changes may take a moment to be visible).
pub async fn verify<F, Fut>(ctx: &Ctx, expected: &[u64], count: F) -> Verified
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<usize, OpError>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut todo: Vec<u32> = (0..expected.len() as u32).collect();
    let mut got = vec![0u64; expected.len()];
    let mut failed;
    loop {
        let results: Vec<(u32, Result<usize, OpError>)> = futures_util::stream::iter(todo.clone())
            .map(|s| {
                let f = count(ctx.service(s));
                async move { (s, f.await) }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        todo.clear();
        failed = 0;
        for (s, r) in results {
            match r {
                Ok(n) => got[s as usize] = n as u64,
                Err(_) => failed += 1,
            }
            if got[s as usize] != expected[s as usize] {
                todo.push(s);
            }
        }
        if todo.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    todo.sort_unstable();
    Verified {
        seen: got.iter().sum(),
        expected: expected.iter().sum(),
        mismatched: todo
            .iter()
            .map(|&s| (s, got[s as usize], expected[s as usize]))
            .collect(),
        failed,
    }
}

/// HTTP query parameters of an instance registration.
fn http_register_path(ctx: &Ctx, service: &str, ip: &str, port: u16, meta: &str) -> String {
    let grouped = ctx.names.grouped(service);
    let port = port.to_string();
    path_with_query(
        "/nacos/v1/ns/instance",
        &[
            ("namespaceId", &ctx.names.namespace),
            ("serviceName", &grouped),
            ("groupName", &ctx.names.group),
            ("clusterName", "DEFAULT"),
            ("ip", ip),
            ("port", &port),
            ("weight", "1.0"),
            ("healthy", "true"),
            ("enabled", "true"),
            ("ephemeral", "true"),
            ("metadata", meta),
        ],
    )
}

fn http_beat_path(ctx: &Ctx, service: &str, ip: &str, port: u16, meta: &str) -> String {
    let grouped = ctx.names.grouped(service);
    let beat = format!(
        "{{\"serviceName\":{},\"ip\":\"{ip}\",\"port\":{port},\"cluster\":\"DEFAULT\",\
         \"weight\":1.0,\"ephemeral\":true,\"metadata\":{meta},\"scheduled\":true}}",
        wire::payload::json_str(&grouped)
    );
    path_with_query(
        "/nacos/v1/ns/instance/beat",
        &[
            ("namespaceId", &ctx.names.namespace),
            ("serviceName", &grouped),
            ("beat", &beat),
        ],
    )
}

async fn http(a: &RegisterArgs, ctx: &Ctx) -> Result<Report, String> {
    if a.batch > 1 {
        return Err(
            "--batch needs --mode grpc (the HTTP API registers one instance per call)".into(),
        );
    }
    if a.services == 0 || a.connections == 0 {
        return Err("--services and --connections must be > 0".into());
    }
    let nconn = a.connections as usize;
    println!(
        "register: {} instances in {} services over {} HTTP connections to {}{}",
        a.instances,
        a.services,
        nconn,
        ctx.http_addrs.join(","),
        if a.http_beat {
            " (beating every 5 s)"
        } else {
            " (no beats: instances expire ~30 s after registration; use --http-beat)"
        }
    );
    // Instance i of service s goes to connection i % connections.
    let mut work: Vec<Vec<(u32, u64)>> = vec![Vec::new(); nconn];
    let shares = layout::shares(a.instances, a.services, sizes(a))?;
    for (s, (first, count)) in shares.iter().copied().enumerate() {
        let s = s as u32;
        for i in first..first + count {
            work[(i % nconn as u64) as usize].push((s, i));
        }
    }
    let ctx = Arc::new(ctx.clone());
    let meta = Arc::new(metadata_json(ctx.metadata_entries, &[]));
    let rec = Shared::new();
    let beat_rec = Shared::new();
    let registered = Arc::new(AtomicU64::new(0));
    let pacer = Arc::new(Pacer::new(a.rate));
    let stop = Arc::new(AtomicBool::new(false));
    let pb = bar(a.instances, "register", ctx.hidden);
    let start = Instant::now();
    let mut reg_tasks = tokio::task::JoinSet::new();
    let mut beat_tasks = tokio::task::JoinSet::new();
    for (c, list) in work.into_iter().enumerate() {
        let list = Arc::new(list);
        let upto = Arc::new(AtomicUsize::new(0));
        let addr = ctx.http_addrs[c % ctx.http_addrs.len()].clone();
        {
            let (ctx, meta, rec, registered, pacer, pb, list, upto, addr) = (
                ctx.clone(),
                meta.clone(),
                rec.clone(),
                registered.clone(),
                pacer.clone(),
                pb.clone(),
                list.clone(),
                upto.clone(),
                addr.clone(),
            );
            reg_tasks.spawn(async move {
                let mut conn = HttpConn::new(addr, ctx.timeout);
                for (k, &(s, i)) in list.iter().enumerate() {
                    let (ip, port) = instance_addr(i);
                    let path = http_register_path(&ctx, &ctx.service(s), &ip, port, &meta);
                    pacer.wait().await;
                    let t0 = Instant::now();
                    let r = conn.call("POST", &path).await;
                    rec.lock().record(&r, t0.elapsed());
                    if r.is_ok() {
                        registered.fetch_add(1, Ordering::Relaxed);
                    }
                    upto.store(k + 1, Ordering::Relaxed);
                    pb.inc(1);
                }
            });
        }
        if a.http_beat {
            let (ctx, meta, beat_rec, stop) =
                (ctx.clone(), meta.clone(), beat_rec.clone(), stop.clone());
            beat_tasks.spawn(async move {
                let mut conn = HttpConn::new(addr, ctx.timeout);
                let phase = Duration::from_millis((c as u64 * 7919) % 5000);
                tokio::time::sleep(phase).await;
                while !stop.load(Ordering::Relaxed) {
                    let cycle = Instant::now();
                    let n = upto.load(Ordering::Relaxed);
                    for &(s, i) in list.iter().take(n) {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let (ip, port) = instance_addr(i);
                        let path = http_beat_path(&ctx, &ctx.service(s), &ip, port, &meta);
                        let t0 = Instant::now();
                        let r = conn.call("PUT", &path).await;
                        beat_rec.lock().record(&r, t0.elapsed());
                    }
                    let rest = Duration::from_secs(5).saturating_sub(cycle.elapsed());
                    tokio::time::sleep(rest).await;
                }
            });
        }
    }
    while reg_tasks.join_next().await.is_some() {}
    let took = start.elapsed();
    pb.finish_and_clear();
    let done = registered.load(Ordering::Relaxed);
    let mut report = summary(a, "http", rec.snapshot(), done, took);
    report.extra("http_beat", json!(a.http_beat));

    if !a.no_verify {
        let expected: Vec<u64> = shares.iter().map(|(_, c)| *c).collect();
        let pool: Vec<tokio::sync::Mutex<HttpConn>> = (0..32)
            .map(|k| {
                tokio::sync::Mutex::new(HttpConn::new(
                    ctx.http_addrs[k % ctx.http_addrs.len()].clone(),
                    ctx.timeout,
                ))
            })
            .collect();
        let next = AtomicUsize::new(0);
        let v = verify(&ctx, &expected, |service| {
            let path = path_with_query(
                "/nacos/v1/ns/instance/list",
                &[
                    ("namespaceId", ctx.names.namespace.as_str()),
                    ("serviceName", &ctx.names.grouped(&service)),
                    ("clusters", ""),
                    ("healthyOnly", "false"),
                ],
            );
            let slot = &pool[next.fetch_add(1, Ordering::Relaxed) % pool.len()];
            async move {
                let body = slot.lock().await.call("GET", &path).await?;
                count_hosts(&body, false).ok_or(OpError::Decode)
            }
        })
        .await;
        v.apply(&mut report);
    }

    let held = hold(a.hold, || {
        let b = beat_rec.snapshot();
        format!(
            "{} instances registered over HTTP; beats ok {} failed {}",
            registered.load(Ordering::Relaxed),
            b.oks(),
            b.error_count()
        )
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    beat_tasks.abort_all();
    report.extra("hold_s", json!(held.as_secs_f64().round()));
    if a.http_beat {
        let b: Recorder = beat_rec.snapshot();
        report.extra_latency("beat_latency_us", "beat", &b);
    }
    Ok(report)
}
