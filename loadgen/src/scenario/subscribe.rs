//! `subscribe` and `converge`: push (visibility) latency of changes to subscribers.
//!
//! A writer connection registers, per change, a fresh ip:port in service `j % services` with
//! metadata `lgts` = send time (µs since the epoch); being one publish per service on that
//! connection it replaces the writer's previous instance there. Every subscriber connection
//! keeps, per service, the newest `lgts` it has seen; a push that shows a newer one is a
//! delivery with latency `arrival - lgts`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::query::prepare;
use super::Ctx;
use crate::cli::SubscribeArgs;
use crate::grpc::{PushCtx, PushHandler};
use crate::layout::{instance_addr, instance_json};
use crate::stats::{bar, now_us, OpError, Pacer, Recorder, Report, Shared};

/// Instance numbers of the writer's changes start here (far from the baseline's).
const WRITER_BASE: u64 = 1 << 36;
/// Metadata key carrying the send time.
const TS_KEY: &str = "lgts";

#[derive(Deserialize)]
struct Host {
    metadata: Option<HashMap<String, Value>>,
}

#[derive(Deserialize)]
struct Info {
    name: Option<String>,
    #[serde(default)]
    hosts: Option<Vec<Host>>,
}

#[derive(Deserialize)]
struct Notify {
    #[serde(rename = "serviceInfo")]
    service_info: Option<Info>,
}

/// The newest writer timestamp in a push, and the bare service name.
fn newest_change(body: &[u8]) -> Option<(String, Option<u64>)> {
    let n: Notify = serde_json::from_slice(body).ok()?;
    let info = n.service_info?;
    let name = info.name?;
    let bare = name.rsplit("@@").next().unwrap_or(&name).to_owned();
    let ts = info
        .hosts
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h.metadata.as_ref()?.get(TS_KEY))
        .filter_map(|v| match v {
            Value::String(s) => s.parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        })
        .max();
    Some((bare, ts))
}

struct Tracker {
    /// Per subscriber connection: service -> newest lgts seen.
    seen: Vec<Mutex<HashMap<String, u64>>>,
    /// Visibility latency per subscriber target.
    per_target: Vec<Shared>,
    all: Shared,
    pushes: AtomicU64,
    without_change: AtomicU64,
}

