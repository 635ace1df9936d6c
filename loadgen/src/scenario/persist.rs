//! `persist`: persistent (`ephemeral=false`) registrations over HTTP v1, the only transport
//! every server accepts them on (r-nacos has no gRPC persistent path), and `listen`: the TCP
//! listeners that the servers' health checks of those instances connect to.
//!
//! # Addresses
//! A persistent instance is health-checked by the server (a TCP connect to `ip:port` by
//! default), so every address here is on this machine: instance `i` (from `--first`) is
//! `ip_base + i / ports` : `port_base + i % ports`, with `ip_base` in 127.0.0.0/8 (checked:
//! anything else is refused). `listen` with the same `--ip-base --ports --port-base` and
//! `--ips` binds exactly the addresses of instances `0 .. ips * ports`.
//!
//! # Load shapes
//! - closed loop (default): `--connections` keep-alive HTTP/1.1 connections, each with one
//!   request in flight (`--pipeline 1`, as SDKs' pooled clients), or `--pipeline K` requests
//!   written back to back before their answers are read (a pipelined flood);
//! - fixed rate (`--rate R`): send times handed out at R/s over the connections; the latency
//!   is from the intended send time (a connection still busy makes the next request late,
//!   and that lateness counts).
//!
//! The run stops after `--instances` registrations or after `--duration` seconds. The report
//! has `acked` (answers `2xx`), a `timeline` of answers per `--timeline-ms` bucket (with its
//! start in ms since the epoch, so a script can line it up with a `kill -9`), and with
//! `--acked-file` the acknowledged instance numbers, one per line, which `persist --verify
//! FILE` later counts on the server (present, missing, healthy, and instances the server
//! has that were not acknowledged).
//!
//! `--check JSON` first registers the first instance of every service, then sets the health
//! checker of its `DEFAULT` cluster (`PUT /nacos/v1/ns/cluster`, e.g. `{"type":"NONE"}` so
//! that a throughput run measures registrations, not probes of addresses nobody listens on).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::Ctx;
use crate::cli::{ListenArgs, PersistArgs};
use crate::http::{path_with_query, read_response, HttpConn};
use crate::layout::metadata_json;
use crate::stats::{now_us, OpError, Pacer, Recorder, Report, Shared};

/// The address plan shared by `persist` and `listen`.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    base: u32,
    ports: u32,
    port_base: u16,
}

impl Plan {
    /// Checks that every address of `count` instances stays in 127.0.0.0/8 and below port 65536.
    pub fn new(ip_base: &str, ports: u16, port_base: u16, count: u64) -> Result<Plan, String> {
        let ip: Ipv4Addr = ip_base
            .parse()
            .map_err(|e| format!("--ip-base {ip_base}: {e}"))?;
        if ports == 0 {
            return Err("--ports must be > 0".into());
        }
        if u32::from(port_base) + u32::from(ports) > 65_536 {
            return Err("--port-base + --ports must stay below 65536".into());
        }
        let base = u32::from(ip);
        let ips = count.div_ceil(u64::from(ports));
        let last = u64::from(base) + ips.saturating_sub(1);
        if ip.octets()[0] != 127 || last > u64::from(u32::from(Ipv4Addr::new(127, 255, 255, 254))) {
            return Err(format!(
                "persistent instances are health-checked by the server: addresses must be in \
                 127.0.0.0/8 ({ip_base} + {ips} addresses is not)"
            ));
        }
        Ok(Plan {
            base,
            ports: u32::from(ports),
            port_base,
        })
    }

    /// The address of instance `i`.
    pub fn addr(&self, i: u64) -> (Ipv4Addr, u16) {
        let ip = Ipv4Addr::from(self.base + (i / u64::from(self.ports)) as u32);
        (ip, self.port_base + (i % u64::from(self.ports)) as u16)
    }
}

fn service_of(a: &PersistArgs, i: u64) -> u32 {
    (i % u64::from(a.services.max(1))) as u32
}

fn register_path(ctx: &Ctx, service: &str, ip: &str, port: u16, meta: &str) -> String {
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
            ("ephemeral", "false"),
            ("metadata", meta),
        ],
    )
}

