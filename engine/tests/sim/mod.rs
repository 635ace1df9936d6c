//! A deterministic simulator of a Nacelle cluster: N nodes of real
//! [`Shard`](engine::Shard)s on a virtual clock, a network that loses, duplicates, delays
//! and reorders messages and can be cut (symmetrically or in one direction), nodes that
//! crash, restart, join late and run with skewed wall clocks, and clients (gRPC connections
//! and HTTP heartbeat clients) that keep a known set of instances alive. Everything random
//! comes from one seed.
//!
//! The invariants of `DISTRO.md` are checked while it runs ([`World::check_safety`]) and
//! once the faults are over ([`World::check_converged`], [`World::check_quiet_verify`]).
//! Violations are collected as sentences, never panics, so a failing seed reports all of
//! them; `DISTRO_SEED=<n>` replays one seed with a log of every fault.
//!
//! The [`World`] is one struct, with its methods spread by concern:
//!
//! - this file: the random source ([`Rng`]), the [`Scenario`], the [`World`] itself, its
//!   event loop ([`World::run_until`]) and [`run_seed`];
//! - `nodes.rs`: a node's state, its start and crash, draining its commands and timers;
//! - `network.rs`: what travels between nodes, the lossy network, the views each node's
//!   transport gives of its peers, and the reachability reports;
//! - `clients.rs`: the truth the world keeps (the clients and what they publish) and the
//!   clients' random writes and beats;
//! - `faults.rs`: the faults injected, and the healing at their end;
//! - `invariants.rs`: the checks of `DISTRO.md`'s invariants, and the summary.

#![allow(dead_code, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use engine::distro::membership::{Reverted, REACHABLE_EVERY_MS};
use engine::distro::DistroConfig;
use engine::{ClientId, ServiceKey};

mod clients;
mod faults;
mod flaps;
mod invariants;
mod network;
mod nodes;

use clients::{TruthClient, BEAT_MS};
use invariants::{DeadClient, SeenRev};
use network::Flight;
pub use network::Traffic;
use nodes::Node;

/// splitmix64: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The rules `DISTRO_REVERT` turns off (comma-separated: `vouching`, `detour`,
/// `deregister_patience`, `pause_drop`, `holds`), to replay what a mutation test found.
pub fn reverted_from_env() -> Reverted {
    let mut r = Reverted::default();
    for name in std::env::var("DISTRO_REVERT")
        .unwrap_or_default()
        .split(',')
    {
        match name.trim() {
            "" => {}
            "vouching" => r.vouching = true,
            "detour" => r.detour = true,
            "deregister_patience" => r.deregister_patience = true,
            "pause_drop" => r.pause_drop = true,
            "holds" => r.holds = true,
            other => panic!("DISTRO_REVERT: unknown rule {other}"),
        }
    }
    r
}

/// What a run looks like.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Shards per node (its length is the number of nodes).
    pub shards: Vec<usize>,
    /// Nodes that start only at `join_at_ms` (a join).
    pub late: Vec<usize>,
    /// When late nodes start.
    pub join_at_ms: u64,
    /// gRPC connections opened over the run.
    pub grpc_clients: usize,
    /// HTTP heartbeat clients.
    pub http_clients: usize,
    /// Services instances are spread over.
    pub services: usize,
    /// Faults are injected in `[fault_from_ms, fault_until_ms)`.
    pub fault_from_ms: u64,
    /// End of faults; the network is healed at this time.
    pub fault_until_ms: u64,
    /// Whether to inject faults at all.
    pub faults: bool,
    /// Only crashes and restarts (no loss, partitions or skew), a few seconds apart: I3 is
    /// checked throughout, while crashed nodes are being declared DOWN.
    pub crashes_only: bool,
    /// One fault at a time, held for 6–25 s, then healed (`World::episode_step`): one-way
    /// cuts, partitions of two nodes, pauses, crashes with restarts during the hand-over.
    /// Nothing is lost on a working link, so I3 is checked while a cut leaves some node in
    /// touch with all (a hub), and dead clients' fate while the cut lasts.
    pub episodes: bool,
    /// Distro settings of every node.
    pub distro: DistroConfig,
    /// Routing and membership rules turned off (mutation tests: the sweep must catch it).
    pub reverted: Reverted,
    /// HTTP clients also deregister (then they are dead: I8).
    pub http_deregistrations: bool,
    /// HTTP clients also die silently now and then: they stop beating, with no
    /// deregistration (a killed process), whatever the network is doing (I8).
    pub http_deaths: bool,
    /// Random faults also isolate a node (cut from every peer and from the clients) until
    /// the network heals: the chaos harness's `isolate` (`Scenario::heals`).
    pub isolation: bool,
    /// Whether a flap (I1, no flaps: `flaps.rs`) is a violation. Always checked and counted
    /// (`World::flaps`); a violation in the heals sweep and the holds mutation test, and
    /// everywhere with `DISTRO_FLAPS=1` — the standard, short and crash sweeps still flap
    /// where views disagree (DISTRO.md, Known gaps).
    pub flaps_are_violations: bool,
}

