//! Server-side health checks of persistent (`ephemeral=false`) instances: the per-core
//! scheduler that decides when to probe what, and when an instance's `healthy` flag flips.
//!
//! # Place
//! A persistent instance sends no heartbeats; the registry checks it (Nacos 2.x
//! `HealthCheckTaskV2`): a TCP connect by default, an HTTP GET, or nothing, as configured per
//! cluster ([`spec::parse_health_checker`]). Exactly one member checks an instance — the one
//! the responsibility ring names for its `ip:port` — and on that member the core that owns
//! it. That core runs one [`HealthChecker`]; the driver tells it which targets it is
//! responsible for ([`HealthChecker::handle_add`], [`HealthChecker::handle_remove`]), runs
//! the probes it asks for ([`HealthCommand::Probe`], `server/src/health_probe.rs`) and reports
//! their results ([`HealthChecker::handle_result`]). Only flips come out
//! ([`HealthCommand::Flip`]); the driver turns each into a write of the stored flag (a Raft
//! write for persistent instances). The streak counters are local and in memory, as in Nacos:
//! when responsibility moves, the new owner adds the target with its current stored flag and
//! continues from it.
//!
//! # Why sans-IO
//! As [`crate::distro::route`]: the decisions (thresholds, jitter, bounds, stale results) are
//! here, with time as an argument and timers as data, so they are unit-tested with exact
//! commands and the simulator can run the code the server runs. The executor only connects.
//!
//! # Rules
//! - A target is probed first after [`HealthConfig::first_delay_min_ms`] plus a jitter below
//!   [`HealthConfig::interval_ms`] (Nacos: 2 s + up to 5 s), so targets added together — a
//!   responsibility move hands over thousands — spread over an interval; then every
//!   `interval_ms ± jitter_ms/2` after each result. The jitter comes from a seeded
//!   splitmix64 ([`HealthConfig::seed`]): the same inputs give the same schedule.
//! - A target has at most one probe in flight; the next is scheduled when its result comes.
//! - [`HealthConfig::threshold`] (3) consecutive soft failures flip a healthy target, as many
//!   consecutive OKs flip an unhealthy one back; a refused connection or an HTTP status other
//!   than 200/503/302 flips a healthy target at once ([`spec::Verdict`]). A result that
//!   agrees with the flag resets the streak; nothing is emitted when the flag already matches.
//! - At most [`HealthConfig::max_in_flight`] probes are outstanding per core; targets due
//!   beyond it wait in order and go as results free slots (backpressure: a slow network
//!   stretches the interval instead of opening ever more sockets). A probe whose result never
//!   comes is a timeout (soft failure) after [`HealthConfig::probe_deadline_ms`].
//! - Every probe has a fresh id. A removed target's probe keeps its slot until its result or
//!   deadline (the socket really is open) but its result is ignored, so a target removed and
//!   re-added never sees the old probe's result.
//! - NONE targets are kept (their flag is known) and never probed.
//! - At most [`HealthConfig::max_targets`] targets per core.

pub mod spec;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;

pub use spec::{parse_health_checker, CheckSpec, HttpCheck, ProbeResult, SpecError, Verdict};

/// Connect timeout of a TCP probe and the connect and read timeouts of an HTTP probe (Nacos
/// `CONNECT_TIMEOUT_MS`, `ProcessorHttpClientFactory`).
pub const PROBE_TIMEOUT_MS: u64 = 500;

/// Upper bounds (ms, inclusive) of the probe latency buckets of [`HealthStats::latency`]; the
/// last bucket counts everything slower.
pub const LATENCY_BOUNDS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000];

/// Settings of a [`HealthChecker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Mean time from a result to the target's next probe.
    pub interval_ms: u64,
    /// Width of the window around `interval_ms` the next probe falls in.
    pub jitter_ms: u64,
    /// Least delay of a new target's first probe (plus a jitter below `interval_ms`).
    pub first_delay_min_ms: u64,
    /// Consecutive results against the flag that flip it.
    pub threshold: u8,
    /// A probe not reported back after this long counts as a timeout.
    pub probe_deadline_ms: u64,
    /// Most probes outstanding at once.
    pub max_in_flight: usize,
    /// Most targets.
    pub max_targets: usize,
    /// Seed of the jitter (give each core of each node its own: a node id hash plus the core).
    pub seed: u64,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            interval_ms: 5_000,
            jitter_ms: 1_000,
            first_delay_min_ms: 2_000,
            threshold: 3,
            // The executor gives up after 500 ms connect + 500 ms read; this only catches a
            // result lost on the way back.
            probe_deadline_ms: 3_000,
            max_in_flight: 256,
            max_targets: 100_000,
            seed: 0,
        }
    }
}