fn request_bytes(host: &str, path: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUser-Agent: Nacos-Java-Client:v2.5.1\r\nClient-Version: Nacelle-Loadgen:0.1\r\n\
          Request-Module: Naming\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
    );
}

/// One keep-alive connection that writes `k` requests and then reads their `k` answers.
struct PipeConn {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
    timeout: Duration,
    buf: Vec<u8>,
}

impl PipeConn {
    async fn batch(&mut self, paths: &[String]) -> Vec<Result<(), OpError>> {
        let n = paths.len();
        let run = async {
            if self.stream.is_none() {
                let s = TcpStream::connect(&self.addr)
                    .await
                    .map_err(|e| OpError::Io(format!("{:?}", e.kind())))?;
                let _ = s.set_nodelay(true);
                self.stream = Some(BufReader::with_capacity(64 << 10, s));
            }
            self.buf.clear();
            for p in paths {
                request_bytes(&self.addr, p, &mut self.buf);
            }
            let Some(s) = self.stream.as_mut() else {
                return Err(OpError::NotConnected);
            };
            s.get_mut()
                .write_all(&self.buf)
                .await
                .map_err(|e| OpError::Io(format!("{:?}", e.kind())))?;
            let mut out = Vec::with_capacity(n);
            let mut keep = true;
            for _ in 0..n {
                if !keep {
                    out.push(Err(OpError::Io("closed".into())));
                    continue;
                }
                match read_response(s, false).await {
                    Ok((status, _, k)) => {
                        keep = k;
                        out.push(if (200..300).contains(&status) {
                            Ok(())
                        } else {
                            Err(OpError::Http(status))
                        });
                    }
                    Err(e) => {
                        keep = false;
                        out.push(Err(e));
                    }
                }
            }
            if !keep {
                self.stream = None;
            }
            Ok(out)
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.stream = None;
                vec![Err(e); n]
            }
            Err(_) => {
                self.stream = None;
                vec![Err(OpError::Timeout); n]
            }
        }
    }
}

/// Answers per bucket of the run, for a timeline.
struct Timeline {
    bucket_ms: u64,
    ok: Vec<AtomicU32>,
    err: Vec<AtomicU32>,
}