impl Scenario {
    /// A 3-node cluster (1, 2 and 3 shards: the partition routing must not care) with a
    /// fourth node that joins, faults for 60 s.
    pub fn standard() -> Scenario {
        Scenario {
            shards: vec![1, 2, 3, 2],
            late: vec![3],
            join_at_ms: 20_000,
            grpc_clients: 40,
            http_clients: 30,
            services: 8,
            fault_from_ms: 5_000,
            fault_until_ms: 60_000,
            faults: true,
            crashes_only: false,
            episodes: false,
            distro: DistroConfig::default(),
            reverted: reverted_from_env(),
            // `DISTRO_HTTP_DEREGISTER=0` turns them off (to tell their findings apart).
            http_deregistrations: std::env::var("DISTRO_HTTP_DEREGISTER")
                .map_or(true, |v| v != "0"),
            // `DISTRO_HTTP_DEATHS=0` turns them off.
            http_deaths: std::env::var("DISTRO_HTTP_DEATHS").map_or(true, |v| v != "0"),
            isolation: false,
            flaps_are_violations: std::env::var("DISTRO_FLAPS").is_ok_and(|v| v == "1"),
        }
    }

    /// The standard cluster with the faults squeezed into 18 s and the join at 8 s: about
    /// half the simulated time of a standard run, for the many-seed sweep (the same fault
    /// mix, so each seed is a new combination; the long runs keep the long outages).
    pub fn short() -> Scenario {
        Scenario {
            join_at_ms: 8_000,
            fault_from_ms: 2_000,
            fault_until_ms: 20_000,
            ..Scenario::standard()
        }
    }

    /// The short runs with isolation added to the random faults: partitions, one-way cuts,
    /// isolations, restarts while clients move, and the heals after them — what made live
    /// instances flap at heals (I1, no flaps). A separate sweep, so that the short sweep's
    /// seeds (and its known failing ones) stay what they were.
    pub fn heals() -> Scenario {
        Scenario {
            isolation: true,
            flaps_are_violations: true,
            ..Scenario::short()
        }
    }

    /// Held fault episodes (see `Scenario::episodes`) for 40 s, the join at 8 s.
    pub fn episodes() -> Scenario {
        Scenario {
            episodes: true,
            join_at_ms: 8_000,
            fault_from_ms: 2_000,
            fault_until_ms: 42_000,
            ..Scenario::standard()
        }
    }

    /// The standard cluster, where nodes only crash and restart.
    pub fn crashes() -> Scenario {
        Scenario {
            crashes_only: true,
            ..Scenario::standard()
        }
    }
}

