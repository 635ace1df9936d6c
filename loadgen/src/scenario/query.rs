//! `query`: open-loop queries at a fixed rate, latency from the intended send time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;

use super::Ctx;
use crate::cli::{Mode, QueryArgs};
use crate::grpc::Conn;
use crate::http::{path_with_query, HttpConn};
use crate::layout::{instance_addr, instance_json};
use crate::stats::{bar, OpError, Pacer, Recorder, Report, Shared};

/// Registers `per_service` instances in each of `services` services, one batch per service on
/// connection `s % conns.len()` (so a connection never publishes twice in a service). Instance
/// numbers start at `base`.
pub async fn prepare(
    ctx: &Ctx,
    conns: &[Option<Conn>],
    services: u32,
    per_service: u32,
    base: u64,
) -> Recorder {
    let pb = bar(u64::from(services), "prepare", ctx.hidden);
    let rec: Vec<(Result<(), OpError>, Duration)> = futures_util::stream::iter(0..services)
        .map(|s| {
            let conn = conns
                .get(s as usize % conns.len().max(1))
                .and_then(Option::as_ref);
            let service = ctx.service(s);
            let instances: Vec<String> = (0..u64::from(per_service))
                .map(|k| {
                    let (ip, port) =
                        instance_addr(base + u64::from(s) * u64::from(per_service) + k);
                    instance_json(&ip, port, ctx.metadata_entries, &[])
                })
                .collect();
            let body = ctx.names.batch_request(&service, &instances);
            let pb = pb.clone();
            async move {
                let t0 = Instant::now();
                let r = match conn {
                    Some(c) => c.request("BatchInstanceRequest", body).await.map(|_| ()),
                    None => Err(OpError::NotConnected),
                };
                pb.inc(1);
                (r, t0.elapsed())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    pb.finish_and_clear();
    let mut out = Recorder::new();
    for (r, took) in &rec {
        out.record(r, *took);
    }
    out
}

/// Runs `query`.
pub async fn run(a: &QueryArgs) -> Result<Report, String> {
    let ctx = Ctx::new(&a.common)?;
    if !(a.rate > 0.0 && a.duration > 0.0) || a.set.services == 0 || a.connections == 0 {
        return Err("--rate, --duration, --services and --connections must be > 0".into());
    }
    let grpc_n = match (a.mode, a.set.prepare) {
        (Mode::Grpc, _) => a.connections as usize,
        (Mode::Http, true) => a.connections.min(a.set.services).max(1) as usize,
        (Mode::Http, false) => 0,
    };
    let (conns, connect_rec) = if grpc_n > 0 {
        ctx.connect(&ctx.grpc_addrs, grpc_n, None, "connect")
            .await?
    } else {
        (Vec::new(), Recorder::new())
    };
    let mut prepare_rec = None;
    if a.set.prepare {
        println!(
            "prepare: {} instances in each of {} services",
            a.set.instances_per_service, a.set.services
        );
        prepare_rec =
            Some(prepare(&ctx, &conns, a.set.services, a.set.instances_per_service, 0).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let conns = Arc::new(conns);
    let http: Arc<Vec<Mutex<HttpConn>>> = Arc::new(
        (0..if a.mode == Mode::Http {
            a.connections
        } else {
            0
        } as usize)
            .map(|k| {
                Mutex::new(HttpConn::new(
                    ctx.http_addrs[k % ctx.http_addrs.len()].clone(),
                    ctx.timeout,
                ))
            })
            .collect(),
    );
    for c in http.iter() {
        if let Err(e) = c.lock().await.open().await {
            return Err(format!("HTTP connect failed: {e}"));
        }
    }
    let grpc_bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..a.set.services)
            .map(|s| ctx.names.query_request(&ctx.service(s), a.set.healthy_only))
            .collect(),
    );
    let healthy = if a.set.healthy_only { "true" } else { "false" };
    let http_paths: Arc<Vec<String>> = Arc::new(
        (0..a.set.services)
            .map(|s| {
                path_with_query(
                    "/nacos/v1/ns/instance/list",
                    &[
                        ("namespaceId", ctx.names.namespace.as_str()),
                        ("serviceName", &ctx.names.grouped(&ctx.service(s))),
                        ("clusters", ""),
                        ("healthyOnly", healthy),
                    ],
                )
            })
            .collect(),
    );

    let total = (a.rate * a.duration).round().max(1.0) as u64;
    println!(
        "query: {total} {} queries at {}/s over {} connections, {} services",
        if a.mode == Mode::Grpc { "gRPC" } else { "HTTP" },
        a.rate,
        a.connections,
        a.set.services
    );
    let rec = Shared::new();
    let service = Shared::new();
    let mut lag = Recorder::new();
    let inflight = Arc::new(AtomicUsize::new(0));
    let pb = bar(total, "query", ctx.hidden);
    let pacer = Pacer::new(Some(a.rate));
    let start = Instant::now();
    let nconn = a.connections as usize;
    for i in 0..total {
        let t = pacer.at(i);
        tokio::time::sleep_until(t).await;
        lag.ok(tokio::time::Instant::now().saturating_duration_since(t));
        if inflight.load(Ordering::Relaxed) >= a.set.max_inflight {
            rec.lock().err(&OpError::Dropped);
            pb.inc(1);
            continue;
        }
        inflight.fetch_add(1, Ordering::Relaxed);
        let s = (i % u64::from(a.set.services)) as usize;
        let c = (i % nconn as u64) as usize;
        let (rec, service, inflight, pb) =
            (rec.clone(), service.clone(), inflight.clone(), pb.clone());
        let (conns, http, grpc_bodies, http_paths) = (
            conns.clone(),
            http.clone(),
            grpc_bodies.clone(),
            http_paths.clone(),
        );
        let mode = a.mode;
        tokio::spawn(async move {
            let sent = tokio::time::Instant::now();
            let r = match mode {
                Mode::Grpc => match conns.get(c).and_then(Option::as_ref) {
                    Some(conn) => conn
                        .request("ServiceQueryRequest", grpc_bodies[s].clone())
                        .await
                        .map(|_| ()),
                    None => Err(OpError::NotConnected),
                },
                Mode::Http => match http.get(c) {
                    Some(h) => h.lock().await.call("GET", &http_paths[s]).await.map(|_| ()),
                    None => Err(OpError::NotConnected),
                },
            };
            let now = tokio::time::Instant::now();
            rec.lock().record(&r, now.saturating_duration_since(t));
            if r.is_ok() {
                service.lock().ok(now.saturating_duration_since(sent));
            }
            inflight.fetch_sub(1, Ordering::Relaxed);
            pb.inc(1);
        });
    }
    let drain_until = Instant::now() + ctx.timeout + Duration::from_secs(1);
    while inflight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed();
    pb.finish_and_clear();
    let mut report = Report::new("query", "query", rec.snapshot(), took);
    report.extra(
        "mode",
        json!(if a.mode == Mode::Grpc { "grpc" } else { "http" }),
    );
    report.extra("target_rate", json!(a.rate));
    report.extra("scheduled", json!(total));
    report.extra("unfinished", json!(inflight.load(Ordering::Relaxed)));
    report.extra_latency(
        "service_latency_us",
        "from actual send",
        &service.snapshot(),
    );
    report.extra_latency("send_lag_us", "send lag", &lag);
    if !conns.is_empty() {
        report.extra_latency("connect_latency_us", "connect", &connect_rec);
    }
    report_prepared(&mut report, prepare_rec, a.set.instances_per_service);
    Ok(report)
}

/// Adds what `prepare` did (if it ran) to a report.
pub fn report_prepared(report: &mut Report, prepared: Option<Recorder>, per_service: u32) {
    if let Some(p) = prepared {
        report.extra(
            "prepared_instances",
            json!(p.oks() * u64::from(per_service)),
        );
        report.extra_latency("prepare_latency_us", "prepare batch", &p);
    }
}
