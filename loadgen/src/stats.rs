//! Latency recorders, error kinds, pacing, progress bars and the report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// No answer within the timeout.
    Timeout,
    /// gRPC status (transport or protocol failure), by code name.
    Grpc(String),
    /// A Nacos error response, by `errorCode` (or `resultCode` when there is none).
    Nacos(i32),
    /// An HTTP status other than 2xx.
    Http(u16),
    /// Connection-level I/O failure, by `io::ErrorKind`.
    Io(String),
    /// The answer could not be understood.
    Decode,
    /// The connection is closed or was never established.
    NotConnected,
    /// Dropped by the generator because too many requests were in flight.
    Dropped,
}

impl OpError {
    /// Short stable name used as the key in `errors_by_kind`.
    pub fn kind(&self) -> String {
        match self {
            OpError::Timeout => "timeout".into(),
            OpError::Grpc(c) => format!("grpc:{c}"),
            OpError::Nacos(c) => format!("nacos:{c}"),
            OpError::Http(s) => format!("http:{s}"),
            OpError::Io(k) => format!("io:{k}"),
            OpError::Decode => "decode".into(),
            OpError::NotConnected => "not-connected".into(),
            OpError::Dropped => "overload-dropped".into(),
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind())
    }
}

/// Microseconds since the UNIX epoch, monotonic within the process (epoch read once at
/// start, then advanced by a monotonic clock) so that differences never go negative.
pub fn now_us() -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let (at, epoch) = BASE.get_or_init(|| {
        let e = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        (Instant::now(), e)
    });
    epoch + at.elapsed().as_micros() as u64
}

/// Successful operations with their latency histogram, and failures by kind.
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    /// Failures by [`OpError::kind`].
    pub errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder for 1 µs .. 1 h at 3 significant digits.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .or_else(|_| Histogram::new(3))
            .expect("3 significant digits is a valid histogram precision");
        Recorder {
            hist,
            errors: BTreeMap::new(),
        }
    }

    /// Records one success.
    pub fn ok(&mut self, latency: Duration) {
        self.ok_us(latency.as_micros() as u64);
    }

    /// Records one success in µs.
    pub fn ok_us(&mut self, us: u64) {
        self.hist.saturating_record(us.max(1));
    }

    /// Records one failure.
    pub fn err(&mut self, e: &OpError) {
        *self.errors.entry(e.kind()).or_insert(0) += 1;
    }

    /// Records a result.
    pub fn record<T>(&mut self, r: &Result<T, OpError>, latency: Duration) {
        match r {
            Ok(_) => self.ok(latency),
            Err(e) => self.err(e),
        }
    }

    /// Successes.
    pub fn oks(&self) -> u64 {
        self.hist.len()
    }

    /// Failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other` into this recorder.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.hist.add(&other.hist);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// `{"p50","p90","p99","p999","max","mean","count"}` in µs.
    pub fn latency_json(&self) -> Value {
        let h = &self.hist;
        if h.is_empty() {
            return json!({"p50":0,"p90":0,"p99":0,"p999":0,"max":0,"mean":0.0,"count":0});
        }
        json!({
            "p50": h.value_at_quantile(0.50),
            "p90": h.value_at_quantile(0.90),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
            "mean": (h.mean() * 10.0).round() / 10.0,
            "count": h.len(),
        })
    }

    /// One human line: `p50 .. max` in ms.
    pub fn latency_line(&self) -> String {
        let h = &self.hist;
        if h.is_empty() {
            return "no samples".into();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (n={})",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            h.len()
        )
    }
}

/// A recorder shared by tasks.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<Recorder>>);

impl Shared {
    /// A new empty shared recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks it (a poisoned lock still gives the data: recorders stay consistent).
    pub fn lock(&self) -> MutexGuard<'_, Recorder> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> Recorder {
        self.lock().clone()
    }
}

/// Hands out send times at a fixed rate (`None` = as soon as asked).
#[derive(Debug)]
pub struct Pacer {
    start: tokio::time::Instant,
    interval_ns: Option<f64>,
    next: AtomicU64,
}

impl Pacer {
    /// Starts now at `rate` per second.
    pub fn new(rate: Option<f64>) -> Self {
        Pacer {
            start: tokio::time::Instant::now(),
            interval_ns: rate.filter(|r| *r > 0.0).map(|r| 1e9 / r),
            next: AtomicU64::new(0),
        }
    }

    /// The intended send time of ticket `i`.
    pub fn at(&self, i: u64) -> tokio::time::Instant {
        match self.interval_ns {
            Some(iv) => self.start + Duration::from_nanos((iv * i as f64) as u64),
            None => tokio::time::Instant::now(),
        }
    }

    /// Takes the next ticket and waits for its time; returns the intended send time.
    pub async fn wait(&self) -> tokio::time::Instant {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let t = self.at(i);
        tokio::time::sleep_until(t).await;
        t
    }
}

/// A progress bar of `len` steps (hidden when asked to or when stderr is not a terminal).
pub fn bar(len: u64, what: &str, hidden: bool) -> ProgressBar {
    let pb = if hidden {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(len)
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>12} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style);
    }
    pb.set_message(what.to_owned());
    pb
}

/// The result of a scenario.
#[derive(Debug)]
pub struct Report {
    /// Scenario name.
    pub scenario: &'static str,
    /// The measured operations.
    pub main: Recorder,
    /// What an "op" is in this scenario.
    pub op_name: &'static str,
    /// Length of the measured phase.
    pub duration: Duration,
    /// Scenario-specific extras (histograms as `latency_json`, counters, config).
    pub extras: Map<String, Value>,
    /// Extra lines for the human summary.
    pub notes: Vec<String>,
}