/// What the driver is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCommand<K> {
    /// Run this probe and report its result with [`HealthChecker::handle_result`] (`id`).
    Probe {
        /// The probe's id (unique per checker).
        id: u64,
        /// Where to connect.
        addr: SocketAddr,
        /// How (never [`CheckSpec::None`]).
        spec: Arc<CheckSpec>,
    },
    /// The target's `healthy` flag flipped: write it (if this member is still responsible).
    Flip {
        /// The target.
        target: K,
        /// Its new flag.
        healthy: bool,
    },
}

/// Why a target was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthError {
    /// [`HealthConfig::max_targets`] targets are checked already.
    TooManyTargets,
}

impl std::fmt::Display for HealthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthError::TooManyTargets => f.write_str("too many health check targets"),
        }
    }
}

impl std::error::Error for HealthError {}

/// Counters of a checker (the driver exports them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthStats {
    /// Probes started.
    pub probes: u64,
    /// Results counted for a target (reported ones and deadlines).
    pub checks: u64,
    /// Of which OK.
    pub ok: u64,
    /// Of which soft failures (deadlines included).
    pub failures: u64,
    /// Of which immediate failures.
    pub failures_now: u64,
    /// Probes whose result did not come before the deadline.
    pub deadlines: u64,
    /// Results ignored: their target was removed, re-added or re-specified meanwhile, or
    /// the deadline had passed.
    pub stale: u64,
    /// Times a due target waited for an in-flight slot.
    pub deferred: u64,
    /// Flips to healthy.
    pub flips_healthy: u64,
    /// Flips to unhealthy.
    pub flips_unhealthy: u64,
    /// Sum of reported probes' latencies (ms).
    pub latency_sum_ms: u64,
    /// Reported probes per latency bucket ([`LATENCY_BOUNDS_MS`], then slower); not
    /// cumulative.
    pub latency: [u64; LATENCY_BOUNDS_MS.len() + 1],
}

impl HealthStats {
    fn record_latency(&mut self, ms: u64) {
        self.latency_sum_ms += ms;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket] += 1;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// NONE: never probed.
    Idle,
    /// Next probe at this time.
    Scheduled(u64),
    /// Due, waiting for an in-flight slot.
    Waiting,
    /// This probe is out.
    InFlight(u64),
}

#[derive(Debug)]
struct Target<K> {
    key: K,
    addr: SocketAddr,
    spec: Arc<CheckSpec>,
    healthy: bool,
    /// Consecutive results against `healthy`.
    streak: u8,
    phase: Phase,
}

#[derive(Clone, Copy, Debug)]
struct Flight {
    /// The target it is for; `None` once that target was removed or changed.
    target: Option<u64>,
    started_ms: u64,
}

/// Delayed work: ordered by time, then kind, so the order is deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Target (internal id) is due, if still `Scheduled` at this time.
    Due(u64),
    /// Probe id's deadline.
    Deadline(u64),
}

/// The health-check scheduler of one core. See the module docs.
#[derive(Debug)]
pub struct HealthChecker<K> {
    cfg: HealthConfig,
    rng: u64,
    next_target: u64,
    next_probe: u64,
    by_key: HashMap<K, u64>,
    targets: HashMap<u64, Target<K>>,
    in_flight: HashMap<u64, Flight>,
    waiting: VecDeque<u64>,
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
    commands: VecDeque<HealthCommand<K>>,
    stats: HealthStats,
}