/// The simulated cluster.
pub struct World {
    pub rng: Rng,
    pub now_ms: u64,
    pub scenario: Scenario,
    nodes: Vec<Node>,
    net: BinaryHeap<Reverse<(u64, u64)>>,
    flights: BTreeMap<u64, Flight>,
    flight_seq: u64,
    /// Directed links that drop everything.
    blocked: BTreeSet<(usize, usize)>,
    pub loss: f64,
    pub dup: f64,
    pub jitter_ms: u64,
    truth: BTreeMap<ClientId, TruthClient>,
    seen_revs: BTreeMap<(usize, ClientId, ServiceKey), SeenRev>,
    pub violations: Vec<String>,
    pub log: Vec<String>,
    pub verbose: bool,
    pub traffic: Traffic,
    healed: bool,
    /// When the network last changed in a way that may hide data (for I3's grace).
    last_disturbance_ms: u64,
    next_view_ms: u64,
    next_check_ms: u64,
    next_action_ms: u64,
    services: Vec<ServiceKey>,
    http_ids: Vec<ClientId>,
    next_ip: u32,
    next_report_ms: u64,
    /// Crashed nodes to start again, and when.
    restarts: Vec<(u64, usize)>,
    /// HTTP writes waiting for their answer, by (entry node, token).
    http_pending: BTreeMap<(usize, u64), (ClientId, u64)>,
    /// HTTP clients with a write waiting for its answer, since when: like an SDK, a client
    /// deregisters only once its last request was answered (or timed out).
    http_busy: BTreeMap<ClientId, u64>,
    /// When the last frame on each directed link arrives: the server's frames between two
    /// nodes share one ordered stream, so forwards and their answers are not reordered.
    link_fifo: BTreeMap<(usize, usize), u64>,
    /// HTTP clients that deregistered or died silently (I8), by client.
    dead: BTreeMap<ClientId, DeadClient>,
    /// Since when every alive node runs, sees every other alive node UP and every other
    /// node DOWN, and which nodes were alive then (I8).
    settled_since_ms: Option<(u64, Vec<usize>)>,
    /// What each node last held of the client `DISTRO_WATCH` names.
    watched: BTreeMap<usize, String>,
    /// `Scenario::episodes`: whether a fault is held now, and until when (or when the
    /// quiet gap after it ends).
    in_episode: bool,
    episode_until_ms: u64,
    /// I1, no flaps: since when each node lists each live HTTP client's instance while
    /// together with the node its beats enter (`flaps.rs`).
    listed: BTreeMap<(usize, ClientId), u64>,
    /// The node each HTTP client's last beat or registration entered.
    beat_entry: BTreeMap<ClientId, usize>,
    /// Flaps seen (the first few are reported in full).
    pub flaps: usize,
    /// A node cut from its peers and from the clients (`faults.rs`), until the network heals.
    isolated: Option<usize>,
}

const VIEW_EVERY_MS: u64 = 100;

const CHECK_EVERY_MS: u64 = 250;

impl World {
    pub fn new(seed: u64, scenario: Scenario) -> World {
        let rng = Rng::new(seed);
        let services = (0..scenario.services)
            .map(|i| ServiceKey::new("public", "DEFAULT_GROUP", &format!("svc-{i}")).unwrap())
            .collect();
        let mut w = World {
            rng,
            now_ms: 0,
            nodes: Vec::new(),
            net: BinaryHeap::new(),
            flights: BTreeMap::new(),
            flight_seq: 0,
            blocked: BTreeSet::new(),
            loss: 0.0,
            dup: 0.0,
            jitter_ms: 2,
            truth: BTreeMap::new(),
            seen_revs: BTreeMap::new(),
            violations: Vec::new(),
            next_report_ms: REACHABLE_EVERY_MS,
            restarts: Vec::new(),
            http_pending: BTreeMap::new(),
            http_busy: BTreeMap::new(),
            link_fifo: BTreeMap::new(),
            dead: BTreeMap::new(),
            settled_since_ms: None,
            watched: BTreeMap::new(),
            in_episode: false,
            episode_until_ms: 0,
            listed: BTreeMap::new(),
            beat_entry: BTreeMap::new(),
            flaps: 0,
            isolated: None,
            log: Vec::new(),
            verbose: false,
            traffic: Traffic::default(),
            healed: false,
            last_disturbance_ms: 0,
            next_view_ms: 0,
            next_check_ms: 0,
            next_action_ms: 500,
            services,
            http_ids: Vec::new(),
            next_ip: 1,
            scenario,
        };
        let count = w.scenario.shards.len();
        for i in 0..count {
            let shard_count = w.scenario.shards[i];
            let node = w.fresh_node(i, shard_count);
            w.nodes.push(node);
        }
        for i in 0..count {
            if !w.scenario.late.contains(&i) {
                w.start_node(i);
            }
        }
        w
    }

