//! One Nacos gRPC client connection, as an SDK would hold it.
//!
//! `connect` opens one HTTP/2 transport (a tonic `Channel` of its own), sends the unary
//! `ServerCheckRequest`, opens `BiRequestStream`, sends `ConnectionSetupRequest` and waits for
//! `SetupAckRequest` when the server announced ability negotiation (100 ms otherwise, as the
//! Java client does). A reader task answers server requests on the stream; a health task sends
//! `HealthCheckRequest` when the connection has been idle for 5 s. Dropping the `Conn` closes
//! the transport, which makes the server drop the connection's instances.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use wire::payload::{ok, open, seal};
use wire::proto::bi_request_stream_client::BiRequestStreamClient;
use wire::proto::request_client::RequestClient;
use wire::proto::Payload;

use crate::stats::{now_us, OpError};

/// Largest message accepted from the server (big services make big pushes).
const MAX_MESSAGE: usize = 64 << 20;
/// Idle time after which a health check is sent.
const IDLE_HEALTH_CHECK: Duration = Duration::from_secs(5);

/// Process-wide counters of what the server sent on the streams.
pub mod counters {
    use std::sync::atomic::AtomicU64;

    /// NotifySubscriberRequests received (and acknowledged).
    pub static PUSHES: AtomicU64 = AtomicU64::new(0);
    /// ClientDetectionRequests answered.
    pub static DETECTIONS: AtomicU64 = AtomicU64::new(0);
    /// ConnectResetRequests received (answered, not followed).
    pub static RESETS: AtomicU64 = AtomicU64::new(0);
    /// Health checks sent.
    pub static HEALTH_CHECKS: AtomicU64 = AtomicU64::new(0);
    /// Health checks that failed.
    pub static HEALTH_FAILURES: AtomicU64 = AtomicU64::new(0);
    /// Bi-streams that ended while the connection was in use.
    pub static STREAMS_CLOSED: AtomicU64 = AtomicU64::new(0);
    /// Connections whose SetupAckRequest did not come within the wait.
    pub static SETUP_ACK_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
}

/// Where a push arrived.
#[derive(Debug, Clone, Copy)]
pub struct PushCtx {
    /// Connection number (as given to `connect`).
    pub conn: usize,
    /// Index of the target the connection goes to.
    pub target: usize,
    /// Arrival time, µs since the epoch ([`now_us`]).
    pub at_us: u64,
}

/// Called with the JSON body of every `NotifySubscriberRequest`.
pub type PushHandler = Arc<dyn Fn(&PushCtx, &[u8]) + Send + Sync>;

/// How to connect.
#[derive(Clone)]
pub struct ConnOpts {
    /// Connect and per-request timeout.
    pub timeout: Duration,
    /// Receives pushes, if any.
    pub push: Option<PushHandler>,
}

/// A decoded response.
#[derive(Debug)]
pub struct Reply {
    /// JSON body.
    pub body: Vec<u8>,
}

#[derive(Deserialize)]
struct ResponseHead {
    #[serde(rename = "resultCode")]
    result_code: Option<i32>,
    #[serde(rename = "errorCode")]
    error_code: Option<i32>,
}

#[derive(Deserialize)]
struct ServerCheck {
    #[serde(rename = "supportAbilityNegotiation", default)]
    negotiation: bool,
}

#[derive(Deserialize)]
struct RequestId {
    #[serde(rename = "requestId")]
    request_id: Option<String>,
}

struct Shared {
    /// `now_us()` of the last successful exchange.
    last_active_us: AtomicU64,
    alive: AtomicBool,
}

