//! The command line: `loadgen <scenario> [flags]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::layout::{parse_target, Target};

/// Nacos 2.x load generator for Nacelle, r-nacos and Nacos.
///
/// Speaks the real client protocol: gRPC (ServerCheck, bi-stream ConnectionSetup, answers to
/// pushes and client detection, idle health checks) and the HTTP v1 OpenAPI. Latencies are
/// HDR histograms in microseconds; open-loop scenarios measure from the intended send time.
/// Each scenario prints a summary and can write a JSON report (--report FILE.json).
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about, long_about, after_help = EXAMPLES)]
pub struct Cli {
    /// Tokio worker threads [default: one per CPU].
    #[arg(long, global = true, env = "LOADGEN_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

const EXAMPLES: &str = "Examples:
  loadgen register --targets 127.0.0.1:8848 --instances 500000 --connections 1000 --services 5000 --report r.json
  loadgen register --instances 100000 --connections 100 --services 100 --batch 10 --hold -1
  loadgen register --mode http --instances 20000 --connections 32 --http-beat --hold 60
  loadgen query --rate 5000 --duration 30 --services 100 --prepare --instances-per-service 20
  loadgen subscribe --services 10 --subscribers 5 --rate 100 --duration 10
  loadgen churn --rate 500 --duration 60 --mix 45,45,10
  taskset -c 1 loadgen --threads 1 flood --rate 60000 --duration 15 --services 100 --prepare --instances-per-service 1
  taskset -c 1 loadgen --threads 1 flood --protocol http --rate 20000 --duration 15 --prepare
  loadgen converge --targets 10.0.0.1:8848,10.0.0.2:8848,10.0.0.3:8848

Run `loadgen <scenario> --help` for every flag of a scenario.";

/// The scenarios.
#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// Register --instances instances over --services services and --connections
    /// connections, as fast as possible or at --rate requests/s, then optionally --hold them.
    ///
    /// gRPC: a connection holds one publish per service (Nacos semantics), so instances are
    /// planned as (service, connection) publishes: each service's instances are cut into equal
    /// chunks of at most --batch (1 = InstanceRequest, >1 = BatchInstanceRequest) and all chunks, in
    /// service order, are dealt round-robin over the connections, so a service's chunks go to
    /// distinct connections and loads are even. This needs
    /// ceil(instances/services/batch) <= connections; the total is exact.
    ///
    /// HTTP (--mode http): POST /nacos/v1/ns/instance over keep-alive HTTP/1.1. HTTP
    /// instances are heartbeat clients: without --http-beat they turn unhealthy after 15 s and
    /// are deleted after 30 s (Nacos defaults), so use --http-beat with --hold.
    Register(RegisterArgs),
    /// Open-loop queries at a fixed --rate for --duration seconds (ServiceQueryRequest over
    /// gRPC or GET /nacos/v1/ns/instance/list over HTTP) across --services services.
    ///
    /// Latency is measured from the intended send time (no coordinated omission); the report
    /// also gives the latency from the actual send (`service_latency_us`) and the dispatcher's
    /// lag behind schedule (`send_lag_us`, which includes tokio's 1 ms timer granularity). With
    /// --prepare, --instances-per-service instances are first registered in each service
    /// (over gRPC, one batch per service) and kept alive during the run.
    Query(QueryArgs),
    /// Page through the service list (gRPC `ServiceListRequest` of --page-size, one page at a
    /// time on one connection, as a console or `getServicesOfServer` does) to the end or for
    /// --pages pages; reports each page's latency and checks every name arrives once.
    List(ListArgs),
    /// --subscribers subscribers per service, then a writer changes one instance per service
    /// at --rate changes/s; push latency = arrival of the NotifySubscriberRequest that
    /// contains a change minus the change's send time.
    ///
    /// Each change registers a fresh ip:port on the writer connection (replacing its previous
    /// publish in that service) with metadata lgts=<send time, µs since the epoch>. A
    /// subscriber counts a change when it first sees a newer lgts in a push; changes
    /// superseded before a push (the server merges changes for a while) are reported as
    /// coalesced.
    Subscribe(SubscribeArgs),
    /// A steady open-loop mix of register, deregister and connection drop + reconnect
    /// (--mix weights) at --rate ops/s for --duration seconds over --connections connections.
    ///
    /// A reconnect closes the connection (the server drops its instances) and opens a new one,
    /// re-registering what it had like an SDK does (unless --no-reregister).
    Churn(ChurnArgs),
    /// Convergence: write through the first target, subscribe through the others; reports
    /// the distribution of the visibility delay per target (cluster replication + push).
    ///
    /// Same flags and mechanics as `subscribe`; needs at least two --targets (a server may be
    /// listed twice to measure the single-node path).
    Converge(SubscribeArgs),
    /// Overload test: open-loop queries at --rate/s like `query` (gRPC ServiceQueryRequest, or
    /// GET /nacos/v1/ns/instance/list with --protocol http), through a cheap client so that one
    /// generator core can offer more than one server core answers.
    ///
    /// gRPC (default): each service's request is encoded once (gRPC frame of the Nacos Payload
    /// with its JSON body) and sent as is on a new HTTP/2 stream (the `h2` crate, no tonic, no
    /// per-request protobuf or JSON). The answer is classified from the gRPC status, the
    /// Payload's metadata.type and, for an ErrorResponse, its errorCode: "over threshold" (the
    /// server shedding load) is `nacos:503` in errors_by_kind, also given as
    /// `shed`/`shed_per_s`. Connections do the SDK handshake (ServerCheck, bi-stream
    /// ConnectionSetup) first.
    ///
    /// HTTP (--protocol http): each service's request, `GET /nacos/v1/ns/instance/list` with
    /// serviceName, namespaceId and groupName, is encoded once and written on --connections
    /// keep-alive HTTP/1.1 connections to the targets' HTTP port, pipelined: answers come back
    /// in order; --max-inflight bounds the requests waiting over all connections, --pipeline
    /// those written on one connection (the others wait in the generator, which counts in
    /// their latency). With pipelining the server's backlog is in its sockets. The answer is
    /// classified by its status alone: 2xx answered, 503 ("over threshold") is `http:503` in
    /// errors_by_kind and is counted as `shed`, any other status is `http:<status>`. A
    /// connection the server closes is reopened (`connections_lost` counts the losses); the
    /// requests waiting on it fail. `shed_kind` in the report names the error kind counted as
    /// shed.
    ///
    /// --prepare registers the instances over gRPC in both modes.
    ///
    /// Latency (latency_us) is of the answered requests only, from the intended send time (no
    /// coordinated omission); one dispatcher per tokio worker issues every request that is due
    /// each time it wakes (tokio's timer: about 1 ms), so send_lag_us shows whether the
    /// generator kept up. `loadgen_cpu_s` is the generator's own CPU time; `timeline` gives
    /// answered, shed and latency per second of the run. Fastest with one pinned thread:
    /// `taskset -c 1 loadgen --threads 1 flood ...`.
    Flood(FloodArgs),
    /// Persistent (`ephemeral=false`) registrations over HTTP v1 on 127.0.0.0/8 addresses
    /// (the server health-checks them), closed loop or at --rate, one request in flight per
    /// connection or --pipeline K; or --verify FILE: count which acknowledged instances
    /// (from an earlier run's --acked-file) the server lists.
    ///
    /// Instance i is ip_base + i / ports : port_base + i % ports, in service i % services.
    /// The report has `acked`, the latency (from the intended send time at --rate) and a
    /// `timeline` of answers per --timeline-ms with its start in ms since the epoch.
    Persist(PersistArgs),
    /// TCP listeners on every address of a `persist` plan (--ips x --ports from --ip-base,
    /// 127.0.0.0/8 only) that accept and close, for the servers' health checks.
    Listen(ListenArgs),
}

