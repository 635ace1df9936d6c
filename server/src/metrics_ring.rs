//! The console's live charts: a small ring of the server's own metrics, sampled once a
//! second by every core for itself (shared-nothing: no lock, no cross-core message; the
//! counters it reads are the relaxed atomics `/metrics` sums), answered by
//! `GET /nacos/v1/console/metrics/history` from the ring of the core that took the request.
//!
//! A sample holds totals; the answer turns consecutive samples into rates (requests/s by
//! kind, pushes/s) and mean latencies over each second. The ring keeps [`SAMPLES`] samples
//! (10 minutes), a few hundred bytes each.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::core::{unix_ms, with_core};

/// Samples kept: 10 minutes at one a second.
pub const SAMPLES: usize = 600;
/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Totals at one moment.
#[derive(Clone, Default)]
pub struct Sample {
    /// Wall-clock time (unix ms).
    pub t_ms: u64,
    /// Registered instances.
    pub instances: i64,
    /// Services.
    pub services: i64,
    /// Subscriptions.
    pub subscriptions: i64,
    /// Per request kind: requests served and their summed latency (us).
    pub requests: Vec<(u64, u64)>,
    /// Pushes sent and acknowledged.
    pub pushes: (u64, u64),
    /// Largest Raft replication lag (entries; on the leader), and the applied index.
    pub raft: (u64, u64),
}

/// A bounded ring of samples.
#[derive(Default)]
pub struct Ring {
    samples: VecDeque<Sample>,
}

impl Ring {
    /// Adds `s`, dropping the oldest past [`SAMPLES`].
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The JSON answer: `{intervalMs, kinds, samples:[{t, instances, services, subscriptions,
    /// requestsPerSec:{kind:n}, latencyMs:{kind:mean}, pushesPerSec, pushAcksPerSec,
    /// replicationLag, raftApplied}]}`, oldest first; the last `last` samples only.
    pub fn json(&self, kinds: &[&str], last: usize) -> String {
        let mut out = String::with_capacity(256 + self.samples.len().min(last) * 400);
        let _ = write!(out, "{{\"intervalMs\":{},\"kinds\":[", INTERVAL.as_millis());
        for (i, k) in kinds.iter().enumerate() {
            let _ = write!(out, "{}\"{k}\"", if i > 0 { "," } else { "" });
        }
        out.push_str("],\"samples\":[");
        let skip = self.samples.len().saturating_sub(last.saturating_add(1));
        let mut prev: Option<&Sample> = None;
        let mut first = true;
        for s in self.samples.iter().skip(skip) {
            let Some(p) = prev.replace(s) else {
                continue;
            };
            let secs = (s.t_ms.saturating_sub(p.t_ms) as f64 / 1000.0).max(0.001);
            let _ = write!(
                out,
                "{}{{\"t\":{},\"instances\":{},\"services\":{},\"subscriptions\":{},\"requestsPerSec\":{{",
                if first { "" } else { "," },
                s.t_ms,
                s.instances,
                s.services,
                s.subscriptions
            );
            first = false;
            let pairs = || kinds.iter().zip(s.requests.iter().zip(&p.requests));
            for (i, (k, ((n, _), (pn, _)))) in pairs().enumerate() {
                let rate = n.saturating_sub(*pn) as f64 / secs;
                let _ = write!(out, "{}\"{k}\":{rate:.1}", if i > 0 { "," } else { "" });
            }
            out.push_str("},\"latencyMs\":{");
            for (i, (k, ((n, us), (pn, pus)))) in pairs().enumerate() {
                let dn = n.saturating_sub(*pn);
                let mean = if dn == 0 {
                    0.0
                } else {
                    us.saturating_sub(*pus) as f64 / dn as f64 / 1000.0
                };
                let _ = write!(out, "{}\"{k}\":{mean:.3}", if i > 0 { "," } else { "" });
            }
            let _ = write!(
                out,
                "}},\"pushesPerSec\":{:.1},\"pushAcksPerSec\":{:.1},\"replicationLag\":{},\"raftApplied\":{}}}",
                s.pushes.0.saturating_sub(p.pushes.0) as f64 / secs,
                s.pushes.1.saturating_sub(p.pushes.1) as f64 / secs,
                s.raft.0,
                s.raft.1
            );
        }
        out.push_str("]}");
        out
    }
}

thread_local! {
    static RING: RefCell<Ring> = RefCell::new(Ring::default());
}

/// This core's sampler: runs for the process's life.
pub async fn sample_loop() {
    loop {
        let s = with_core(|c| {
            let sh = &c.shared;
            let r = Ordering::Relaxed;
            let m = sh.cp.raft().metrics();
            Sample {
                t_ms: unix_ms(),
                instances: sh.stat(|x| x.instances.load(r)),
                services: sh.stat(|x| x.services.load(r)),
                subscriptions: sh.stat(|x| x.subscriptions.load(r)),
                requests: crate::metrics::request_totals(&sh.metrics),
                pushes: (
                    sh.metrics.iter().map(|m| m.pushes_sent.load(r)).sum(),
                    sh.metrics.iter().map(|m| m.pushes_acked.load(r)).sum(),
                ),
                raft: (
                    m.replication_lag.values().copied().max().unwrap_or(0),
                    m.applied.unwrap_or(0),
                ),
            }
        });
        RING.with(|ring| ring.borrow_mut().push(s));
        glommio::timer::sleep(INTERVAL).await;
    }
}

/// This core's ring as JSON (see [`Ring::json`]).
pub fn history_json(last: usize) -> String {
    let kinds: Vec<&str> = crate::metrics::kind_names().collect();
    RING.with(|ring| ring.borrow().json(&kinds, last))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(t_ms: u64, n: u64) -> Sample {
        Sample {
            t_ms,
            instances: n as i64,
            requests: vec![(n * 10, n * 10_000)],
            pushes: (n, n),
            ..Sample::default()
        }
    }

    #[test]
    fn rates_come_from_consecutive_samples_and_the_ring_is_bounded() {
        let mut ring = Ring::default();
        for i in 0..(SAMPLES as u64 + 50) {
            ring.push(sample(i * 1000, i * i));
        }
        assert_eq!(ring.samples.len(), SAMPLES);
        let v: serde_json::Value = serde_json::from_str(&ring.json(&["k"], 2)).unwrap();
        let samples = v["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 2);
        let last = SAMPLES as u64 + 49;
        // (last² − (last−1)²) · 10 requests over one second.
        let want = ((last * last - (last - 1) * (last - 1)) * 10) as f64;
        assert_eq!(samples[1]["requestsPerSec"]["k"].as_f64().unwrap(), want);
        // 1,000 us per request.
        assert_eq!(samples[1]["latencyMs"]["k"].as_f64().unwrap(), 1.0);
        assert_eq!(
            samples[1]["instances"].as_i64().unwrap(),
            (last * last) as i64
        );
    }
}
