//! Overload shedding: a saturated core answers some requests at once with Nacos's "over
//! threshold" error (gRPC code 503, HTTP 503) instead of serving them late, so that the
//! requests it does admit keep a bounded latency and its memory does not grow with the
//! backlog.
//!
//! # gRPC: each request's own queueing delay (CoDel-style)
//! A core's queue is its run queue: a request waits behind the tasks already ready on the
//! core. Each gRPC request is stamped when its HTTP/2 stream is accepted and looked at again
//! when its handler starts; the difference is the time it queued. Over each 100 ms window the
//! core keeps the *smallest* such delay: if even the luckiest request waited longer than the
//! target, the queue did not drain once in the window — a standing backlog, not a burst.
//! While that holds, a read that queued longer than the target is refused (and a write longer
//! than 60 times the target): whatever the core admits has waited at most that long, and
//! refusing the stale ones is what drains the queue. A window needs a few requests to count,
//! so a lone request delayed by a busy machine never sheds anything.
//!
//! # HTTP/1.1: queueing in the connection, and the core's lag
//! An HTTP/1.1 request is parsed and served in its connection's task. Its connection stamps
//! every read that brings bytes (`rt::GlommioIo::stamped`); a request's queueing delay is the time
//! since that read. Pipelined requests that arrived together wait behind each other in the
//! connection's buffer, and this is the same CoDel-style window as gRPC's, kept apart from
//! it (an HTTP request read just now must not hide a gRPC backlog). What the stamp cannot
//! see is a connection whose task waits in the run queue while its bytes sit in the socket:
//! for that HTTP also uses the lag of the 10 ms housekeeping timer (how long a task that
//! just became ready waits for its turn). Lag alone is not enough on a shared machine: when
//! the OS does not schedule the thread (a busy CI box), the timer is late although the core
//! has nothing queued, and shedding would only turn a slow answer into an error. So the core
//! is overloaded by lag only when it is late **and** was busy: the thread's own CPU time
//! covered most of the interval. Each class then has a shed probability, raised while the
//! lag is over the threshold and still growing, and lowered slowly once it is not.
//!
//! # Classes
//! - [`Class::Read`] (queries, lists) is shed from the target on;
//! - [`Class::Write`] (register, update, subscribe) only from 60 times the target (3 s by
//!   default, the SDKs' request timeout: the client has given up on it). A refused read is
//!   retried by the SDK on its next poll; a refused write fails an application's
//!   registration, and a burst of registrations (a fleet starting) is a closed loop that
//!   regulates itself: a 503 there would only lose work;
//! - [`Class::Essential`] (heartbeats, deregistrations, health checks, metrics) is never shed:
//!   refusing a heartbeat would expire a live instance, refusing a deregistration keeps a dead
//!   one, and both reduce work rather than add it.

use std::time::{Duration, Instant};

/// What a request is, for shedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Never shed.
    Essential,
    /// Shed only from 60 times the target (see the module docs).
    Write,
    /// Shed from the target lag.
    Read,
}

/// Fraction of an interval the thread must have run for its lag to count as its own backlog.
const BUSY_FRACTION: f64 = 0.7;
/// Writes are shed from this many times the target lag.
const WRITE_FACTOR: f64 = 60.0;
/// Highest shed probability: a trickle of every class still gets through, so clients see
/// progress and the probability has admitted work to measure against.
const MAX_SHED: f64 = 0.98;
/// Decrease per tick once the core is no longer overloaded (≈ 2.5 s from full shedding to
/// none at the 10 ms tick).
const RELIEF_PER_TICK: f64 = 0.004;

/// Length of a queueing-delay window.
const WINDOW: Duration = Duration::from_millis(100);
/// Requests a window needs before its minimum delay says anything.
const MIN_SAMPLES: u32 = 8;