impl Scenario {
    /// Flags shared by every scenario.
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Register(a) => &a.common,
            Scenario::Query(a) => &a.common,
            Scenario::List(a) => &a.common,
            Scenario::Subscribe(a) | Scenario::Converge(a) => &a.common,
            Scenario::Churn(a) => &a.common,
            Scenario::Flood(a) => &a.common,
            Scenario::Persist(a) => &a.common,
            Scenario::Listen(a) => &a.common,
        }
    }
}

/// Transport used for the measured operations.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nacos 2.x gRPC (port = HTTP port + --grpc-port-offset).
    Grpc,
    /// Nacos HTTP v1 OpenAPI (/nacos/v1/ns/...).
    Http,
}

/// Flags shared by every scenario.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Servers as host:httpPort, comma separated; connections are spread round-robin.
    #[arg(long, env = "LOADGEN_TARGETS", value_delimiter = ',', value_parser = parse_target,
          default_value = "127.0.0.1:8848")]
    pub targets: Vec<Target>,
    /// gRPC port = HTTP port + this offset (Nacos: 1000).
    #[arg(long, default_value_t = 1000)]
    pub grpc_port_offset: u16,
    /// Namespace of every request.
    #[arg(long, default_value = "public")]
    pub namespace: String,
    /// Group of every service.
    #[arg(long, default_value = "DEFAULT_GROUP")]
    pub group: String,
    /// Service names are this prefix followed by a number.
    #[arg(long, default_value = "lg-svc-")]
    pub service_prefix: String,
    /// Per-request timeout in milliseconds (also the connect timeout).
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Connections opened concurrently during setup.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Short metadata entries per instance (k0=v0, k1=v1, ...).
    #[arg(long, default_value_t = 2)]
    pub metadata_entries: usize,
    /// Write a JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Hide progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// `register` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct RegisterArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Total instances to register.
    #[arg(long, default_value_t = 10_000)]
    pub instances: u64,
    /// Number of services the instances are spread over.
    #[arg(long, default_value_t = 100)]
    pub services: u32,
    /// gRPC connections (or keep-alive HTTP connections with --mode http).
    #[arg(long, default_value_t = 100)]
    pub connections: u32,
    /// Instances per request: 1 = InstanceRequest, N>1 = BatchInstanceRequest (gRPC only).
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Skewed service sizes: a Pareto law of this shape (1.2: most services a few dozen
    /// instances, some thousands) instead of equal sizes.
    #[arg(long)]
    pub skew: Option<f64>,
    /// With --skew: instances in the biggest service at most.
    #[arg(long, default_value_t = 10_000)]
    pub skew_max: u64,
    /// Requests per second over all connections [default: as fast as possible].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests in flight per connection (gRPC; HTTP/1.1 always has 1).
    #[arg(long, default_value_t = 4)]
    pub inflight: usize,
    /// grpc or http.
    #[arg(long, value_enum, default_value_t = Mode::Grpc)]
    pub mode: Mode,
    /// gRPC client: `raw` sends each request as one gRPC frame on an `h2` stream (the client
    /// of `flood`), about half the generator CPU per registration of `tonic` (tonic's channel,
    /// tower buffer and codecs), so one generator core keeps up with one server core. Both do
    /// the SDK handshake and answer the server's stream requests.
    #[arg(long, value_enum, default_value_t = GrpcClient::Raw)]
    pub client: GrpcClient,
    /// HTTP mode: send a beat for every instance every 5 s (PUT /nacos/v1/ns/instance/beat)
    /// so the instances do not expire during --hold.
    #[arg(long)]
    pub http_beat: bool,
    /// After reaching the target keep the connections (and so the instances) alive for this
    /// many seconds, printing progress; -1 = until Ctrl-C.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub hold: i64,
    /// Skip the check that every service holds its planned instance count.
    #[arg(long)]
    pub no_verify: bool,
}