impl Timeline {
    fn new(bucket_ms: u64, span: Duration) -> Timeline {
        let n = (span.as_millis() as u64 / bucket_ms.max(1) + 2) as usize;
        Timeline {
            bucket_ms: bucket_ms.max(1),
            ok: (0..n).map(|_| AtomicU32::new(0)).collect(),
            err: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn add(&self, at: Duration, ok: bool) {
        let b = (at.as_millis() as u64 / self.bucket_ms) as usize;
        let v = if ok { &self.ok } else { &self.err };
        if let Some(c) = v.get(b.min(v.len() - 1)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn to_json(&self, start_epoch_ms: u64) -> serde_json::Value {
        let get =
            |v: &[AtomicU32]| -> Vec<u32> { v.iter().map(|c| c.load(Ordering::Relaxed)).collect() };
        let (mut ok, mut err) = (get(&self.ok), get(&self.err));
        let last = ok
            .iter()
            .zip(&err)
            .rposition(|(a, b)| a + b > 0)
            .map_or(0, |p| p + 1);
        ok.truncate(last);
        err.truncate(last);
        json!({"start_epoch_ms": start_epoch_ms, "bucket_ms": self.bucket_ms, "ok": ok, "err": err})
    }
}

/// Runs `persist`.
pub async fn run(a: &PersistArgs) -> Result<Report, String> {
    let ctx = Ctx::new(&a.common)?;
    if a.services == 0 || a.connections == 0 {
        return Err("--services and --connections must be > 0".into());
    }
    let plan = Plan::new(&a.ip_base, a.ports, a.port_base, a.first + a.instances)?;
    if let Some(file) = &a.verify {
        return verify(a, &ctx, plan, file).await;
    }
    let meta = metadata_json(ctx.metadata_entries, &[]);
    let end = a.first + a.instances;
    let mut next = a.first;
    let mut acked_setup: Vec<u64> = Vec::new();
    let mut setup = Recorder::new();
    if let Some(check) = &a.check {
        // The first instance of every service, then its cluster's health checker.
        let n = u64::from(a.services).min(a.instances);
        let firsts: Vec<u64> = (a.first..a.first + n).collect();
        // (instance, its registration, the cluster's checker update)
        type Setup = (u64, Result<(), OpError>, Result<(), OpError>);
        let results: Vec<Setup> = {
            use futures_util::StreamExt;
            let ctx = &ctx;
            let meta = &meta;
            futures_util::stream::iter(firsts)
                .map(|i| async move {
                    let addr = ctx.http_addrs[(i as usize) % ctx.http_addrs.len()].clone();
                    let mut c = HttpConn::new(addr, ctx.timeout);
                    let service = ctx.service(service_of(a, i));
                    let (ip, port) = plan.addr(i);
                    let r = c
                        .call(
                            "POST",
                            &register_path(ctx, &service, &ip.to_string(), port, meta),
                        )
                        .await
                        .map(|_| ());
                    let path = path_with_query(
                        "/nacos/v1/ns/cluster",
                        &[
                            ("namespaceId", ctx.names.namespace.as_str()),
                            ("serviceName", &ctx.names.grouped(&service)),
                            ("groupName", &ctx.names.group),
                            ("clusterName", "DEFAULT"),
                            ("checkPort", "80"),
                            ("useInstancePort4Check", "true"),
                            ("healthChecker", check),
                        ],
                    );
                    let p = c.call("PUT", &path).await.map(|_| ());
                    (i, r, p)
                })
                .buffer_unordered(32)
                .collect()
                .await
        };
        for (i, r, p) in results {
            if r.is_ok() {
                acked_setup.push(i);
            }
            setup.record(&r, Duration::ZERO);
            setup.record(&p, Duration::ZERO);
        }
        next += n;
        println!(
            "setup: {} services, first instances and cluster checker {check}: {} ok, {} errors {:?}",
            n,
            setup.oks(),
            setup.error_count(),
            setup.errors
        );
    }

    let counter = Arc::new(AtomicU64::new(next));
    let rec = Shared::new();
    let acked = Arc::new(Mutex::new(acked_setup));
    let pacer = Arc::new(Pacer::new(a.rate));
    let span = Duration::from_secs_f64(a.duration.unwrap_or(7200.0).max(0.001));
    let timeline = Arc::new(Timeline::new(a.timeline_ms, span + Duration::from_secs(60)));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let start_epoch_ms = now_us() / 1000;
    let deadline = a.duration.map(|d| start + Duration::from_secs_f64(d));
    let k = a.pipeline.max(1) as u64;
    let first_ticket = next;
    println!(
        "persist: instances {}..{} in {} services over {} HTTP connections to {} ({}), pipeline {}",
        next,
        end,
        a.services,
        a.connections,
        ctx.http_addrs.join(","),
        a.rate
            .map_or("closed loop".to_string(), |r| format!("{r}/s")),
        k
    );
    let ctx = Arc::new(ctx);
    let meta = Arc::new(meta);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..a.connections as usize {
        let (ctx, meta, counter, rec, acked, pacer, timeline, stop) = (
            ctx.clone(),
            meta.clone(),
            counter.clone(),
            rec.clone(),
            acked.clone(),
            pacer.clone(),
            timeline.clone(),
            stop.clone(),
        );
        let a = a.clone();
        tasks.spawn(async move {
            let mut conn = PipeConn {
                addr: ctx.http_addrs[c % ctx.http_addrs.len()].clone(),
                stream: None,
                timeout: ctx.timeout,
                buf: Vec::new(),
            };
            let mut mine = Vec::new();
            let mut local = Recorder::new();
            loop {
                if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i0 = counter.fetch_add(k, Ordering::Relaxed);
                if i0 >= end {
                    break;
                }
                let i1 = (i0 + k).min(end);
                // Fixed rate: the send time of the batch is that of its last ticket.
                let intended = pacer.at(i1 - 1 - first_ticket);
                if a.rate.is_some() {
                    tokio::time::sleep_until(intended).await;
                }
                let paths: Vec<String> = (i0..i1)
                    .map(|i| {
                        let (ip, port) = plan.addr(i);
                        register_path(
                            &ctx,
                            &ctx.service(service_of(&a, i)),
                            &ip.to_string(),
                            port,
                            &meta,
                        )
                    })
                    .collect();
                let sent = if a.rate.is_some() {
                    intended.into_std()
                } else {
                    Instant::now()
                };
                let results = conn.batch(&paths).await;
                let done = Instant::now();
                let mut failed = false;
                for (i, r) in (i0..i1).zip(&results) {
                    timeline.add(done - start, r.is_ok());
                    match r {
                        Ok(()) => {
                            local.ok(done - sent);
                            mine.push(i);
                        }
                        Err(e) => {
                            local.err(e);
                            failed = true;
                        }
                    }
                }
                if failed && conn.stream.is_none() {
                    // A node down: do not spin on connection refusals.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if local.oks() + local.error_count() >= 4096 {
                    rec.lock().merge(&local);
                    local = Recorder::new();
                }
            }
            rec.lock().merge(&local);
            if let Ok(mut g) = acked.lock() {
                g.extend(mine);
            }
        });
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = &mut ctrl_c => { stop.store(true, Ordering::Relaxed); }
            _ = tick.tick() => {
                println!("[{:>6.1} s] claimed {} of {}", start.elapsed().as_secs_f64(),
                    counter.load(Ordering::Relaxed).min(end) - first_ticket, end - first_ticket);
            }
        }
    }
    let took = start.elapsed();
    let main = rec.snapshot();
    let mut acked = acked.lock().map(|g| g.clone()).unwrap_or_default();
    acked.sort_unstable();
    let per_s = main.oks() as f64 / took.as_secs_f64().max(1e-9);
    println!(
        "acked {} persistent registrations in {:.2} s ({per_s:.0}/s), {} errors; {} with setup",
        main.oks(),
        took.as_secs_f64(),
        main.error_count(),
        acked.len()
    );
    let mut report = Report::new("persist", "registration", main, took);
    report.extra("acked", json!(acked.len()));
    report.extra("registrations_per_s", json!(per_s.round()));
    report.extra("setup_ok", json!(setup.oks()));
    report.extra("setup_errors", json!(setup.errors));
    report.extra("start_epoch_ms", json!(start_epoch_ms));
    report.extra("timeline", timeline.to_json(start_epoch_ms));
    if let Some(file) = &a.acked_file {
        let mut text = String::with_capacity(acked.len() * 8);
        for i in &acked {
            text.push_str(&i.to_string());
            text.push('\n');
        }
        std::fs::write(file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    Ok(report)
}

#[derive(Deserialize)]
struct Host {
    ip: String,
    port: u16,
    #[serde(default)]
    healthy: Option<bool>,
}

#[derive(Deserialize)]
struct Hosts {
    hosts: Option<Vec<Host>>,
}

/// `persist --verify FILE`: lists every service of the acknowledged instances in FILE and
/// counts which are there.
async fn verify(
    a: &PersistArgs,
    ctx: &Ctx,
    plan: Plan,
    file: &std::path::Path,
) -> Result<Report, String> {
    use futures_util::StreamExt;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let acked: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let want: HashSet<(String, u16)> = acked
        .iter()
        .map(|&i| {
            let (ip, port) = plan.addr(i);
            (ip.to_string(), port)
        })
        .collect();
    let services: Vec<u32> = {
        let mut s: Vec<u32> = acked.iter().map(|&i| service_of(a, i)).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let start = Instant::now();
    let pool: Vec<tokio::sync::Mutex<HttpConn>> = (0..16)
        .map(|k| {
            tokio::sync::Mutex::new(HttpConn::new(
                ctx.http_addrs[k % ctx.http_addrs.len()].clone(),
                Duration::from_secs(60),
            ))
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<Vec<Host>, OpError>> =
        futures_util::stream::iter(services.iter().copied())
            .map(|s| {
                let path = path_with_query(
                    "/nacos/v1/ns/instance/list",
                    &[
                        ("namespaceId", ctx.names.namespace.as_str()),
                        ("serviceName", &ctx.names.grouped(&ctx.service(s))),
                        ("clusters", ""),
                        ("healthyOnly", "false"),
                    ],
                );
                let slot = &pool[next.fetch_add(1, Ordering::Relaxed) % pool.len()];
                async move {
                    let body = slot.lock().await.call("GET", &path).await?;
                    let h: Hosts = serde_json::from_slice(&body).map_err(|_| OpError::Decode)?;
                    Ok(h.hosts.unwrap_or_default())
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut rec = Recorder::new();
    let (mut present, mut extra, mut unhealthy, mut listed) = (0u64, 0u64, 0u64, 0u64);
    for r in results {
        rec.record(&r, Duration::ZERO);
        for h in r.unwrap_or_default() {
            listed += 1;
            if want.contains(&(h.ip.clone(), h.port)) {
                present += 1;
            } else {
                extra += 1;
            }
            if h.healthy == Some(false) {
                unhealthy += 1;
            }
        }
    }
    let took = start.elapsed();
    println!(
        "verify: {present} of {} acknowledged instances present ({} missing), {extra} others listed, \
         {unhealthy} unhealthy, {} services listed in {:.2} s ({} failed)",
        want.len(),
        want.len() as u64 - present.min(want.len() as u64),
        services.len(),
        took.as_secs_f64(),
        rec.error_count()
    );
    let mut report = Report::new("persist-verify", "service list", rec, took);
    report.extra("acked", json!(want.len()));
    report.extra("present", json!(present));
    report.extra(
        "missing",
        json!(want.len() as u64 - present.min(want.len() as u64)),
    );
    report.extra("not_acked_listed", json!(extra));
    report.extra("listed", json!(listed));
    report.extra("unhealthy", json!(unhealthy));
    Ok(report)
}

/// Runs `listen`: a TCP listener on every address of the plan, accepting and closing.
pub async fn listen(a: &ListenArgs) -> Result<Report, String> {
    let count = u64::from(a.ips) * u64::from(a.ports);
    let plan = Plan::new(&a.ip_base, a.ports, a.port_base, count)?;
    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut listeners = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (ip, port) = plan.addr(i);
        let s = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e} (ulimit -n?)"))?;
        let _ = s.set_reuseaddr(true);
        s.bind((ip, port).into())
            .map_err(|e| format!("bind {ip}:{port}: {e}"))?;
        let l: TcpListener = s
            .listen(a.backlog)
            .map_err(|e| format!("listen {ip}:{port}: {e}"))?;
        listeners.push(l);
    }
    println!(
        "listening on {count} addresses ({} ips x {} ports from {}:{}) after {:.2} s",
        a.ips,
        a.ports,
        a.ip_base,
        a.port_base,
        start.elapsed().as_secs_f64()
    );
    for l in listeners {
        let (accepted, errors) = (accepted.clone(), errors.clone());
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        drop(s);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    let held = super::hold(a.duration, || {
        format!(
            "accepted {} connections ({} accept errors)",
            accepted.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        )
    })
    .await;
    let mut report = Report::new("listen", "accept", Recorder::new(), held);
    report.extra("listeners", json!(count));
    report.extra("accepted", json!(accepted.load(Ordering::Relaxed)));
    report.extra("accept_errors", json!(errors.load(Ordering::Relaxed)));
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plans_stay_on_loopback_and_are_distinct() {
        let p = Plan::new("127.1.0.0", 4, 30000, 1_000_000).unwrap();
        assert_eq!(p.addr(0), (Ipv4Addr::new(127, 1, 0, 0), 30000));
        assert_eq!(p.addr(5), (Ipv4Addr::new(127, 1, 0, 1), 30001));
        assert_eq!(p.addr(4 * 256), (Ipv4Addr::new(127, 1, 1, 0), 30000));
        let seen: HashSet<_> = (0..100_000).map(|i| p.addr(i)).collect();
        assert_eq!(seen.len(), 100_000);
        assert!(Plan::new("10.0.0.1", 4, 30000, 10).is_err());
        assert!(Plan::new("127.255.255.250", 1, 30000, 10).is_err());
        assert!(Plan::new("127.1.0.0", 10, 65530, 10).is_err());
    }
}
