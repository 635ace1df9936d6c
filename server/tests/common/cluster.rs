//! The multi-process cluster harness: real `nacelle` processes on 127.0.0.1, each with its
//! own ports and data directory, started, killed and restarted by index.

use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use super::*;

/// HTTP and gRPC ports of a node whose peer port (HTTP + 1001, the default rule every member
/// follows) is free too.
pub fn pick_ports(count: usize) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    let mut seed = std::process::id() as u64 * 7919 + Instant::now().elapsed().as_nanos() as u64;
    while out.len() < count {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let http = 20_000 + (seed >> 33) as u16 % 30_000;
        let grpc = http + 500;
        let peer = http + 1001;
        let taken = out.iter().any(|(h, g)| {
            [*h, *g, *h + 1001]
                .iter()
                .any(|p| [http, grpc, peer].contains(p))
        });
        if taken {
            continue;
        }
        let free = TcpListener::bind(("127.0.0.1", http)).is_ok()
            && TcpListener::bind(("127.0.0.1", grpc)).is_ok()
            && UdpSocket::bind(("127.0.0.1", peer)).is_ok();
        if free {
            out.push((http, grpc));
        }
    }
    out
}

/// Cluster tests run one at a time: each runs three or four servers of two cores, and on a
/// 2-core machine several at once would measure the scheduler, not the protocol.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct TestCluster {
    pub nodes: Vec<Option<Server>>,
    pub ports: Vec<(u16, u16)>,
    pub members: String,
    pub extra: Vec<String>,
    /// Each node's data directory, kept across its restarts (a restarted node has its Raft
    /// log back, as a real one would).
    pub data: Vec<tempfile::TempDir>,
}

impl TestCluster {
    /// `size` members; the first `running` are started.
    pub fn start(size: usize, running: usize, extra: &[&str]) -> TestCluster {
        let ports = pick_ports(size);
        let members = ports
            .iter()
            .map(|(h, _)| format!("127.0.0.1:{h}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = TestCluster {
            nodes: (0..size).map(|_| None).collect(),
            ports,
            members,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            data: (0..size).map(|_| tempfile::tempdir().unwrap()).collect(),
        };
        for i in 0..running {
            c.start_node(i);
        }
        c
    }

    pub fn start_node(&mut self, i: usize) {
        self.start_node_with(i, &[]);
    }

    pub fn start_node_with(&mut self, i: usize, more: &[&str]) {
        let (http, grpc) = self.ports[i];
        let data = self.data[i].path().to_str().unwrap().to_string();
        let mut args: Vec<&str> = vec![
            "--data-dir",
            &data,
            "--members",
            &self.members,
            "--verify-interval-ms",
            "1000",
            "--replica-lease-ms",
            "12000",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        args.extend(more);
        // A restarted node reuses its ports; the kernel may hold them a moment longer.
        let mut last = String::new();
        for _ in 0..20 {
            match Server::spawn("127.0.0.1", http, grpc, &args) {
                Ok(server) => {
                    self.nodes[i] = Some(server);
                    return;
                }
                Err(log) if log.contains("in use") => {
                    last = log;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(log) => panic!("node {i} did not start:\n{log}"),
            }
        }
        panic!("node {i} did not start:\n{last}");
    }

    pub fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            s.kill();
        }
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Server)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Waits until every running node reports UP and sees every other running node UP.
    pub fn wait_formed(&self, within: Duration) {
        let running: Vec<String> = self
            .running()
            .map(|(i, _)| format!("127.0.0.1:{}", self.ports[i].0))
            .collect();
        let ok = wait_until(within, || {
            self.running().all(|(_, s)| {
                let m = s.operator_metrics();
                m["status"] == "UP"
                    && m["members"].as_array().is_some_and(|ms| {
                        running.iter().all(|r| {
                            ms.iter()
                                .any(|x| x["address"] == r.as_str() && x["state"] == "UP")
                        })
                    })
            })
        });
        if !ok {
            for (i, s) in self.running() {
                eprintln!("node {i}: {}\n{}", s.operator_metrics(), s.log());
            }
            panic!("cluster did not form within {within:?}");
        }
    }

    /// Waits until every running node lists exactly `expected` (`ip:port`) for `service`.
    pub fn wait_everywhere(&self, service: &str, expected: &[String], within: Duration) {
        let mut want: Vec<String> = expected.to_vec();
        want.sort();
        let ok = wait_until(within, || {
            self.running().all(|(_, s)| {
                let mut got = s.endpoints(service);
                got.sort();
                got == want
            })
        });
        if !ok {
            for (i, s) in self.running() {
                let got = s.endpoints(service);
                let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
                let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
                eprintln!("node {i}: missing {missing:?}, extra {extra:?}");
                for l in s
                    .log()
                    .lines()
                    .filter(|l| l.contains("health") || l.contains("WARN"))
                {
                    eprintln!("  log: {l}");
                }
                let text = s.http("GET", "/metrics").text();
                for line in text.lines().filter(|l| {
                    !l.starts_with('#')
                        && (l.contains("distro") || l.contains("member") || l.contains("expired"))
                }) {
                    eprintln!("  {line}");
                }
            }
            panic!("{service} did not converge on every node within {within:?}");
        }
    }
}