/// Which gRPC client `register` uses.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrpcClient {
    /// Each request written as one gRPC frame on an `h2` stream.
    Raw,
    /// tonic's generated client.
    Tonic,
}

/// `query` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct QueryArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Queries per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// gRPC connections, or keep-alive HTTP connections with --mode http.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// grpc or http.
    #[arg(long, value_enum, default_value_t = Mode::Grpc)]
    pub mode: Mode,
    #[command(flatten)]
    #[serde(flatten)]
    pub set: QuerySet,
}

/// `list` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ListArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Services per page.
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Stop after this many pages (0: to the end).
    #[arg(long, default_value_t = 0)]
    pub pages: u64,
}

/// `flood` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct FloodArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Queries per second offered (open loop).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Connections the queries are spread over (round-robin): HTTP/2 for gRPC, keep-alive
    /// HTTP/1.1 with --protocol http.
    #[arg(long, default_value_t = 8)]
    pub connections: u32,
    /// grpc (ServiceQueryRequest over raw HTTP/2, to the gRPC port) or http (GET
    /// /nacos/v1/ns/instance/list over pipelined HTTP/1.1, to the HTTP port).
    #[arg(long, value_enum, default_value_t = Mode::Grpc)]
    pub protocol: Mode,
    /// --protocol http: requests written on a connection before their answers arrived
    /// (0 = no limit but --max-inflight; 1 = no pipelining, as the SDKs' pooled clients do,
    /// which needs many --connections to offer a high rate).
    #[arg(long, default_value_t = 0)]
    pub pipeline: u32,
    #[command(flatten)]
    #[serde(flatten)]
    pub set: QuerySet,
}