impl Tracker {
    fn on_push(&self, ctx: &PushCtx, body: &[u8]) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        let Some((service, ts)) = newest_change(body) else {
            self.all.lock().err(&OpError::Decode);
            return;
        };
        let Some(ts) = ts else {
            self.without_change.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(slot) = self.seen.get(ctx.conn) else {
            return;
        };
        let newer = {
            let mut m = slot.lock().unwrap_or_else(|p| p.into_inner());
            let e = m.entry(service).or_insert(0);
            if ts > *e {
                *e = ts;
                true
            } else {
                false
            }
        };
        if !newer {
            self.without_change.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let us = ctx.at_us.saturating_sub(ts);
        self.all.lock().ok_us(us);
        if let Some(t) = self.per_target.get(ctx.target) {
            t.lock().ok_us(us);
        }
    }
}

/// Runs `subscribe` (`converge` = false) or `converge`.
pub async fn run(a: &SubscribeArgs, converge: bool) -> Result<Report, String> {
    let ctx = Ctx::new(&a.common)?;
    if a.services == 0 || a.subscribers == 0 || !(a.rate > 0.0 && a.duration > 0.0) {
        return Err("--services, --subscribers, --rate and --duration must be > 0".into());
    }
    let (writer_addr, sub_addrs, sub_names) = if converge {
        if ctx.grpc_addrs.len() < 2 {
            return Err(
                "converge writes through the first target and subscribes through the others: \
                 give at least two --targets (the same server twice is fine)"
                    .into(),
            );
        }
        (
            ctx.grpc_addrs[0].clone(),
            ctx.grpc_addrs[1..].to_vec(),
            ctx.http_addrs[1..].to_vec(),
        )
    } else {
        (
            ctx.grpc_addrs[0].clone(),
            ctx.grpc_addrs.clone(),
            ctx.http_addrs.clone(),
        )
    };
    let k = a.subscribers;
    let nsub = a
        .connections
        .unwrap_or_else(|| (a.services.saturating_mul(k)).min(1000))
        .max(k) as usize;
    let scenario = if converge { "converge" } else { "subscribe" };
    println!(
        "{scenario}: {} services x {k} subscribers on {nsub} connections to {}; writer on {} at {}/s for {} s",
        a.services,
        sub_addrs.join(","),
        writer_addr,
        a.rate,
        a.duration
    );

    let tracker = Arc::new(Tracker {
        seen: (0..nsub).map(|_| Mutex::new(HashMap::new())).collect(),
        per_target: (0..sub_addrs.len()).map(|_| Shared::new()).collect(),
        all: Shared::new(),
        pushes: AtomicU64::new(0),
        without_change: AtomicU64::new(0),
    });
    let handler: PushHandler = {
        let t = tracker.clone();
        Arc::new(move |c: &PushCtx, body: &[u8]| t.on_push(c, body))
    };
    let (subs, connect_rec) = ctx
        .connect(&sub_addrs, nsub, Some(handler), "subscribers")
        .await?;
    let writer_n = if a.instances_per_service > 0 { 2 } else { 1 };
    let (writers, _) = ctx
        .connect(std::slice::from_ref(&writer_addr), writer_n, None, "writer")
        .await?;
    if writers.first().and_then(Option::as_ref).is_none() {
        return Err("the writer connection failed".into());
    }
    if a.instances_per_service > 0 {
        let base = &writers[1..];
        let p = prepare(&ctx, base, a.services, a.instances_per_service, 0).await;
        if p.error_count() > 0 {
            eprintln!("loadgen: baseline registration errors: {:?}", p.errors);
        }
    }

    // Subscribe: subscriber k of service s on connection (s*K + k) % nsub (distinct for k < K).
    let pb = bar(
        u64::from(a.services) * u64::from(k),
        "subscribe",
        ctx.hidden,
    );
    let sub_results: Vec<(Result<(), OpError>, Duration)> =
        futures_util::stream::iter((0..a.services).flat_map(|s| (0..k).map(move |x| (s, x))))
            .map(|(s, x)| {
                let c = ((u64::from(s) * u64::from(k) + u64::from(x)) % nsub as u64) as usize;
                let conn = subs.get(c).and_then(Option::as_ref);
                let body = ctx.names.subscribe_request(&ctx.service(s), true);
                let pb = pb.clone();
                async move {
                    let t0 = Instant::now();
                    let r = match conn {
                        Some(c) => c.request("SubscribeServiceRequest", body).await.map(|_| ()),
                        None => Err(OpError::NotConnected),
                    };
                    pb.inc(1);
                    (r, t0.elapsed())
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    pb.finish_and_clear();
    let mut sub_rec = Recorder::new();
    let mut subscribed = vec![0u64; a.services as usize];
    for (n, (r, took)) in sub_results.iter().enumerate() {
        sub_rec.record(r, *took);
        if r.is_ok() {
            subscribed[n / k as usize] += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The writer, open loop.
    let total = (a.rate * a.duration).round().max(1.0) as u64;
    let write_rec = Shared::new();
    let changes_ok: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.services).map(|_| AtomicU64::new(0)).collect());
    let last_ts: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.services).map(|_| AtomicU64::new(0)).collect());
    let pb = bar(total, "changes", ctx.hidden);
    let pacer = Pacer::new(Some(a.rate));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let writer = Arc::new(writers);
    for j in 0..total {
        let t = pacer.at(j);
        tokio::time::sleep_until(t).await;
        let s = (j % u64::from(a.services)) as u32;
        let service = ctx.service(s);
        let (ip, port) = instance_addr(WRITER_BASE + j);
        let ts = now_us();
        let ts_s = ts.to_string();
        let inst = instance_json(&ip, port, ctx.metadata_entries, &[(TS_KEY, &ts_s)]);
        let body = ctx.names.instance_request(&service, &inst, true);
        let (write_rec, changes_ok, last_ts, pb, writer) = (
            write_rec.clone(),
            changes_ok.clone(),
            last_ts.clone(),
            pb.clone(),
            writer.clone(),
        );
        tasks.spawn(async move {
            let r = match writer.first().and_then(Option::as_ref) {
                Some(w) => w.request("InstanceRequest", body).await.map(|_| ()),
                None => Err(OpError::NotConnected),
            };
            write_rec
                .lock()
                .record(&r, tokio::time::Instant::now().saturating_duration_since(t));
            if r.is_ok() {
                changes_ok[s as usize].fetch_add(1, Ordering::Relaxed);
                last_ts[s as usize].fetch_max(ts, Ordering::Relaxed);
            }
            pb.inc(1);
        });
    }
    while tasks.join_next().await.is_some() {}
    let took = start.elapsed();
    pb.finish_and_clear();
    let _ = writer; // keep the writer (and its instances) until the pushes settle
    if a.settle > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    }

    // Deliveries and convergence.
    let mut expected = 0u64;
    let mut written = 0u64;
    for s in 0..a.services as usize {
        let n = changes_ok[s].load(Ordering::Relaxed);
        written += n;
        expected += n * subscribed[s];
    }
    let mut converged = 0u64;
    let mut subscriptions = 0u64;
    for s in 0..a.services {
        let want = last_ts[s as usize].load(Ordering::Relaxed);
        let service = ctx.service(s);
        for x in 0..k {
            let c = ((u64::from(s) * u64::from(k) + u64::from(x)) % nsub as u64) as usize;
            if subs.get(c).and_then(Option::as_ref).is_none() {
                continue;
            }
            subscriptions += 1;
            let seen = tracker
                .seen
                .get(c)
                .map(|m| {
                    m.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&service)
                        .copied()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            if want > 0 && seen == want {
                converged += 1;
            }
        }
    }
    let mut main = tracker.all.snapshot();
    let writes = write_rec.snapshot();
    for (kind, n) in &writes.errors {
        *main.errors.entry(format!("write-{kind}")).or_insert(0) += n;
    }
    for (kind, n) in &sub_rec.errors {
        *main.errors.entry(format!("subscribe-{kind}")).or_insert(0) += n;
    }
    let delivered = main.oks();
    let mut report = Report::new(scenario, "push", main, took);
    report.extra("changes_written", json!(written));
    report.extra("push_expected", json!(expected));
    report.extra("push_delivered", json!(delivered));
    report.extra(
        "push_coalesced_or_missed",
        json!(expected.saturating_sub(delivered)),
    );
    report.extra(
        "pushes_received",
        json!(tracker.pushes.load(Ordering::Relaxed)),
    );
    report.extra(
        "pushes_without_new_change",
        json!(tracker.without_change.load(Ordering::Relaxed)),
    );
    report.extra(
        "subscriptions_converged",
        json!({"converged": converged, "total": subscriptions}),
    );
    report.extra("push_latency_us", tracker.all.snapshot().latency_json());
    report.notes.push(format!(
        "{:<18} {written} changes -> {delivered} of {expected} possible deliveries \
         ({} coalesced/missed); {converged}/{subscriptions} subscriptions saw the final state",
        "pushes",
        expected.saturating_sub(delivered)
    ));
    if converge || sub_addrs.len() > 1 {
        let mut by = Map::new();
        for (i, t) in tracker.per_target.iter().enumerate() {
            let r = t.snapshot();
            let name = sub_names.get(i).cloned().unwrap_or_default();
            report.notes.push(format!(
                "{:<18} {}",
                format!("via {name}"),
                r.latency_line()
            ));
            by.insert(format!("{i}:{name}"), r.latency_json());
        }
        report.extra("visibility_us_by_target", Value::Object(by));
    }
    report.extra_latency("write_latency_us", "write", &writes);
    report.extra_latency("subscribe_latency_us", "subscribe", &sub_rec);
    report.extra_latency("connect_latency_us", "connect", &connect_rec);
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_writer_change_in_a_push() {
        let body = br#"{"headers":{},"requestId":"4","serviceInfo":{"name":"DEFAULT_GROUP@@s1",
            "groupName":"DEFAULT_GROUP","hosts":[{"ip":"1","port":1,"metadata":{"k0":"v0"}},
            {"ip":"2","port":2,"metadata":{"lgts":"17"}},{"ip":"3","port":3,"metadata":{"lgts":"9"}},
            {"ip":"4","port":4}]}}"#;
        assert_eq!(newest_change(body), Some(("s1".to_owned(), Some(17))));
        let empty = br#"{"serviceInfo":{"name":"s2","hosts":[]}}"#;
        assert_eq!(newest_change(empty), Some(("s2".to_owned(), None)));
        assert_eq!(newest_change(b"{}"), None);
    }

    #[test]
    fn a_change_counts_once_per_subscriber() {
        let t = Tracker {
            seen: (0..2).map(|_| Mutex::new(HashMap::new())).collect(),
            per_target: vec![Shared::new()],
            all: Shared::new(),
            pushes: AtomicU64::new(0),
            without_change: AtomicU64::new(0),
        };
        let body = br#"{"serviceInfo":{"name":"s","hosts":[{"metadata":{"lgts":"1000"}}]}}"#;
        let at = |conn| PushCtx {
            conn,
            target: 0,
            at_us: 1500,
        };
        t.on_push(&at(0), body);
        t.on_push(&at(0), body);
        t.on_push(&at(1), body);
        let r = t.all.snapshot();
        assert_eq!(r.oks(), 2);
        assert_eq!(r.latency_json()["max"], 500);
        assert_eq!(t.without_change.load(Ordering::Relaxed), 1);
    }
}