    fn say(&mut self, line: String) {
        if self.verbose {
            eprintln!("[{:>7} ms] {line}", self.now_ms);
        }
        self.log.push(format!("[{} ms] {line}", self.now_ms));
        if self.log.len() > 400 {
            self.log.drain(..200);
        }
    }

    fn next_event_ms(&self) -> u64 {
        let mut next = self
            .next_view_ms
            .min(self.next_check_ms)
            .min(self.next_action_ms)
            .min(self.next_report_ms);
        if let Some(Reverse((at, _))) = self.net.peek() {
            next = next.min(*at);
        }
        for n in self.nodes.iter().filter(|n| n.alive) {
            if let Some(t) = n.router.poll_timeout() {
                next = next.min(t);
            }
            for s in &n.shards {
                if let Some(t) = s.poll_timeout() {
                    next = next.min(t);
                }
            }
        }
        next.max(self.now_ms + 1)
    }

    /// Runs the scenario to `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        if !self.scenario.faults {
            self.healed = true;
        }
        while self.now_ms < until_ms {
            self.now_ms = self.next_event_ms().min(until_ms);
            self.deliver_due();
            self.fire_timers();
            let due: Vec<usize> = self
                .restarts
                .iter()
                .filter(|(at, _)| *at <= self.now_ms)
                .map(|(_, i)| *i)
                .collect();
            self.restarts.retain(|(at, _)| *at > self.now_ms);
            for i in due {
                if !self.nodes[i].alive {
                    self.start_node(i);
                }
            }
            if self.now_ms >= self.next_report_ms {
                self.next_report_ms = self.now_ms + REACHABLE_EVERY_MS;
                self.send_reports();
            }
            if self.now_ms >= self.next_view_ms {
                self.next_view_ms = self.now_ms + VIEW_EVERY_MS;
                for &late in &self.scenario.late.clone() {
                    if self.now_ms >= self.scenario.join_at_ms
                        && !self.nodes[late].alive
                        && self.nodes[late].started_ms == 0
                    {
                        self.start_node(late);
                        self.nodes[late].started_ms = self.now_ms.max(1);
                    }
                }
                self.update_views(false);
            }
            if self.now_ms >= self.next_action_ms {
                self.next_action_ms = self.now_ms + self.rng.range(20, 300);
                let in_faults = self.scenario.faults
                    && self.now_ms >= self.scenario.fault_from_ms
                    && self.now_ms < self.scenario.fault_until_ms;
                if in_faults && self.scenario.episodes {
                    self.episode_step();
                } else if in_faults && self.scenario.crashes_only {
                    if self.rng.chance(0.02) {
                        self.crash_or_restart();
                    }
                } else if in_faults && self.rng.chance(0.08) {
                    self.random_fault();
                }
                if !self.healed && self.now_ms >= self.scenario.fault_until_ms {
                    self.healed = true;
                    self.heal();
                }
                // Writes stop a while before the end so convergence can be judged.
                if self.now_ms < self.writes_until_ms() {
                    self.random_action();
                }
                self.beats();
            }
            if self.now_ms >= self.next_check_ms {
                self.next_check_ms = self.now_ms + CHECK_EVERY_MS;
                self.check_safety();
            }
        }
    }

    /// Writes (not beats) stop here.
    pub fn writes_until_ms(&self) -> u64 {
        self.scenario.fault_until_ms + 5_000
    }
}

/// Runs one seed of a scenario and returns the violations (empty = pass).
pub fn run_seed(seed: u64, scenario: Scenario, verbose: bool) -> (Vec<String>, World) {
    let mut w = World::new(seed, scenario);
    w.verbose = verbose;
    // After the last write: one beat period for HTTP clients to re-register anything that
    // expired during the faults, then one verify interval plus sync time to converge.
    let settle = BEAT_MS + w.scenario.distro.verify_interval_ms + 3_000;
    let end = w.writes_until_ms() + settle;
    w.run_until(end);
    w.check_converged();
    w.check_quiet_verify();
    (w.violations.clone(), w)
}
