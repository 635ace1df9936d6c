//! Command line and environment settings. No flag at all gives a working standalone server.

use std::net::IpAddr;

use clap::Parser;

/// Nacelle: a Nacos-compatible registry for ephemeral instances, one executor per core.
#[derive(Parser, Debug, Clone)]
#[command(name = "nacelle", version, about, long_about = None)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "NACELLE_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// HTTP OpenAPI port (Nacos `server.port`).
    #[arg(long, env = "NACELLE_HTTP_PORT", default_value_t = 8848)]
    pub http_port: u16,
    /// gRPC port for SDK clients [default: HTTP port + 1000].
    #[arg(long, env = "NACELLE_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Number of cores (executors) to run [default: the CPUs this process may use]. They are
    /// pinned one per CPU when they fill its affinity mask (taskset, cpuset), unpinned otherwise.
    #[arg(long, env = "NACELLE_CORES")]
    pub cores: Option<usize>,
    /// How long a change waits for more changes before subscribers are pushed (ms).
    #[arg(long, env = "NACELLE_PUSH_DELAY_MS", default_value_t = 50)]
    pub push_delay_ms: u64,
    /// How often HTTP heartbeat instances are checked for missed beats (ms).
    #[arg(long, env = "NACELLE_BEAT_CHECK_INTERVAL_MS", default_value_t = 1000)]
    pub beat_check_interval_ms: u64,
    /// Bytes of encoded query answers kept in memory (hot queries are a copy).
    #[arg(long, env = "NACELLE_ANSWER_CACHE_BYTES", default_value_t = 64 << 20)]
    pub cache_bytes: usize,
    /// A gRPC connection silent for this long is asked whether it is alive (ms).
    #[arg(long, env = "NACELLE_CLIENT_IDLE_MS", default_value_t = 20_000)]
    pub client_idle_ms: u64,
    /// How long a client has to answer that question before it is disconnected (ms).
    #[arg(long, env = "NACELLE_CLIENT_DETECT_WAIT_MS", default_value_t = 5_000)]
    pub client_detect_wait_ms: u64,
    /// Largest accepted request or gRPC message (bytes).
    #[arg(long, env = "NACELLE_MAX_MESSAGE_BYTES", default_value_t = 10 << 20)]
    pub max_message_bytes: usize,
    /// Pushes and server requests queued per connection before it is closed as a slow reader.
    #[arg(long, env = "NACELLE_CONN_QUEUE", default_value_t = 1024)]
    pub conn_queue: usize,
    /// How long an idle core spins before it sleeps (µs). Sleeping costs a membarrier and
    /// IPIs in glommio; a short spin avoids that between requests under load.
    #[arg(long, env = "NACELLE_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,
    /// Let the allocator's memory use transparent huge pages. Off by default: with them the
    /// allocator's purged pages come back as whole 2 MiB pages zeroed on the next touch, and
    /// 100,000 registrations held 40-50 MB more (RSS) at no gain in throughput.
    #[arg(long, env = "NACELLE_HUGE_PAGES")]
    pub huge_pages: bool,
    /// Overload shedding (ms): while requests queue longer than this on a core, reads that
    /// waited longer are answered with 503 "over threshold" (writes from 60x this; heartbeats
    /// and deregistrations never). 0 turns shedding off.
    #[arg(long, env = "NACELLE_OVERLOAD_LAG_MS", default_value_t = 50)]
    pub overload_lag_ms: u64,
    /// Cluster members as `ip:httpPort,...` (this node included). No members = standalone.
    #[arg(long, env = "NACELLE_MEMBERS", value_delimiter = ',')]
    pub members: Vec<String>,
    /// A Nacos `cluster.conf` (one `ip[:port]` per line, `#` comments); re-read when it
    /// changes. Takes the place of --members.
    #[arg(long, env = "NACELLE_CLUSTER_CONF")]
    pub cluster_conf: Option<std::path::PathBuf>,
    /// UDP port of node-to-node traffic (QUIC) [default: HTTP port + 1001]. Peers are
    /// reached at their HTTP port + 1001.
    #[arg(long, env = "NACELLE_PEER_PORT")]
    pub peer_port: Option<u16>,
    /// This node's certificate (PEM), signed by the cluster CA (`nacelle certs`).
    #[arg(long, env = "NACELLE_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "NACELLE_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The cluster CA certificate (PEM) that every member's certificate must chain to.
    #[arg(long, env = "NACELLE_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Run a cluster without authentication between nodes (local experiments only).
    #[arg(long, env = "NACELLE_INSECURE")]
    pub insecure: bool,
    /// Where durable state lives (the Raft store of persistent instances and service and
    /// cluster definitions) [default: $XDG_DATA_HOME/nacelle, else ~/.local/share/nacelle].
    /// One process per directory: a second one refuses to start.
    #[arg(long, env = "NACELLE_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// How long changes are merged before they are sent to peers (ms).
    #[arg(long, env = "NACELLE_SYNC_DELAY_MS", default_value_t = 20)]
    pub sync_delay_ms: u64,
    /// How often nodes compare digests of their data (ms).
    #[arg(long, env = "NACELLE_VERIFY_INTERVAL_MS", default_value_t = 5_000)]
    pub verify_interval_ms: u64,
    /// A copy of a peer's client that its owner stopped confirming is removed after this (ms).
    #[arg(long, env = "NACELLE_REPLICA_LEASE_MS", default_value_t = 30_000)]
    pub replica_lease_ms: u64,
    /// On SIGTERM, how long the node waits for its peers to acknowledge the changes it
    /// accepted before it exits (ms; 0 = exit at once).
    #[arg(long, env = "NACELLE_DRAIN_MS", default_value_t = 3_000)]
    pub drain_ms: u64,
    /// UDP push to HTTP v1 clients.
    #[command(flatten)]
    pub udp_push: UdpPushArgs,
    /// Authentication.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub bind: IpAddr,
    /// HTTP port.
    pub http_port: u16,
    /// gRPC port.
    pub grpc_port: u16,
    /// Number of cores.
    pub cores: usize,
    /// Push merge window (ms).
    pub push_delay_ms: u64,
    /// Heartbeat check period (ms).
    pub beat_check_interval_ms: u64,
    /// Answer cache budget (bytes).
    pub cache_bytes: usize,
    /// Idle time before a client detection (ms).
    pub client_idle_ms: u64,
    /// Detection answer deadline (ms).
    pub client_detect_wait_ms: u64,
    /// Message size limit (bytes).
    pub max_message_bytes: usize,
    /// Per-connection queue length.
    pub conn_queue: usize,
    /// Spin before parking (µs).
    pub spin_before_park_us: u64,
    /// Transparent huge pages allowed.
    pub huge_pages: bool,
    /// Lag from which a busy core sheds reads (ms; 0 = never).
    pub overload_lag_ms: u64,
    /// Cluster settings; `None` = standalone.
    pub cluster: Option<ClusterArgs>,
    /// Durable state directory.
    pub data_dir: std::path::PathBuf,
    /// UDP push settings.
    pub udp_push: UdpPushArgs,
    /// Authentication settings (the secret decoded).
    pub auth: AuthArgs,
}