impl Report {
    /// A report of `main` over `duration`.
    pub fn new(
        scenario: &'static str,
        op_name: &'static str,
        main: Recorder,
        duration: Duration,
    ) -> Self {
        Report {
            scenario,
            main,
            op_name,
            duration,
            extras: Map::new(),
            notes: Vec::new(),
        }
    }

    /// Adds an extra JSON field.
    pub fn extra(&mut self, key: &str, v: Value) {
        self.extras.insert(key.to_owned(), v);
    }

    /// Adds a named latency histogram (JSON and human line).
    pub fn extra_latency(&mut self, key: &str, label: &str, r: &Recorder) {
        self.extras.insert(key.to_owned(), r.latency_json());
        if r.error_count() > 0 {
            self.extras.insert(
                format!("{key}_errors"),
                serde_json::to_value(&r.errors).unwrap_or(Value::Null),
            );
        }
        self.notes
            .push(format!("{label:<18} {}{}", r.latency_line(), err_suffix(r)));
    }

    fn ops_per_s(&self) -> f64 {
        let s = self.duration.as_secs_f64();
        if s > 0.0 {
            self.main.oks() as f64 / s
        } else {
            0.0
        }
    }

    /// The JSON report.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("scenario".into(), json!(self.scenario));
        m.insert("op".into(), json!(self.op_name));
        m.insert("ops".into(), json!(self.main.oks()));
        m.insert("errors".into(), json!(self.main.error_count()));
        m.insert(
            "errors_by_kind".into(),
            serde_json::to_value(&self.main.errors).unwrap_or(Value::Null),
        );
        m.insert(
            "duration_s".into(),
            json!((self.duration.as_secs_f64() * 1000.0).round() / 1000.0),
        );
        m.insert(
            "ops_per_s".into(),
            json!((self.ops_per_s() * 10.0).round() / 10.0),
        );
        m.insert("latency_us".into(), self.main.latency_json());
        for (k, v) in &self.extras {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(m)
    }

    /// Prints the human summary on stdout.
    pub fn print_human(&self) {
        println!();
        println!("== loadgen {} ==", self.scenario);
        println!(
            "{:<18} {} ok, {} errors in {:.2} s = {:.1}/s",
            format!("ops ({})", self.op_name),
            self.main.oks(),
            self.main.error_count(),
            self.duration.as_secs_f64(),
            self.ops_per_s()
        );
        println!("{:<18} {}", "latency", self.main.latency_line());
        if !self.main.errors.is_empty() {
            let list: Vec<String> = self
                .main
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("{:<18} {}", "errors", list.join(" "));
        }
        for n in &self.notes {
            println!("{n}");
        }
    }
}

fn err_suffix(r: &Recorder) -> String {
    if r.errors.is_empty() {
        return String::new();
    }
    let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("  errors: {}", list.join(" "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn report_json_has_the_documented_shape() {
        let mut r = Recorder::new();
        for us in 1..=1000u64 {
            r.ok_us(us);
        }
        r.err(&OpError::Nacos(301));
        r.err(&OpError::Timeout);
        r.err(&OpError::Timeout);
        let mut rep = Report::new("register", "request", r.clone(), Duration::from_secs(2));
        rep.extra_latency("connect_latency_us", "connect", &r);
        rep.extra("instances", json!(1000));
        let v = rep.to_json();
        for k in [
            "scenario",
            "ops",
            "errors",
            "duration_s",
            "ops_per_s",
            "latency_us",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["scenario"], "register");
        assert_eq!(v["ops"], 1000);
        assert_eq!(v["errors"], 3);
        assert_eq!(v["errors_by_kind"]["timeout"], 2);
        assert_eq!(v["errors_by_kind"]["nacos:301"], 1);
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["ops_per_s"], 500.0);
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][k].is_u64(), "latency_us.{k}");
        }
        let p50 = v["latency_us"]["p50"].as_u64().unwrap();
        assert!((495..=505).contains(&p50), "{p50}");
        assert_eq!(v["latency_us"]["max"].as_u64().unwrap(), 1000);
        assert_eq!(v["instances"], 1000);
        assert_eq!(v["connect_latency_us"]["count"], 1000);
        assert_eq!(v["connect_latency_us_errors"]["timeout"], 2);
    }

    #[test]
    fn empty_recorders_report_zeros() {
        let v = Report::new("query", "query", Recorder::new(), Duration::ZERO).to_json();
        assert_eq!(v["ops"], 0);
        assert_eq!(v["ops_per_s"], 0.0);
        assert_eq!(v["latency_us"]["p99"], 0);
    }

    #[test]
    fn merge_adds_samples_and_errors() {
        let mut a = Recorder::new();
        a.ok_us(10);
        a.err(&OpError::Http(503));
        let mut b = Recorder::new();
        b.ok_us(20);
        b.err(&OpError::Http(503));
        a.merge(&b);
        assert_eq!(a.oks(), 2);
        assert_eq!(a.errors["http:503"], 2);
    }

    #[tokio::test]
    async fn pacer_spaces_tickets() {
        let p = Pacer::new(Some(1000.0));
        assert_eq!(p.at(1000) - p.at(0), Duration::from_secs(1));
        let t0 = p.wait().await;
        let t1 = p.wait().await;
        assert_eq!(t1 - t0, Duration::from_millis(1));
    }

    #[test]
    fn now_us_is_monotonic_and_epoch_based() {
        let a = now_us();
        let b = now_us();
        assert!(b >= a);
        assert!(a > 1_600_000_000_000_000);
    }
}
