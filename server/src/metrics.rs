//! Counters and latency histograms, one set per core so recording is an uncontended relaxed
//! atomic add; `/metrics` sums the cores when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engine::shard::ShardStats;

use crate::cluster::ClusterInfo;

/// Kinds of requests we count and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Kind {
    /// gRPC register / deregister / batch.
    GrpcInstance,
    /// gRPC query.
    GrpcQuery,
    /// gRPC subscribe / unsubscribe.
    GrpcSubscribe,
    /// gRPC service list.
    GrpcServiceList,
    /// gRPC handshake and health checks.
    GrpcInternal,
    /// HTTP instance writes (register, deregister, update).
    HttpInstance,
    /// HTTP heartbeats.
    HttpBeat,
    /// HTTP instance list / detail.
    HttpQuery,
    /// Other HTTP requests.
    HttpOther,
}

const KINDS: [(&str, Kind); 9] = [
    ("grpc_instance", Kind::GrpcInstance),
    ("grpc_query", Kind::GrpcQuery),
    ("grpc_subscribe", Kind::GrpcSubscribe),
    ("grpc_service_list", Kind::GrpcServiceList),
    ("grpc_internal", Kind::GrpcInternal),
    ("http_instance", Kind::HttpInstance),
    ("http_beat", Kind::HttpBeat),
    ("http_query", Kind::HttpQuery),
    ("http_other", Kind::HttpOther),
];

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

