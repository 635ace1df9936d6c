//! Overload shedding: a saturated core answers some requests at once with Nacos's "over
//! threshold" error (gRPC code 503, HTTP 503) instead of queueing them, so that the requests it
//! does admit keep a bounded latency and its memory does not grow with the backlog.
//!
//! # The signal
//! A core's queue is its run queue: requests wait behind the tasks already ready on the core,
//! not in a queue of ours. The 10 ms housekeeping timer measures how late it fires (its *lag*):
//! that is how long a request that just arrived waits for its turn. Lag alone is not enough on
//! a shared machine: when the OS does not schedule the thread (a busy CI box), the timer is late
//! although the core has nothing queued, and shedding would only turn a slow answer into an
//! error. So the core is overloaded only when it is late **and** was busy: the thread's own CPU
//! time covered most of the interval.
//!
//! # The policy
//! Each class has a shed probability, raised in proportion to the lag while the core is
//! overloaded and lowered slowly once it is not (so it settles where admitted work fits the
//! core instead of flapping between all and nothing):
//! - [`Class::Read`] (queries, lists) is shed from `target` lag on;
//! - [`Class::Write`] (register, update, subscribe) from three times the target: a refused
//!   read is retried by the SDK on its next poll, a refused write costs the user more;
//! - [`Class::Essential`] (heartbeats, deregistrations, health checks, metrics) is never shed:
//!   refusing a heartbeat would expire a live instance, refusing a deregistration keeps a dead
//!   one, and both reduce work rather than add it.

use std::time::Duration;

/// What a request is, for shedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Never shed.
    Essential,
    /// Shed from three times the target lag.
    Write,
    /// Shed from the target lag.
    Read,
}

/// Fraction of an interval the thread must have run for its lag to count as its own backlog.
const BUSY_FRACTION: f64 = 0.7;
/// Writes are shed from this many times the target lag.
const WRITE_FACTOR: f64 = 3.0;
/// Highest shed probability: a trickle of every class still gets through, so clients see
/// progress and the probability has admitted work to measure against.
const MAX_SHED: f64 = 0.98;
/// Decrease per tick once the core is no longer overloaded (≈ 2.5 s from full shedding to
/// none at the 10 ms tick).
const RELIEF_PER_TICK: f64 = 0.004;

/// One core's admission state (single-threaded; lives in the core).
#[derive(Debug)]
pub struct Admission {
    target: Duration,
    shed_read: f64,
    shed_write: f64,
    rng: u64,
}

impl Admission {
    /// `target`: the lag from which reads are shed; zero disables shedding.
    pub fn new(target: Duration, seed: u64) -> Admission {
        Admission {
            target,
            shed_read: 0.0,
            shed_write: 0.0,
            rng: seed | 1,
        }
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
        self.shed_read = adjust(self.shed_read, busy_enough, pressure);
        self.shed_write = adjust(self.shed_write, busy_enough, pressure / WRITE_FACTOR);
    }

    /// Whether to serve a request of `class` now.
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
fn adjust(p: f64, busy: bool, pressure: f64) -> f64 {
    if busy && pressure >= 1.0 {
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
        // 200 ms late: writes too, up to the cap.
        for _ in 0..40 {
            a.on_tick(200 * MS, 210 * MS, 210 * MS);
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
    fn a_zero_target_disables_shedding() {
        let mut a = Admission::new(Duration::ZERO, 7);
        for _ in 0..100 {
            a.on_tick(500 * MS, 510 * MS, 510 * MS);
        }
        assert_eq!(admitted(&mut a, Class::Read, 1000), 1000);
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
