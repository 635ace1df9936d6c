//! A per-source token bucket for password checks (logins, and `username`+`password` requests
//! whose pair is not yet known good): each source address may try `burst` times at once, then
//! `per_minute` times a minute. The table is bounded: when it is full, sources whose bucket
//! has refilled (as good as absent) are dropped, then the longest idle ones.
//!
//! Time is an argument (milliseconds on any monotonic clock).

use std::collections::HashMap;
use std::net::IpAddr;

/// The limiter's settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Attempts a fresh source may make at once.
    pub burst: u32,
    /// Attempts regained per minute.
    pub per_minute: u32,
    /// Most sources tracked.
    pub max_sources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            burst: 10,
            per_minute: 30,
            max_sources: 4096,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Attempts left, in thousandths (refill is fractional).
    milli_tokens: u64,
    /// When it was last refilled (ms).
    at_ms: u64,
}

/// The per-source buckets.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: Limits,
    buckets: HashMap<IpAddr, Bucket>,
}

impl LoginLimiter {
    /// An empty table.
    pub fn new(limits: Limits) -> LoginLimiter {
        LoginLimiter {
            limits,
            buckets: HashMap::new(),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.limits.burst) * 1000
    }

    fn refilled(&self, b: Bucket, now_ms: u64) -> u64 {
        let gained = now_ms.saturating_sub(b.at_ms) * u64::from(self.limits.per_minute) / 60;
        (b.milli_tokens + gained).min(self.full())
    }

    /// Takes one attempt for `source` at `now_ms`; false when it has none left.
    pub fn try_acquire(&mut self, source: IpAddr, now_ms: u64) -> bool {
        if self.limits.burst == 0 {
            return false;
        }
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.limits.max_sources {
            self.make_room(now_ms);
        }
        let full = self.full();
        let current = match self.buckets.get(&source) {
            Some(b) => self.refilled(*b, now_ms),
            None => full,
        };
        let ok = current >= 1000;
        let left = if ok { current - 1000 } else { current };
        self.buckets.insert(
            source,
            Bucket {
                milli_tokens: left,
                at_ms: now_ms,
            },
        );
        ok
    }

    /// Drops sources whose bucket is full again; if none, the longest idle tenth.
    fn make_room(&mut self, now_ms: u64) {
        let full = self.full();
        let before = self.buckets.len();
        let this = &*self;
        let keep: HashMap<IpAddr, Bucket> = this
            .buckets
            .iter()
            .filter(|(_, b)| this.refilled(**b, now_ms) < full)
            .map(|(k, v)| (*k, *v))
            .collect();
        self.buckets = keep;
        if self.buckets.len() < before {
            return;
        }
        let mut ages: Vec<(u64, IpAddr)> =
            self.buckets.iter().map(|(k, b)| (b.at_ms, *k)).collect();
        ages.sort_unstable();
        for (_, k) in ages.iter().take((ages.len() / 10).max(1)) {
            self.buckets.remove(k);
        }
    }

    /// Sources tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}