impl<K: Clone + Eq + Hash> HealthChecker<K> {
    /// An empty checker.
    pub fn new(cfg: HealthConfig) -> HealthChecker<K> {
        HealthChecker {
            cfg: HealthConfig {
                threshold: cfg.threshold.max(1),
                max_in_flight: cfg.max_in_flight.max(1),
                interval_ms: cfg.interval_ms.max(1),
                ..cfg
            },
            rng: cfg.seed,
            next_target: 0,
            next_probe: 1,
            by_key: HashMap::new(),
            targets: HashMap::new(),
            in_flight: HashMap::new(),
            waiting: VecDeque::new(),
            timers: BinaryHeap::new(),
            commands: VecDeque::new(),
            stats: HealthStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> HealthStats {
        self.stats
    }

    /// Targets held.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether no target is held.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Probes outstanding (those of removed targets included until they end).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The flag the checker holds for `key`.
    pub fn healthy(&self, key: &K) -> Option<bool> {
        let id = self.by_key.get(key)?;
        self.targets.get(id).map(|t| t.healthy)
    }

    /// This core became responsible for `key`: check `addr` with `spec`, starting from the
    /// stored flag `healthy`. A key already held is updated instead ([`Self::handle_update`],
    /// then [`Self::handle_healthy`]).
    pub fn handle_add(
        &mut self,
        now_ms: u64,
        key: K,
        addr: SocketAddr,
        spec: Arc<CheckSpec>,
        healthy: bool,
    ) -> Result<(), HealthError> {
        if self.by_key.contains_key(&key) {
            self.handle_update(now_ms, &key, addr, spec);
            self.handle_healthy(&key, healthy);
            return Ok(());
        }
        if self.targets.len() >= self.cfg.max_targets {
            return Err(HealthError::TooManyTargets);
        }
        let id = self.next_target;
        self.next_target += 1;
        let probes = spec.probes();
        self.by_key.insert(key.clone(), id);
        self.targets.insert(
            id,
            Target {
                key,
                addr,
                spec,
                healthy,
                streak: 0,
                phase: Phase::Idle,
            },
        );
        if probes {
            self.schedule_first(now_ms, id);
        }
        Ok(())
    }

    /// The check of `key` changed (its cluster's checker or check port). A probe in flight
    /// is disowned (its result is ignored) and the streak restarts; a target that becomes
    /// NONE stops being probed, one that stops being NONE starts like a new one. Returns
    /// whether `key` is held.
    pub fn handle_update(
        &mut self,
        now_ms: u64,
        key: &K,
        addr: SocketAddr,
        spec: Arc<CheckSpec>,
    ) -> bool {
        let Some(&id) = self.by_key.get(key) else {
            return false;
        };
        let Some(t) = self.targets.get_mut(&id) else {
            return false;
        };
        if t.addr == addr && t.spec == spec {
            return true;
        }
        t.addr = addr;
        t.spec = spec;
        t.streak = 0;
        let probes = t.spec.probes();
        let phase = t.phase;
        if let Phase::InFlight(probe) = phase {
            if let Some(f) = self.in_flight.get_mut(&probe) {
                f.target = None;
            }
        }
        match (probes, phase) {
            (false, _) => self.set_phase(id, Phase::Idle),
            // Still due soon, or queued: keep its place.
            (true, Phase::Scheduled(_) | Phase::Waiting) => {}
            (true, Phase::Idle | Phase::InFlight(_)) => self.schedule_first(now_ms, id),
        }
        true
    }

    /// The stored flag of `key` is `healthy` (another writer changed it, or the driver's
    /// write of a flip failed and the flag stayed): the checker continues from it, with a
    /// fresh streak. Returns whether `key` is held.
    pub fn handle_healthy(&mut self, key: &K, healthy: bool) -> bool {
        let Some(t) = self.by_key.get(key).and_then(|id| self.targets.get_mut(id)) else {
            return false;
        };
        if t.healthy != healthy {
            t.healthy = healthy;
            t.streak = 0;
        }
        true
    }

    /// This core is no longer responsible for `key` (moved away, or the instance was
    /// deregistered): it is not probed again and its probe in flight is ignored. Returns
    /// whether it was held.
    pub fn handle_remove(&mut self, key: &K) -> bool {
        let Some(id) = self.by_key.remove(key) else {
            return false;
        };
        if let Some(t) = self.targets.remove(&id) {
            if let Phase::InFlight(probe) = t.phase {
                if let Some(f) = self.in_flight.get_mut(&probe) {
                    f.target = None;
                }
            }
        }
        true
    }

    /// Probe `id` ended with `result` (at `now_ms`).
    pub fn handle_result(&mut self, now_ms: u64, id: u64, result: ProbeResult) {
        let Some(flight) = self.in_flight.remove(&id) else {
            // Unknown, or its deadline already counted it.
            self.stats.stale += 1;
            return;
        };
        self.stats
            .record_latency(now_ms.saturating_sub(flight.started_ms));
        match flight.target {
            Some(target) => self.count(now_ms, target, id, result.verdict()),
            None => self.stats.stale += 1,
        }
        self.start_waiting(now_ms);
    }

    /// Fires the timers due at `now_ms`: probes of due targets, deadlines of lost probes.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now_ms {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Due(target) => {
                    let due = self
                        .targets
                        .get(&target)
                        .is_some_and(|t| t.phase == Phase::Scheduled(at));
                    if due {
                        self.start_or_queue(now_ms, target);
                    }
                }
                Timer::Deadline(probe) => {
                    let Some(flight) = self.in_flight.remove(&probe) else {
                        continue;
                    };
                    self.stats.deadlines += 1;
                    if let Some(target) = flight.target {
                        self.count(now_ms, target, probe, Verdict::Fail);
                    }
                }
            }
        }
        self.start_waiting(now_ms);
    }

    /// The next command for the driver.
    pub fn poll_command(&mut self) -> Option<HealthCommand<K>> {
        self.commands.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due (monotonic ms). It may wake for a timer
    /// that turns out to be void (a removed target).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// splitmix64: a draw below `bound` (0 when `bound` is 0).
    fn draw(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % bound
    }

    fn set_phase(&mut self, target: u64, phase: Phase) {
        if let Some(t) = self.targets.get_mut(&target) {
            t.phase = phase;
        }
    }

    fn schedule_at(&mut self, target: u64, at: u64) {
        self.set_phase(target, Phase::Scheduled(at));
        self.timers.push(Reverse((at, Timer::Due(target))));
    }

    fn schedule_first(&mut self, now_ms: u64, target: u64) {
        let at = now_ms + self.cfg.first_delay_min_ms + self.draw(self.cfg.interval_ms);
        self.schedule_at(target, at);
    }

    fn schedule_next(&mut self, now_ms: u64, target: u64) {
        let half = self.cfg.jitter_ms / 2;
        let base = self.cfg.interval_ms.saturating_sub(half).max(1);
        let at = now_ms + base + self.draw(self.cfg.jitter_ms);
        self.schedule_at(target, at);
    }

    /// A due target: probed now if a slot is free and nobody waits before it.
    fn start_or_queue(&mut self, now_ms: u64, target: u64) {
        if self.waiting.is_empty() && self.in_flight.len() < self.cfg.max_in_flight {
            self.start(now_ms, target);
        } else {
            self.stats.deferred += 1;
            self.set_phase(target, Phase::Waiting);
            self.waiting.push_back(target);
        }
    }

    /// Starts waiting targets while slots are free.
    fn start_waiting(&mut self, now_ms: u64) {
        while self.in_flight.len() < self.cfg.max_in_flight {
            let Some(target) = self.waiting.pop_front() else {
                break;
            };
            let still = self
                .targets
                .get(&target)
                .is_some_and(|t| t.phase == Phase::Waiting);
            if still {
                self.start(now_ms, target);
            }
        }
    }

    fn start(&mut self, now_ms: u64, target: u64) {
        let Some(t) = self.targets.get_mut(&target) else {
            return;
        };
        let id = self.next_probe;
        self.next_probe += 1;
        t.phase = Phase::InFlight(id);
        self.commands.push_back(HealthCommand::Probe {
            id,
            addr: t.addr,
            spec: t.spec.clone(),
        });
        self.in_flight.insert(
            id,
            Flight {
                target: Some(target),
                started_ms: now_ms,
            },
        );
        self.timers.push(Reverse((
            now_ms + self.cfg.probe_deadline_ms,
            Timer::Deadline(id),
        )));
        self.stats.probes += 1;
    }

    /// Counts the verdict of probe `probe` for `target`, flips if a threshold is reached,
    /// and schedules the next probe.
    fn count(&mut self, now_ms: u64, target: u64, probe: u64, verdict: Verdict) {
        let threshold = self.cfg.threshold;
        let Some(t) = self.targets.get_mut(&target) else {
            self.stats.stale += 1;
            return;
        };
        if t.phase != Phase::InFlight(probe) {
            self.stats.stale += 1;
            return;
        }
        self.stats.checks += 1;
        let against = match verdict {
            Verdict::Ok => {
                self.stats.ok += 1;
                !t.healthy
            }
            Verdict::Fail => {
                self.stats.failures += 1;
                t.healthy
            }
            Verdict::FailNow => {
                self.stats.failures_now += 1;
                if t.healthy {
                    t.streak = threshold - 1;
                }
                t.healthy
            }
        };
        if against {
            t.streak += 1;
            if t.streak >= threshold {
                t.healthy = !t.healthy;
                t.streak = 0;
                if t.healthy {
                    self.stats.flips_healthy += 1;
                } else {
                    self.stats.flips_unhealthy += 1;
                }
                self.commands.push_back(HealthCommand::Flip {
                    target: t.key.clone(),
                    healthy: t.healthy,
                });
            }
        } else {
            t.streak = 0;
        }
        self.schedule_next(now_ms, target);
    }
}

/// Whether this member checks the persistent instance at `host:port`: the member the
/// responsibility ring names for that address, as for a heartbeat client at it (Nacos's
/// `HealthCheckResponsibleInterceptor` hashes the client's `ip:port` over the same ring as
/// Distro). A standalone node checks everything.
pub fn checks_here(members: &crate::distro::Members, host: &crate::model::Host, port: u16) -> bool {
    members.is_mine(&crate::model::ClientId::for_address(host, port))
}