/// Where a request came from: each protocol keeps its own queueing-delay window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A gRPC request, stamped when its HTTP/2 stream was accepted.
    Grpc,
    /// An HTTP/1.1 request, stamped by the read that brought it.
    Http,
}

/// The smallest queueing delay of the requests of the current window, and what the last
/// complete window said.
#[derive(Debug)]
struct QueueWindow {
    start: Option<Instant>,
    min: Duration,
    samples: u32,
    /// The last complete window's smallest queueing delay was over the target.
    standing_queue: bool,
}

impl QueueWindow {
    fn new() -> QueueWindow {
        QueueWindow {
            start: None,
            min: Duration::MAX,
            samples: 0,
            standing_queue: false,
        }
    }

    /// Counts a request that queued `delay`; whether a standing queue is on.
    fn observe(&mut self, delay: Duration, now: Instant, target: Duration) -> bool {
        let start = *self.start.get_or_insert(now);
        if now.saturating_duration_since(start) >= WINDOW {
            self.standing_queue = self.samples >= MIN_SAMPLES && self.min > target;
            self.start = Some(now);
            self.min = Duration::MAX;
            self.samples = 0;
        }
        self.min = self.min.min(delay);
        self.samples += 1;
        self.standing_queue
    }
}

/// One core's admission state (single-threaded; lives in the core).
#[derive(Debug)]
pub struct Admission {
    target: Duration,
    shed_read: f64,
    shed_write: f64,
    last_lag: Duration,
    rng: u64,
    grpc: QueueWindow,
    http: QueueWindow,
}

impl Admission {
    /// `target`: the lag from which reads are shed; zero disables shedding.
    pub fn new(target: Duration, seed: u64) -> Admission {
        Admission {
            target,
            shed_read: 0.0,
            shed_write: 0.0,
            last_lag: Duration::ZERO,
            rng: seed | 1,
            grpc: QueueWindow::new(),
            http: QueueWindow::new(),
        }
    }

    /// Whether to serve a request of `class` that arrived (`via`) at `arrived` and whose
    /// handler starts at `now`, by its own queueing delay (see the module docs). HTTP
    /// requests must also pass [`Admission::admit`].
    pub fn admit_queued(&mut self, via: Via, class: Class, arrived: Instant, now: Instant) -> bool {
        if self.target.is_zero() {
            return true;
        }
        let delay = now.saturating_duration_since(arrived);
        let window = match via {
            Via::Grpc => &mut self.grpc,
            Via::Http => &mut self.http,
        };
        let standing = window.observe(delay, now, self.target);
        let limit = match class {
            Class::Essential => return true,
            Class::Read => self.target,
            Class::Write => self.target.mul_f64(WRITE_FACTOR),
        };
        !(standing && delay > limit)
    }

    /// Whether the last window of either protocol saw a standing queue.
    pub fn standing_queue(&self) -> bool {
        self.grpc.standing_queue || self.http.standing_queue
    }

    /// One housekeeping tick: the timer fired `lag` after it was due; over the `wall` time
    /// since the previous tick the thread ran for `busy`.
    pub fn on_tick(&mut self, lag: Duration, wall: Duration, busy: Duration) {
        if self.target.is_zero() {
            return;
        }
        let busy_enough =
            wall.is_zero() || busy.as_secs_f64() >= BUSY_FRACTION * wall.as_secs_f64();
        let pressure = lag.as_secs_f64() / self.target.as_secs_f64();
        // A backlog that is already draining needs no more shedding: raising the
        // probability while the lag falls only overshoots (everything refused, goodput gone).
        let growing = lag >= self.last_lag;
        self.last_lag = lag;
        self.shed_read = adjust(self.shed_read, busy_enough, growing, pressure);
        self.shed_write = adjust(
            self.shed_write,
            busy_enough,
            growing,
            pressure / WRITE_FACTOR,
        );
    }