/// An established connection.
pub struct Conn {
    client: RequestClient<Channel>,
    timeout: Duration,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn grpc_err(s: &tonic::Status) -> OpError {
    OpError::Grpc(format!("{:?}", s.code()))
}

/// Checks a response payload: `ErrorResponse` or a resultCode other than 200 is an error.
pub fn check_reply(p: Payload) -> Result<Reply, OpError> {
    let env = open(&p).map_err(|_| OpError::Decode)?;
    let head: ResponseHead = serde_json::from_slice(env.body).map_err(|_| OpError::Decode)?;
    let failed = env.kind == "ErrorResponse" || head.result_code.is_some_and(|c| c != 200);
    if failed {
        let code = match head.error_code {
            Some(c) if c != 0 => c,
            _ => head.result_code.unwrap_or(500),
        };
        return Err(OpError::Nacos(code));
    }
    let body = p.body.map(|b| b.value).unwrap_or_default();
    Ok(Reply { body })
}

async fn unary(
    client: &RequestClient<Channel>,
    timeout: Duration,
    kind: &str,
    json: Vec<u8>,
) -> Result<Reply, OpError> {
    let mut c = client.clone();
    match tokio::time::timeout(timeout, c.request(seal(kind, json))).await {
        Err(_) => Err(OpError::Timeout),
        Ok(Err(s)) => Err(grpc_err(&s)),
        Ok(Ok(resp)) => check_reply(resp.into_inner()),
    }
}

impl Conn {
    /// Opens connection number `idx` to `addr` (`host:grpcPort`) and does the handshake.
    pub async fn connect(
        addr: &str,
        idx: usize,
        target: usize,
        opts: &ConnOpts,
    ) -> Result<Conn, OpError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| OpError::Grpc("InvalidUri".into()))?
            .connect_timeout(opts.timeout)
            .tcp_nodelay(true)
            .initial_connection_window_size(Some(8 << 20))
            .initial_stream_window_size(Some(4 << 20));
        let channel = match tokio::time::timeout(opts.timeout, endpoint.connect()).await {
            Err(_) => return Err(OpError::Timeout),
            Ok(Err(e)) => return Err(transport_err(&e)),
            Ok(Ok(c)) => c,
        };
        let client = RequestClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);

        // 1. ServerCheckRequest (unary) on this transport.
        let reply = unary(
            &client,
            opts.timeout,
            "ServerCheckRequest",
            b"{\"headers\":{},\"requestId\":\"\",\"module\":\"internal\"}".to_vec(),
        )
        .await?;
        let check: ServerCheck =
            serde_json::from_slice(&reply.body).map_err(|_| OpError::Decode)?;

        // 2. The bi-stream, with ConnectionSetupRequest queued before it opens (some servers
        // send no response headers until they have something to say).
        let (out_tx, out_rx) = mpsc::channel::<Payload>(256);
        let setup =
            b"{\"headers\":{},\"requestId\":\"\",\"clientVersion\":\"Nacelle-Loadgen:0.1\",\
\"tenant\":\"\",\"labels\":{\"source\":\"sdk\",\"module\":\"naming\"},\"abilityTable\":{},\
\"module\":\"internal\"}";
        out_tx
            .send(seal("ConnectionSetupRequest", setup.to_vec()))
            .await
            .map_err(|_| OpError::NotConnected)?;
        let shared = Arc::new(Shared {
            last_active_us: AtomicU64::new(now_us()),
            alive: AtomicBool::new(true),
        });
        let (ack_tx, ack_rx) = oneshot::channel::<()>();
        let bi = BiRequestStreamClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let reader = tokio::spawn(read_stream(
            bi,
            out_rx,
            out_tx.clone(),
            ack_tx,
            shared.clone(),
            PushCtx {
                conn: idx,
                target,
                at_us: 0,
            },
            opts.push.clone(),
        ));

        // 3. SetupAckRequest (or a short pause) so that the server has registered us before
        // the first naming request.
        if check.negotiation {
            let wait = opts.timeout.max(Duration::from_secs(1));
            if tokio::time::timeout(wait, ack_rx).await.is_err() {
                counters::SETUP_ACK_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !shared.alive.load(Ordering::Relaxed) {
            reader.abort();
            return Err(OpError::NotConnected);
        }
        let health = tokio::spawn(health_loop(client.clone(), opts.timeout, shared.clone()));
        Ok(Conn {
            client,
            timeout: opts.timeout,
            shared,
            tasks: vec![reader, health],
        })
    }

    /// Sends a unary request of class `kind` with a JSON body.
    pub async fn request(&self, kind: &str, json: Vec<u8>) -> Result<Reply, OpError> {
        let r = unary(&self.client, self.timeout, kind, json).await;
        if r.is_ok() {
            self.shared
                .last_active_us
                .store(now_us(), Ordering::Relaxed);
        }
        r
    }

    /// Whether the bi-stream is still open.
    pub fn alive(&self) -> bool {
        self.shared.alive.load(Ordering::Relaxed)
    }
}

fn transport_err(e: &tonic::transport::Error) -> OpError {
    use std::error::Error as _;
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return OpError::Io(format!("{:?}", io.kind()));
        }
        src = s.source();
    }
    OpError::Grpc("Transport".into())
}

