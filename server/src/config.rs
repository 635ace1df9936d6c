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
    /// Number of cores (executors) to run [default: all online CPUs].
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
        let cores = self.cores.unwrap_or(online);
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
        Ok(Config {
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
        })
    }
}