    /// Whether to serve an HTTP request of `class` now.
    pub fn admit(&mut self, class: Class) -> bool {
        let p = match class {
            Class::Essential => return true,
            Class::Write => self.shed_write,
            Class::Read => self.shed_read,
        };
        p == 0.0 || self.next_unit() >= p
    }

    /// Current shed probabilities (read, write), for metrics.
    pub fn shedding(&self) -> (f64, f64) {
        (self.shed_read, self.shed_write)
    }

    /// xorshift64*: uniform in [0, 1). Statistical quality is irrelevant here; cost is not.
    fn next_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `pressure` is the lag in units of the class's threshold.
fn adjust(p: f64, busy: bool, growing: bool, pressure: f64) -> f64 {
    if busy && growing && pressure >= 1.0 {
        // Later ticks mean a longer backlog: step harder, but never all at once.
        (p + 0.05 * pressure.min(4.0)).min(MAX_SHED)
    } else if pressure < 0.5 || !busy {
        (p - RELIEF_PER_TICK).max(0.0)
    } else {
        p
    }
}

/// CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs no other state.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn admitted(a: &mut Admission, class: Class, n: usize) -> usize {
        (0..n).filter(|_| a.admit(class)).count()
    }

    #[test]
    fn an_idle_or_merely_late_core_admits_everything() {
        let mut a = Admission::new(50 * MS, 7);
        for _ in 0..100 {
            a.on_tick(MS, 11 * MS, 2 * MS);
        }
        assert_eq!(admitted(&mut a, Class::Read, 1000), 1000);
        // The OS did not run the thread for 200 ms: late, but not busy.
        for _ in 0..100 {
            a.on_tick(200 * MS, 210 * MS, 5 * MS);
        }
        assert_eq!(a.shedding(), (0.0, 0.0));
        assert_eq!(admitted(&mut a, Class::Write, 1000), 1000);
    }

    #[test]
    fn a_busy_late_core_sheds_reads_first_then_writes_but_never_essentials() {
        let mut a = Admission::new(50 * MS, 7);
        // 60 ms late and busy: over the read threshold, under the write one.
        for _ in 0..10 {
            a.on_tick(60 * MS, 70 * MS, 68 * MS);
        }
        let (read, write) = a.shedding();
        assert!(read > 0.5, "read shedding {read}");
        assert_eq!(write, 0.0);
        assert!(admitted(&mut a, Class::Read, 1000) < 500);
        assert_eq!(admitted(&mut a, Class::Write, 1000), 1000);
        // 3.5 s late: writes too, up to the cap.
        for _ in 0..40 {
            a.on_tick(3500 * MS, 3510 * MS, 3510 * MS);
        }
        let (read, write) = a.shedding();
        assert_eq!(read, MAX_SHED);
        assert_eq!(write, MAX_SHED);
        let writes = admitted(&mut a, Class::Write, 10_000);
        assert!(
            (50..500).contains(&writes),
            "{writes} writes admitted at the cap"
        );
        assert_eq!(admitted(&mut a, Class::Essential, 1000), 1000);
    }

    #[test]
    fn shedding_fades_once_the_core_keeps_up() {
        let mut a = Admission::new(50 * MS, 7);
        for _ in 0..40 {
            a.on_tick(200 * MS, 210 * MS, 210 * MS);
        }
        // Between half and one target: hold, neither raise nor lower.
        a.on_tick(30 * MS, 40 * MS, 40 * MS);
        assert_eq!(a.shedding().0, MAX_SHED);
        let mut ticks = 0;
        while a.shedding() != (0.0, 0.0) {
            a.on_tick(MS, 11 * MS, 5 * MS);
            ticks += 1;
            assert!(ticks < 1000, "still shedding after {ticks} quiet ticks");
        }
        assert!(ticks > 100, "relief after {ticks} ticks is too abrupt");
        assert_eq!(admitted(&mut a, Class::Read, 1000), 1000);
    }

    #[test]
    fn a_standing_grpc_queue_sheds_only_what_waited_too_long() {
        let mut a = Admission::new(50 * MS, 7);
        let t0 = Instant::now();
        // A burst: some requests wait 80 ms, but the queue drains (one waited 1 ms).
        for i in 0..20u64 {
            let now = t0 + MS * i as u32;
            let waited = if i == 10 { MS } else { 80 * MS };
            assert!(a.admit_queued(Via::Grpc, Class::Read, now - waited, now));
        }
        // The window closes: it drained once, so no standing queue; nothing is shed.
        let now = t0 + 101 * MS;
        assert!(a.admit_queued(Via::Grpc, Class::Read, now - 80 * MS, now));
        assert!(!a.standing_queue());
        // A window in which every request waited 60-200 ms: a standing queue.
        for i in 0..20u64 {
            let now = t0 + MS * (102 + 4 * i as u32);
            let _ = a.admit_queued(Via::Grpc, Class::Read, now - MS * (60 + 7 * i as u32), now);
        }
        let now = t0 + 210 * MS;
        let _ = a.admit_queued(Via::Grpc, Class::Essential, now - 70 * MS, now);
        assert!(a.standing_queue());
        // Now: reads that waited over 50 ms and writes over 150 ms are refused, the rest
        // and every essential request served.
        assert!(!a.admit_queued(Via::Grpc, Class::Read, now - 51 * MS, now));
        assert!(a.admit_queued(Via::Grpc, Class::Read, now - 49 * MS, now));
        assert!(a.admit_queued(Via::Grpc, Class::Write, now - 2900 * MS, now));
        assert!(!a.admit_queued(Via::Grpc, Class::Write, now - 3100 * MS, now));
        assert!(a.admit_queued(Via::Grpc, Class::Essential, now - 900 * MS, now));
    }

    #[test]
    fn an_http_backlog_is_measured_apart_from_grpc() {
        let mut a = Admission::new(50 * MS, 7);
        let t0 = Instant::now();
        // Pipelined HTTP requests waiting 60-200 ms in their connections while gRPC requests
        // are served at once: HTTP has a standing queue, gRPC does not.
        for i in 0..20u64 {
            let now = t0 + MS * (5 * i as u32);
            let _ = a.admit_queued(Via::Http, Class::Read, now - MS * (60 + 7 * i as u32), now);
            assert!(a.admit_queued(Via::Grpc, Class::Read, now, now));
        }
        let now = t0 + 101 * MS;
        let _ = a.admit_queued(Via::Http, Class::Read, now - 70 * MS, now);
        assert!(a.admit_queued(Via::Grpc, Class::Read, now - 60 * MS, now));
        assert!(!a.admit_queued(Via::Http, Class::Read, now - 60 * MS, now));
        assert!(a.admit_queued(Via::Http, Class::Read, now - 10 * MS, now));
    }

    #[test]
    fn a_few_slow_grpc_requests_are_not_a_queue() {
        let mut a = Admission::new(50 * MS, 7);
        let t0 = Instant::now();
        // Four requests per window, each 300 ms late (a starved machine): never shed.
        for w in 0..10u32 {
            for i in 0..4u32 {
                let now = t0 + MS * (w * 100 + i);
                assert!(a.admit_queued(Via::Grpc, Class::Read, now - 300 * MS, now));
            }
        }
        assert!(!a.standing_queue());
    }

    #[test]
    fn a_zero_target_disables_shedding() {
        let mut a = Admission::new(Duration::ZERO, 7);
        for _ in 0..100 {
            a.on_tick(500 * MS, 510 * MS, 510 * MS);
        }
        assert_eq!(admitted(&mut a, Class::Read, 1000), 1000);
        let now = Instant::now();
        for _ in 0..100 {
            assert!(a.admit_queued(Via::Grpc, Class::Read, now - 500 * MS, now));
        }
    }

    #[test]
    fn thread_cpu_time_advances_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > before);
    }
}