async fn health_loop(client: RequestClient<Channel>, timeout: Duration, shared: Arc<Shared>) {
    // Spread the checks of many connections over the period.
    let phase = Duration::from_micros(now_us() % 5_000_000);
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(IDLE_HEALTH_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !shared.alive.load(Ordering::Relaxed) {
            return;
        }
        let idle_us = now_us().saturating_sub(shared.last_active_us.load(Ordering::Relaxed));
        if idle_us < IDLE_HEALTH_CHECK.as_micros() as u64 {
            continue;
        }
        counters::HEALTH_CHECKS.fetch_add(1, Ordering::Relaxed);
        let r = unary(
            &client,
            timeout,
            "HealthCheckRequest",
            b"{\"headers\":{},\"requestId\":\"\",\"module\":\"internal\"}".to_vec(),
        )
        .await;
        match r {
            Ok(_) => shared.last_active_us.store(now_us(), Ordering::Relaxed),
            Err(_) => {
                counters::HEALTH_FAILURES.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn request_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<RequestId>(body)
        .ok()
        .and_then(|r| r.request_id)
}

async fn read_stream(
    mut bi: BiRequestStreamClient<Channel>,
    out_rx: mpsc::Receiver<Payload>,
    out: mpsc::Sender<Payload>,
    ack: oneshot::Sender<()>,
    shared: Arc<Shared>,
    ctx: PushCtx,
    push: Option<PushHandler>,
) {
    let mut ack = Some(ack);
    let outbound = tokio_stream::wrappers::ReceiverStream::new(out_rx);
    let mut inbound = match bi.request_bi_stream(outbound).await {
        Ok(r) => r.into_inner(),
        Err(_) => {
            shared.alive.store(false, Ordering::Relaxed);
            return;
        }
    };
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        let at_us = now_us();
        let Ok(env) = open(&msg) else { continue };
        match env.kind {
            "NotifySubscriberRequest" => {
                counters::PUSHES.fetch_add(1, Ordering::Relaxed);
                let id = request_id(env.body);
                let _ = out
                    .send(ok("NotifySubscriberResponse", "", id.as_deref()))
                    .await;
                if let Some(h) = &push {
                    h(&PushCtx { at_us, ..ctx }, env.body);
                }
            }
            "ClientDetectionRequest" => {
                counters::DETECTIONS.fetch_add(1, Ordering::Relaxed);
                let id = request_id(env.body);
                let _ = out
                    .send(ok("ClientDetectionResponse", "", id.as_deref()))
                    .await;
            }
            "ConnectResetRequest" => {
                counters::RESETS.fetch_add(1, Ordering::Relaxed);
                let id = request_id(env.body);
                let _ = out
                    .send(ok("ConnectResetResponse", "", id.as_deref()))
                    .await;
            }
            "SetupAckRequest" => {
                if let Some(a) = ack.take() {
                    let _ = a.send(());
                }
            }
            _ => {}
        }
    }
    shared.alive.store(false, Ordering::Relaxed);
    counters::STREAMS_CLOSED.fetch_add(1, Ordering::Relaxed);
}

/// Opens `n` connections with `connect(addr, index, target)` spread round-robin over `addrs`,
/// `concurrency` at a time, each tried up to 3 times; a slot is `None` when all tries failed.
/// Returns the connect latencies and errors.
pub async fn connect_many_with<C, F, Fut>(
    addrs: &[String],
    n: usize,
    concurrency: usize,
    pb: &indicatif::ProgressBar,
    connect: F,
) -> (Vec<Option<C>>, crate::stats::Recorder)
where
    F: Fn(String, usize, usize) -> Fut,
    Fut: std::future::Future<Output = Result<C, OpError>>,
{
    use futures_util::StreamExt;
    let mut rec = crate::stats::Recorder::new();
    let mut out: Vec<Option<C>> = (0..n).map(|_| None).collect();
    let connect = &connect;
    let mut results = futures_util::stream::iter(0..n)
        .map(|i| {
            let t = i % addrs.len().max(1);
            let addr = addrs.get(t).cloned().unwrap_or_default();
            async move {
                let mut last = OpError::NotConnected;
                let mut lat = Vec::new();
                for attempt in 0..3u32 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    }
                    let t0 = Instant::now();
                    match connect(addr.clone(), i, t).await {
                        Ok(c) => return (i, Ok((c, t0.elapsed())), lat),
                        Err(e) => {
                            lat.push(e.clone());
                            last = e;
                        }
                    }
                }
                (i, Err(last), lat)
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((i, r, failures)) = results.next().await {
        for e in &failures {
            rec.err(e);
        }
        if let Ok((c, took)) = r {
            rec.ok(took);
            out[i] = Some(c);
        }
        pb.inc(1);
    }
    (out, rec)
}
