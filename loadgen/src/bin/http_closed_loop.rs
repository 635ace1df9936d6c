//! A closed-loop HTTP/1.1 load: a fixed number of keep-alive connections, one request in flight
//! on each (no pipelining), as the SDKs' pooled clients behave; not wrk's open firehose. It
//! reports requests per second and, given the server's pid, the server's CPU time per request
//! from the kernel's counters of that process (`/proc/<pid>/stat` utime + stime), which is the
//! cost that matters when 100,000 HTTP instances beat every 5 s.
//!
//! Phases, each on fresh counters:
//! 1. `register`: `POST /nacos/v1/ns/instance` of `--instances` distinct instances spread
//!    over `--services` services (it ends when all are registered, or after `--seconds`);
//! 2. `beat`: light `PUT /nacos/v1/ns/instance/beat` (no body) of those instances, round robin;
//! 3. `list`: `GET /nacos/v1/ns/instance/list` of one 100-instance service;
//! 4. `liveness` (only when asked for): `GET /nacos/v1/console/health/liveness`, the cheapest
//!    route, as the floor of what a request costs (kernel, connection, hyper).
//!
//! ```sh
//! taskset -c 0 target/release/nacelle --bind 127.0.0.1 & PID=$!
//! taskset -c 1 target/release/http_closed_loop --addr 127.0.0.1:8848 --pid $PID --conns 16
//! ```
//!
//! One JSON object per phase on stdout. Std only (threads and blocking sockets): the client's
//! own cost must be small and obvious.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    addr: String,
    pid: Option<u32>,
    conns: usize,
    seconds: u64,
    services: u64,
    instances: u64,
    phases: Vec<String>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        addr: "127.0.0.1:8848".into(),
        pid: None,
        conns: 16,
        seconds: 10,
        services: 2_000,
        instances: 200_000,
        phases: vec!["register".into(), "beat".into(), "list".into()],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--addr" => o.addr = v()?,
            "--pid" => o.pid = Some(v()?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--conns" => o.conns = v()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--seconds" => o.seconds = v()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--services" => o.services = v()?.parse().map_err(|e| format!("--services: {e}"))?,
            "--instances" => o.instances = v()?.parse().map_err(|e| format!("--instances: {e}"))?,
            "--phases" => o.phases = v()?.split(',').map(str::to_owned).collect(),
            "-h" | "--help" => {
                return Err("usage: http_closed_loop [--addr ip:port] [--pid P] [--conns 16] [--seconds 10] [--services 2000] [--instances 200000] [--phases register,beat,list,liveness]".into())
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(o)
}

/// (utime, stime) of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// Reads one response (Content-Length bodies only; hyper sends those); its status.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16_384];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0u16);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

fn instance(i: u64, services: u64) -> (String, String, u64) {
    let svc = format!("cl-svc-{}", i % services);
    let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    (svc, ip, 8000 + (i >> 24))
}

fn request(phase: &str, i: u64, o: &Opts) -> String {
    match phase {
        "register" => {
            let (svc, ip, port) = instance(i, o.services);
            format!("POST /nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port={port}&ephemeral=true HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        }
        "beat" => {
            let (svc, ip, port) = instance(i % o.instances, o.services);
            format!("PUT /nacos/v1/ns/instance/beat?serviceName={svc}&ip={ip}&port={port} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        }
        "list-setup" => format!("POST /nacos/v1/ns/instance?serviceName=cl-list&ip=10.200.0.{}&port={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", i % 250, 80 + i / 250),
        // The cheapest route: what hyper, the connection and the kernel cost without the registry.
        "liveness" => "GET /nacos/v1/console/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        _ => "GET /nacos/v1/ns/instance/list?serviceName=cl-list HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    }
}

/// Runs `phase` for at most `seconds` (or until `limit` requests); (requests, errors, wall).
fn run(phase: &str, o: &Arc<Opts>, limit: Option<u64>, seconds: u64) -> (u64, u64, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..o.conns)
        .map(|_| {
            let (o, next, errors, completed, stop, phase) = (
                o.clone(),
                next.clone(),
                errors.clone(),
                completed.clone(),
                stop.clone(),
                phase.to_owned(),
            );
            std::thread::spawn(move || {
                let mut s = match TcpStream::connect(&o.addr) {
                    Ok(s) => s,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                let _ = s.set_nodelay(true);
                let mut buf = Vec::with_capacity(64 << 10);
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if limit.is_some_and(|l| i >= l) || Instant::now() >= deadline {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    let req = request(&phase, i, &o);
                    let ok = s.write_all(req.as_bytes()).is_ok()
                        && matches!(read_response(&mut s, &mut buf), Ok(200));
                    if ok {
                        completed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(fresh) = TcpStream::connect(&o.addr) {
                            s = fresh;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let wall = started.elapsed();
    (
        completed.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        wall,
    )
}

fn main() {
    let o = match parse() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    for phase in o.phases.clone() {
        if phase == "list" {
            run("list-setup", &o, Some(100), 30);
        }
        let limit = (phase == "register").then_some(o.instances);
        let before = o.pid.and_then(cpu_ticks);
        let (n, errors, wall) = run(&phase, &o, limit, o.seconds);
        let after = o.pid.and_then(cpu_ticks);
        let per_request = |ticks: u64| format!("{:.1}", ticks as f64 * 1e6 / USER_HZ / n as f64);
        let (cpu_us, user_us, sys_us) = match (before, after) {
            (Some(b), Some(a)) if n > 0 => (
                per_request(a.0 + a.1 - b.0 - b.1),
                per_request(a.0 - b.0),
                per_request(a.1 - b.1),
            ),
            _ => ("null".into(), "null".into(), "null".into()),
        };
        println!(
            "{{\"phase\":\"{phase}\",\"conns\":{},\"requests\":{n},\"errors\":{errors},\"seconds\":{:.2},\"rps\":{:.0},\"server_cpu_us_per_request\":{cpu_us},\"server_user_us\":{user_us},\"server_sys_us\":{sys_us}}}",
            o.conns,
            wall.as_secs_f64(),
            n as f64 / wall.as_secs_f64()
        );
    }
}