#[derive(Default)]
struct Series {
    count: AtomicU64,
    errors: AtomicU64,
    sum_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

/// One core's counters.
#[derive(Default)]
pub struct CoreMetrics {
    series: [Series; KINDS.len()],
    /// Pushes sent to subscribers.
    pub pushes_sent: AtomicU64,
    /// Pushes acknowledged by subscribers.
    pub pushes_acked: AtomicU64,
    /// Pushes dropped because the subscriber's queue was full (the connection is closed).
    pub pushes_dropped: AtomicU64,
    /// gRPC connections open on this core.
    pub connections: AtomicU64,
    /// Connections closed by the server (idle, slow reader, bad input).
    pub connections_closed_by_server: AtomicU64,
    /// Requests refused because the core was overloaded.
    pub overloaded: AtomicU64,
    /// Reads shed by the admission control.
    pub shed_reads: AtomicU64,
    /// Writes shed by the admission control.
    pub shed_writes: AtomicU64,
    /// The health checker's counters, copied by the core after each of its steps.
    pub health: HealthGauges,
}

/// One core's health-check counters (see `engine::health::HealthStats`).
#[derive(Default)]
pub struct HealthGauges {
    /// Instances checked on this core.
    pub targets: AtomicU64,
    /// Results counted.
    pub checks: AtomicU64,
    /// Failed results (soft and immediate).
    pub failures: AtomicU64,
    /// Flips written (both ways).
    pub flips: AtomicU64,
    /// Sum of probe latencies (ms).
    pub latency_sum_ms: AtomicU64,
    /// Probes with a reported result.
    pub probes: AtomicU64,
}

impl HealthGauges {
    /// Copies a checker's counters.
    pub fn set(&self, stats: &engine::health::HealthStats, targets: usize) {
        let r = Ordering::Relaxed;
        self.targets.store(targets as u64, r);
        self.checks.store(stats.checks, r);
        self.failures.store(stats.failures + stats.failures_now, r);
        self.flips
            .store(stats.flips_healthy + stats.flips_unhealthy, r);
        self.latency_sum_ms.store(stats.latency_sum_ms, r);
        self.probes.store(stats.probes, r);
    }
}

impl CoreMetrics {
    /// Records one request.
    pub fn record(&self, kind: Kind, took: Duration, ok: bool) {
        let s = &self.series[kind as usize];
        s.count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = took.as_micros() as u64;
        s.sum_us.fetch_add(us, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The names of the request kinds, in [`request_totals`]'s order.
pub fn kind_names() -> impl Iterator<Item = &'static str> {
    KINDS.iter().map(|(name, _)| *name)
}

/// Per kind, in [`kind_names`]'s order: requests served and their summed latency (us), over
/// all cores (the console's metrics ring samples them).
pub fn request_totals(cores: &[Arc<CoreMetrics>]) -> Vec<(u64, u64)> {
    KINDS
        .iter()
        .map(|(_, kind)| {
            cores.iter().fold((0, 0), |(n, us), c| {
                let s = &c.series[*kind as usize];
                (
                    n + s.count.load(Ordering::Relaxed),
                    us + s.sum_us.load(Ordering::Relaxed),
                )
            })
        })
        .collect()
}

/// Writes the request series of all cores in Prometheus text format.
pub fn render_requests(out: &mut String, cores: &[Arc<CoreMetrics>]) {
    let sum = |f: &dyn Fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
    out.push_str("# HELP nacelle_requests_total Requests served, by kind.\n# TYPE nacelle_requests_total counter\n");
    for (name, kind) in KINDS {
        let n = sum(&|c| c.series[kind as usize].count.load(Ordering::Relaxed));
        let _ = writeln!(out, "nacelle_requests_total{{kind=\"{name}\"}} {n}");
    }
    out.push_str("# HELP nacelle_request_errors_total Requests answered with an error, by kind.\n# TYPE nacelle_request_errors_total counter\n");
    for (name, kind) in KINDS {
        let n = sum(&|c| c.series[kind as usize].errors.load(Ordering::Relaxed));
        let _ = writeln!(out, "nacelle_request_errors_total{{kind=\"{name}\"}} {n}");
    }
    out.push_str("# HELP nacelle_request_duration_seconds Request latency inside the server, by kind.\n# TYPE nacelle_request_duration_seconds histogram\n");
    for (name, kind) in KINDS {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += sum(&|c| c.series[kind as usize].buckets[i].load(Ordering::Relaxed));
            let _ = writeln!(out, "nacelle_request_duration_seconds_bucket{{kind=\"{name}\",le=\"{bound}\"}} {cumulative}");
        }
        let count = sum(&|c| c.series[kind as usize].count.load(Ordering::Relaxed));
        let sum_us = sum(&|c| c.series[kind as usize].sum_us.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "nacelle_request_duration_seconds_bucket{{kind=\"{name}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "nacelle_request_duration_seconds_sum{{kind=\"{name}\"}} {}",
            sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "nacelle_request_duration_seconds_count{{kind=\"{name}\"}} {count}"
        );
    }
    type Counter = fn(&CoreMetrics) -> &AtomicU64;
    let counters: [(&str, &str, Counter); 7] = [
        (
            "nacelle_pushes_sent_total",
            "Pushes sent to subscribers.",
            |c| &c.pushes_sent,
        ),
        (
            "nacelle_pushes_acked_total",
            "Pushes acknowledged by subscribers.",
            |c| &c.pushes_acked,
        ),
        (
            "nacelle_pushes_dropped_total",
            "Pushes dropped: the subscriber's send queue was full.",
            |c| &c.pushes_dropped,
        ),
        (
            "nacelle_connections_closed_by_server_total",
            "Connections closed by the server.",
            |c| &c.connections_closed_by_server,
        ),
        (
            "nacelle_overloaded_total",
            "Requests refused with 503 because a core's queues to other cores were full.",
            |c| &c.overloaded,
        ),
        (
            "nacelle_shed_reads_total",
            "Reads refused with 503 by overload shedding (a busy core running late).",
            |c| &c.shed_reads,
        ),
        (
            "nacelle_shed_writes_total",
            "Writes refused with 503 by overload shedding (a busy core running late).",
            |c| &c.shed_writes,
        ),
    ];
    for (name, help, get) in counters {
        let n = sum(&|c| get(c).load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}"
        );
    }
    let health: [(&str, &str, &str, Counter); 6] = [
        (
            "nacelle_health_checked_instances",
            "gauge",
            "Persistent instances health-checked by this node.",
            |c| &c.health.targets,
        ),
        (
            "nacelle_health_probes_total",
            "counter",
            "Health probes started.",
            |c| &c.health.probes,
        ),
        (
            "nacelle_health_checks_total",
            "counter",
            "Health-check results counted.",
            |c| &c.health.checks,
        ),
        (
            "nacelle_health_failures_total",
            "counter",
            "Failed health-check results.",
            |c| &c.health.failures,
        ),
        (
            "nacelle_health_flips_total",
            "counter",
            "Health flips of persistent instances (written through Raft).",
            |c| &c.health.flips,
        ),
        (
            "nacelle_health_probe_latency_ms_total",
            "counter",
            "Sum of health probe latencies (ms); divide by checks for the mean.",
            |c| &c.health.latency_sum_ms,
        ),
    ];
    for (name, kind, help, get) in health {
        let n = sum(&|c| get(c).load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {n}"
        );
    }
    let conns = sum(&|c| c.connections.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP nacelle_connections gRPC connections open.\n# TYPE nacelle_connections gauge\nnacelle_connections {conns}");
}

/// What [`render_cluster`] reads of the node: the cluster's counters and the shards'. The
/// cores' shared state implements it (`core::Shared`), so this module needs no core.
pub trait ClusterSource {
    /// The cluster, if this node is in one.
    fn cluster(&self) -> Option<&ClusterInfo>;
    /// Each core's shard counters, set once the core started.
    fn shard_stats(&self) -> &[OnceLock<Arc<ShardStats>>];
}

/// The shared state is held in an `Arc`: callers pass that.
impl<T: ClusterSource + ?Sized> ClusterSource for Arc<T> {
    fn cluster(&self) -> Option<&ClusterInfo> {
        (**self).cluster()
    }

    fn shard_stats(&self) -> &[OnceLock<Arc<ShardStats>>] {
        (**self).shard_stats()
    }
}

/// Writes the cluster series: Distro counters summed over the shards, peer traffic and
/// member health.
pub fn render_cluster(out: &mut String, shared: &impl ClusterSource, loaded: bool) {
    let Some(info) = shared.cluster() else {
        return;
    };
    let d = |f: fn(&engine::shard::DistroStats) -> u64| {
        shared
            .shard_stats()
            .iter()
            .filter_map(|s| s.get())
            .map(|s| f(&s.distro))
            .sum::<u64>()
    };
    type Distro = fn(&engine::shard::DistroStats) -> u64;
    let counters: [(&str, &str, Distro); 18] = [
        (
            "nacelle_distro_drops_after_pause_total",
            "Peers' deletions of this node's clients accepted after it found it had not run for a while.",
            |s| s.drops_after_pause.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_sync_batches_total",
            "Sync batches sent to peers.",
            |s| s.sync_batches.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_sync_items_total",
            "Client changes sent to peers.",
            |s| s.sync_items.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_sync_retries_total",
            "Sync batches not acknowledged in time and sent again.",
            |s| s.sync_retries.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_sync_spurious_retries_total",
            "Retried sync batches whose acknowledgement came after all (the peer was slow).",
            |s| s.sync_spurious_retries.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_sync_instances_total",
            "Instances sent to peers in sync batches.",
            |s| s.sync_instances.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_resyncs_underway_total",
            "Resyncs asked by peers and not resent: a change of the client was already on its way.",
            |s| s.resyncs_underway.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_applied_total",
            "Changes from peers applied.",
            |s| s.applied.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_stale_total",
            "Changes from peers ignored as older than what is held.",
            |s| s.stale.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_verify_sent_total",
            "Verify digests sent.",
            |s| s.verify_sent.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_verify_matched_total",
            "Verify digests received that matched.",
            |s| s.verify_matched.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_verify_differed_total",
            "Verify digests received that differed.",
            |s| s.verify_differed.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_resyncs_total",
            "Clients peers asked to be sent again.",
            |s| s.resyncs.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_replicas_expired_total",
            "Copies removed because their owner stopped confirming them.",
            |s| s.replicas_expired.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_claims_followed_total",
            "Heartbeat clients kept by following another node's claim when the owner in this node's view expired them (member views disagreed).",
            |s| s.claims_followed.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_beats_relayed_to_claimants_total",
            "Beats also relayed to a node that claims their HTTP client against this node's view (member views disagreed).",
            |s| s.beats_relayed_to_claimants.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_snapshot_sent_total",
            "Clients sent in snapshots.",
            |s| s.snapshot_sent.load(Ordering::Relaxed),
        ),
        (
            "nacelle_distro_snapshot_received_total",
            "Clients received in snapshots.",
            |s| s.snapshot_received.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            d(get)
        );
    }
    let st = &info.stats;
    let peer: [(&str, &str, &AtomicU64); 12] = [
        (
            "nacelle_peer_forward_detours_total",
            "HTTP writes routed through another member because the responsible node was SUSPICIOUS.",
            &st.detours,
        ),
        (
            "nacelle_peer_forward_fallbacks_total",
            "Forwarded writes applied locally because the responsible node did not answer in time.",
            &st.forward_fallbacks,
        ),
        (
            "nacelle_peer_deferred_deregistrations_total",
            "HTTP deregistrations that waited for a SUSPICIOUS responsible node before being routed.",
            &st.deferred_deregistrations,
        ),
        (
            "nacelle_peer_frames_sent_total",
            "Frames queued to peers.",
            &st.frames_sent,
        ),
        (
            "nacelle_peer_bytes_sent_total",
            "Bytes of frames queued to peers.",
            &st.bytes_sent,
        ),
        (
            "nacelle_peer_frames_received_total",
            "Frames received from peers.",
            &st.frames_received,
        ),
        (
            "nacelle_peer_bytes_received_total",
            "Bytes of frames received from peers.",
            &st.bytes_received,
        ),
        (
            "nacelle_peer_frames_dropped_total",
            "Frames not queued (peer down or its queue full).",
            &st.frames_dropped,
        ),
        (
            "nacelle_peer_frames_refused_total",
            "Frames refused as malformed or from unknown addresses.",
            &st.frames_refused,
        ),
        (
            "nacelle_peer_forwards_total",
            "HTTP writes forwarded to the responsible node.",
            &st.forwards,
        ),
        (
            "nacelle_distro_digest_bytes_total",
            "Bytes of verify digests sent.",
            &st.digest_bytes,
        ),
        (
            "nacelle_peer_reconnects_total",
            "Connections to a member replaced because its reports showed it did not hear us.",
            &st.reconnects,
        ),
    ];
    for (name, help, v) in peer {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP nacelle_member_vouched Peers unreachable from this node that another member still reaches (kept SUSPICIOUS).\n# TYPE nacelle_member_vouched gauge\nnacelle_member_vouched {}",
        st.vouched.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP nacelle_up 1 once the startup snapshot is loaded.\n# TYPE nacelle_up gauge\nnacelle_up {}", u8::from(loaded));
    out.push_str("# HELP nacelle_member_health Health of each peer as this node sees it (0 up, 1 suspicious, 2 down).\n# TYPE nacelle_member_health gauge\n");
    if let Ok(h) = st.health.lock() {
        for (node, code) in h.iter() {
            let _ = writeln!(out, "nacelle_member_health{{member=\"{node}\"}} {code}");
        }
    }
}

/// The Raft node's state: role, term, leader, commit and applied index, log size, last
/// snapshot, per-peer replication lag (on the leader), records in the store.
pub fn render_raft(out: &mut String, m: &raft::Metrics) {
    let role = match m.role {
        raft::Role::Leader => 0,
        raft::Role::Follower => 1,
        raft::Role::Candidate => 2,
        raft::Role::Learner => 3,
        raft::Role::Shutdown => 4,
    };
    let opt = |v: Option<u64>| v.map_or(-1, |v| v as i64);
    let gauges: [(&str, &str, i64); 12] = [
        (
            "nacelle_raft_voters",
            "Voters of the Raft membership this node knows.",
            m.voters.len() as i64,
        ),
        (
            "nacelle_raft_learners",
            "Learners (catching up, not voting yet) of the Raft membership this node knows.",
            m.learners.len() as i64,
        ),
        (
            "nacelle_raft_role",
            "This node's Raft role (0 leader, 1 follower, 2 candidate, 3 learner, 4 shut down).",
            role,
        ),
        ("nacelle_raft_term", "Current Raft term.", m.term as i64),
        (
            "nacelle_raft_leader",
            "Raft id of the leader this node knows (-1: none).",
            opt(m.leader),
        ),
        (
            "nacelle_raft_committed_index",
            "Highest committed log index known here (-1: none).",
            opt(m.committed),
        ),
        (
            "nacelle_raft_applied_index",
            "Highest log index applied to the store here (-1: none).",
            opt(m.applied),
        ),
        (
            "nacelle_raft_log_entries",
            "Entries held in the Raft log (behind the last snapshot they are purged).",
            m.log_entries as i64,
        ),
        (
            "nacelle_raft_snapshot_index",
            "Last log index covered by the current snapshot (-1: none).",
            opt(m.snapshot),
        ),
        (
            "nacelle_raft_records",
            "Records in the CP store (persistent instances, definitions).",
            m.records as i64,
        ),
        (
            "nacelle_raft_fsyncs_total",
            "fsyncs of the Raft log.",
            m.fsyncs as i64,
        ),
        (
            "nacelle_raft_snapshots_built_total",
            "Snapshots built.",
            m.snapshots_built as i64,
        ),
    ];
    for (name, help, v) in gauges {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    out.push_str("# HELP nacelle_raft_replication_lag Entries a peer is behind the leader's log (on the leader).\n# TYPE nacelle_raft_replication_lag gauge\n");
    for (peer, lag) in &m.replication_lag {
        let _ = writeln!(out, "nacelle_raft_replication_lag{{peer=\"{peer}\"}} {lag}");
    }
}