/// What `query` and `flood` ask and how they prepare it.
#[derive(Args, Debug, Clone, Serialize)]
pub struct QuerySet {
    /// Number of services queried (round-robin).
    #[arg(long, default_value_t = 100)]
    pub services: u32,
    /// First register --instances-per-service instances in every service (over gRPC, on
    /// connections held during the run).
    #[arg(long)]
    pub prepare: bool,
    /// Instances per service registered by --prepare.
    #[arg(long, default_value_t = 10)]
    pub instances_per_service: u32,
    /// Ask for healthy instances only.
    #[arg(long)]
    pub healthy_only: bool,
    /// Queries allowed in flight before new ones are dropped (counted as `overload-dropped`).
    #[arg(long, default_value_t = 100_000)]
    pub max_inflight: usize,
}

/// `subscribe` and `converge` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct SubscribeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Number of services.
    #[arg(long, default_value_t = 10)]
    pub services: u32,
    /// Subscribers per service (each on a different connection).
    #[arg(long, default_value_t = 5)]
    pub subscribers: u32,
    /// Subscriber connections [default: services × subscribers, at most 1000, at least
    /// --subscribers].
    #[arg(long)]
    pub connections: Option<u32>,
    /// Changes per second made by the writer (open loop, services round-robin).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds the writer runs.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stable instances registered in every service before subscribing (so pushes carry a
    /// realistic list).
    #[arg(long, default_value_t = 0)]
    pub instances_per_service: u32,
    /// Seconds to wait for the last pushes after the writer stops.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
}

/// `churn` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ChurnArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// gRPC connections kept open (each is dropped and reopened by reconnect ops).
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// Services the instances go to.
    #[arg(long, default_value_t = 100)]
    pub services: u32,
    /// Operations per second (open loop).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Weights of register,deregister,reconnect.
    #[arg(long, default_value = "45,45,10")]
    pub mix: String,
    /// Do not re-register a connection's instances after a reconnect.
    #[arg(long)]
    pub no_reregister: bool,
    /// Random seed (operations and choices are reproducible for a seed).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `persist` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct PersistArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Registrations to send (instances --first .. --first + --instances).
    #[arg(long, default_value_t = 10_000)]
    pub instances: u64,
    /// Number of the first instance (a later run continues with fresh addresses).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Services the instances are spread over (instance i in service i % services).
    #[arg(long, default_value_t = 100)]
    pub services: u32,
    /// Keep-alive HTTP/1.1 connections (spread round-robin over --targets).
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Requests written on a connection before reading their answers (1 = one in flight).
    #[arg(long, default_value_t = 1)]
    pub pipeline: u32,
    /// Requests per second over all connections [default: closed loop].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many seconds even if instances remain.
    #[arg(long)]
    pub duration: Option<f64>,
    /// First instance address (127.0.0.0/8 only).
    #[arg(long, default_value = "127.1.0.0")]
    pub ip_base: String,
    /// Ports per address.
    #[arg(long, default_value_t = 4)]
    pub ports: u16,
    /// First port.
    #[arg(long, default_value_t = 30_000)]
    pub port_base: u16,
    /// Health checker JSON set on every service's DEFAULT cluster before the run (after its
    /// first instance), e.g. '{"type":"NONE"}'.
    #[arg(long)]
    pub check: Option<String>,
    /// Write the acknowledged instance numbers here, one per line.
    #[arg(long)]
    pub acked_file: Option<PathBuf>,
    /// Do not register: count which instances of this --acked-file the server lists.
    #[arg(long)]
    pub verify: Option<PathBuf>,
    /// Bucket of the answer timeline in the report (ms).
    #[arg(long, default_value_t = 100)]
    pub timeline_ms: u64,
}

/// `listen` flags.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ListenArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Addresses (from --ip-base).
    #[arg(long, default_value_t = 1000)]
    pub ips: u32,
    /// Ports per address.
    #[arg(long, default_value_t = 4)]
    pub ports: u16,
    /// First address (127.0.0.0/8 only).
    #[arg(long, default_value = "127.1.0.0")]
    pub ip_base: String,
    /// First port.
    #[arg(long, default_value_t = 30_000)]
    pub port_base: u16,
    /// Listen backlog of each listener.
    #[arg(long, default_value_t = 128)]
    pub backlog: u32,
    /// Seconds to keep listening (-1 = until Ctrl-C).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub duration: i64,
}