/// Cluster settings as given (resolved by `cluster::ClusterSetup`).
#[derive(Debug, Clone)]
pub struct ClusterArgs {
    /// `--members` entries.
    pub members: Vec<String>,
    /// `--cluster-conf`.
    pub cluster_conf: Option<std::path::PathBuf>,
    /// UDP port of peer traffic.
    pub peer_port: u16,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`.
    pub tls: (
        Option<std::path::PathBuf>,
        Option<std::path::PathBuf>,
        Option<std::path::PathBuf>,
    ),
    /// `--insecure`.
    pub insecure: bool,
    /// Distro settings.
    pub distro: engine::distro::DistroConfig,
    /// Shutdown drain bound (ms).
    pub drain_ms: u64,
}

impl Args {
    /// Resolves defaults that depend on other settings or on the machine.
    pub fn resolve(self) -> Result<Config, String> {
        let grpc_port = match self.grpc_port {
            Some(p) => p,
            None => self.http_port.checked_add(1000).ok_or_else(|| {
                format!(
                    "--http-port {} + 1000 is not a port: set --grpc-port",
                    self.http_port
                )
            })?,
        };
        if grpc_port == self.http_port {
            return Err("--grpc-port must differ from --http-port".into());
        }
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cores = self
            .cores
            .unwrap_or(online.min(usize::from(engine::distro::PARTITIONS)));
        if cores == 0 || cores > 1024 {
            return Err(format!("--cores {cores} must be between 1 and 1024"));
        }
        if self.push_delay_ms > 60_000
            || self.beat_check_interval_ms == 0
            || self.beat_check_interval_ms > 60_000
        {
            return Err(
                "--push-delay-ms must be <= 60000 and --beat-check-interval-ms within 1..=60000"
                    .into(),
            );
        }
        let cluster = if self.members.iter().all(|m| m.trim().is_empty())
            && self.cluster_conf.is_none()
        {
            None
        } else {
            let peer_port = match self.peer_port {
                Some(p) => p,
                None => self.http_port.checked_add(1001).ok_or_else(|| {
                    format!(
                        "--http-port {} + 1001 is not a port: set --peer-port",
                        self.http_port
                    )
                })?,
            };
            if self.sync_delay_ms > 600_000
                || !(500..=600_000).contains(&self.verify_interval_ms)
                || self.replica_lease_ms < (2 * self.verify_interval_ms).max(10_000)
                || self.drain_ms > 600_000
            {
                return Err("--sync-delay-ms and --drain-ms must be <= 600000, --verify-interval-ms within 500..=600000, and --replica-lease-ms at least twice the verify interval and at least 10000 (longer than a dead node takes to be declared DOWN, so its clients move before their copies expire)".into());
            }
            Some(ClusterArgs {
                members: self
                    .members
                    .iter()
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect(),
                cluster_conf: self.cluster_conf,
                peer_port,
                tls: (self.tls_cert, self.tls_key, self.tls_ca),
                insecure: self.insecure,
                distro: engine::distro::DistroConfig {
                    sync_delay_ms: self.sync_delay_ms,
                    verify_interval_ms: self.verify_interval_ms,
                    replica_lease_ms: self.replica_lease_ms,
                    ..engine::distro::DistroConfig::default()
                },
                drain_ms: self.drain_ms,
            })
        };
        if cores > usize::from(engine::distro::PARTITIONS) {
            return Err(format!(
                "--cores {cores}: at most {} cores are used (the number of Distro partitions)",
                engine::distro::PARTITIONS
            ));
        }
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => default_data_dir()?,
        };
        Ok(Config {
            cluster,
            data_dir,
            bind: self.bind,
            http_port: self.http_port,
            grpc_port,
            cores,
            push_delay_ms: self.push_delay_ms,
            beat_check_interval_ms: self.beat_check_interval_ms,
            cache_bytes: self.cache_bytes,
            client_idle_ms: self.client_idle_ms.max(1000),
            client_detect_wait_ms: self.client_detect_wait_ms.max(100),
            max_message_bytes: self.max_message_bytes.clamp(4096, 256 << 20),
            conn_queue: self.conn_queue.max(16),
            spin_before_park_us: self.spin_before_park_us.min(10_000),
            huge_pages: self.huge_pages,
            overload_lag_ms: self.overload_lag_ms,
            udp_push: self.udp_push,
            auth: self.auth.resolve()?,
        })
    }
}

/// `$XDG_DATA_HOME/nacelle`, else `$HOME/.local/share/nacelle` (the XDG base directory rule).
fn default_data_dir() -> Result<std::path::PathBuf, String> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = from_env("XDG_DATA_HOME") {
        return Ok(xdg.join("nacelle"));
    }
    match from_env("HOME") {
        Some(home) => Ok(home.join(".local/share/nacelle")),
        None => Err(
            "no data directory: set --data-dir (or NACELLE_DATA_DIR, XDG_DATA_HOME, HOME)".into(),
        ),
    }
}

/// UDP push to Nacos 1.x HTTP clients (`GET /instance/list?udpPort=N`): where pushes go, how
/// long targets live, and the bounds that keep list calls from turning the node into a UDP
/// source for someone else.
#[derive(clap::Args, Debug, Clone)]
pub struct UdpPushArgs {
    /// Push to the `clientIP` a list call names instead of the address the request came from.
    /// Off by default: a forged `clientIP` would make the node send UDP to any host, and a
    /// real one breaks behind NAT (Nacos #5108).
    #[arg(long, env = "NACELLE_UDP_PUSH_CLIENT_IP")]
    pub udp_push_client_ip: bool,
    /// A push target without a list call for this long is forgotten (ms; Nacos: 30 s).
    #[arg(long, env = "NACELLE_UDP_PUSH_TTL_MS", default_value_t = 30_000)]
    pub udp_push_ttl_ms: u64,
    /// A push not acknowledged within this long is sent once more (ms; Nacos: 10 s).
    #[arg(
        long,
        env = "NACELLE_UDP_PUSH_ACK_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub udp_push_ack_timeout_ms: u64,
    /// Most push targets on this node (0 = no UDP push).
    #[arg(long, env = "NACELLE_UDP_PUSH_MAX_TARGETS", default_value_t = 100_000)]
    pub udp_push_max_targets: usize,
    /// Most push targets for one source address on this node.
    #[arg(long, env = "NACELLE_UDP_PUSH_MAX_PER_SOURCE", default_value_t = 4_096)]
    pub udp_push_max_per_source: usize,
    /// Most push packets per second this node sends.
    #[arg(long, env = "NACELLE_UDP_PUSH_RATE", default_value_t = 40_000)]
    pub udp_push_rate: u64,
}

/// Whether `--auth` is on: every client API then needs credentials (for the console's
/// `server/state` `auth_enabled`).
pub fn auth_enabled(cfg: &Config) -> bool {
    cfg.auth.auth
}

/// Nacos-compatible authentication (`nacos.core.auth.*`). Off by default, as in Nacos.
#[derive(clap::Args, Clone)]
pub struct AuthArgs {
    /// Require credentials (a token from `/nacos/v1/auth/login`, or user name and password)
    /// on every naming API, HTTP and gRPC (Nacos `nacos.core.auth.enabled`).
    #[arg(long, env = "NACELLE_AUTH")]
    pub auth: bool,
    /// Lifetime of the tokens a login issues (s; Nacos: 18000).
    #[arg(long, env = "NACELLE_AUTH_TOKEN_TTL", default_value_t = 18_000)]
    pub auth_token_ttl: u64,
    /// The tokens' HS256 key: base64 of at least 32 bytes, the same on every node (Nacos
    /// `token.secret.key`). Without it the cluster generates one and keeps it in its Raft store.
    #[arg(long, env = "NACELLE_AUTH_TOKEN_SECRET", hide_env_values = true)]
    pub auth_token_secret: Option<String>,
    /// Creates the administrator `nacos` with this password at start if no administrator
    /// exists yet (unattended set-up; otherwise `POST /nacos/v1/auth/users/admin`).
    #[arg(long, env = "NACELLE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// `--auth-token-secret` decoded.
    #[arg(skip)]
    pub secret: Option<Vec<u8>>,
}

/// Neither the secret nor the password reach a log line.
impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field("auth", &self.auth)
            .field("auth_token_ttl", &self.auth_token_ttl)
            .field(
                "auth_token_secret",
                &self.auth_token_secret.as_ref().map(|_| "<set>"),
            )
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl AuthArgs {
    fn resolve(mut self) -> Result<AuthArgs, String> {
        use base64::Engine as _;
        if self.auth_token_ttl == 0 || self.auth_token_ttl > 365 * 86_400 {
            return Err("--auth-token-ttl must be within 1..=31536000 seconds".into());
        }
        if let Some(text) = self.auth_token_secret.as_deref() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| format!("--auth-token-secret is not base64: {e}"))?;
            let min = engine::store::auth::MIN_SECRET;
            let max = engine::store::auth::MAX_SECRET;
            if bytes.len() < min || bytes.len() > max {
                return Err(format!(
                    "--auth-token-secret must be the base64 of {min} to {max} bytes; it holds {}",
                    bytes.len()
                ));
            }
            self.secret = Some(bytes);
        }
        if let Some(p) = self.admin_password.as_deref() {
            if p.is_empty() || p.len() > wire::auth::MAX_CREDENTIAL {
                return Err(format!(
                    "--admin-password must be 1 to {} bytes",
                    wire::auth::MAX_CREDENTIAL
                ));
            }
        }
        Ok(self)
    }
}
