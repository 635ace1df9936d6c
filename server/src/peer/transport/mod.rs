//! The peer transport: length-prefixed frames between cluster nodes over QUIC with mutual TLS,
//! driven by one glommio executor (sans-IO `quinn-proto`, no tokio, nothing `Send`).
//!
//! # Layout
//! - [`Transport`]: the handle (cheap to clone, `!Send`). [`Transport::start`] binds the UDP
//!   socket and spawns three tasks on the current executor; dropping the last handle cancels
//!   them and closes the socket (a crash, as far as peers can tell; [`Transport::shutdown`]
//!   closes connections politely first).
//! - Tasks, all sharing one `RefCell<Inner>` that is never borrowed across an `.await`:
//!   - receive: `recv_from` → `Endpoint::handle` → `Connection::handle_event`, then the
//!     connection's events are processed at once (frames parsed, health updated);
//!   - send: writes queued frames into streams, then `poll_transmit` → `send_to`, in batches;
//!     it sleeps on a `Signal` that every state change raises;
//!   - timer: sleeps until the earliest connection timeout or peer deadline (dial, dial timeout,
//!     down), re-armed when something earlier appears.
//! - Files: this one holds the settings, the public types and the state (`Inner`, `Peer`,
//!   `Conn`); `handle.rs` the [`Transport`] calls; `tasks.rs` the three tasks; `conn.rs` QUIC
//!   connection events, stream reads and the pump; `peers.rs` the peer lifecycle (queues,
//!   health, dials, deadlines).
//! - `wire::peer::FrameReader`: one per incoming stream, splits it into frames (`u32` LE
//!   length + body) and refuses a length over `max_frame` before buffering it.
//!
//! # Topology
//! Every node dials every peer (client role) and sends all its frames to that peer on one
//! unidirectional stream of that outgoing connection; it accepts connections from its peers and
//! reads their frames from the uni streams they open. So each ordered pair of nodes has its own
//! connection and frames from A to B arrive in the order A sent them, as long as the connection
//! lives. Incoming frames are tagged with the remote address, which is the peer's own endpoint
//! address (`ip:peer_port`): one UDP socket plays both roles, so a peer dials from the port it
//! listens on. (A node bound to `0.0.0.0` sends from the address the kernel routes through,
//! normally its member address; the application's first frame — a hello naming the node — is the
//! authoritative identity.)
//!
//! # Health
//! Health is the state of the *outgoing* connection to a peer: [`Health::Up`] once the server
//! confirmed the handshake (its `HANDSHAKE_DONE`, sent only after it checked our certificate —
//! in TLS 1.3 the client is "connected" one flight before that), [`Health::Suspicious`] after a
//! lost connection or a failed dial, [`Health::Down`] after 3 consecutive failed dials or 6 s
//! without a connection. UDP gives no "connection refused", so timeouts are all there is: a 3 s
//! idle timeout with a 1 s keep-alive detects a dead peer in about 3 s; dials time out after
//! 1.5 s and are retried with a backoff of 200 ms doubling up to 2 s.
//!
//! # Bounds
//! - Per peer, frames waiting for the stream: `max_queue_bytes` (64 MiB) → [`SendError::Full`].
//!   The queue survives reconnects (frames already handed to a lost connection are gone: the
//!   caller re-sends anything unacknowledged) and is dropped when the peer goes Down, where
//!   [`Transport::send`] answers [`SendError::NotConnected`].
//! - Received frames not yet taken by [`Transport::recv`]: `max_recv_buffered` (64 MiB); past
//!   that, streams are not read, so QUIC flow control pushes back on the senders.
//! - Frames above `max_frame` (16 MiB) close the connection; so many incoming connections
//!   (`max_incoming`) are accepted, the rest refused.
//!
//! Not done: GSO/GRO through `quinn-udp` (one `sendmsg`/`recvmsg` per datagram here; the
//! integration notes measured 2–2.5× more messages per second with it) and ECN.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    IdleTimeout, Incoming, ReadError, ServerConfig, StreamEvent, StreamId, VarInt, WriteError,
};
use tracing::{debug, info, warn};
use wire::peer::{FrameReader, PeerDecodeError};

use super::tls::TlsMode;

mod conn;
mod handle;
mod peers;
mod tasks;

/// Largest UDP payload read (quinn's packets stay below 1500 unless configured otherwise).
const MAX_DATAGRAM: usize = 4096;
/// Receive buffers are carved out of blocks of this size (one allocation per ~100 datagrams).
const RX_BLOCK: usize = 256 * 1024;
/// Datagrams sent per wake-up of the send task, and per connection within one batch.
const SEND_BATCH: usize = 64;
const SEND_PER_CONN: usize = 16;
/// Stateless endpoint answers (refusals, version negotiation) kept when the socket is slow.
const MAX_ENDPOINT_TX: usize = 1024;
/// Frames up to this size are copied into a per-peer coalescing buffer, which becomes a queue
/// chunk at `TAIL_TARGET` bytes (or when the stream wants data). quinn-proto keeps every chunk
/// written to a stream as one segment and finds a segment by a linear scan from the oldest
/// unacknowledged one, so hundreds of thousands of tiny chunks in flight make sending quadratic
/// (measured: 100-byte frames fell to 9k/s); 64 KiB chunks keep the segment count in the
/// hundreds. A larger frame is copied in too and closes the chunk.
const COALESCE_MAX: usize = 16 * 1024;
const TAIL_TARGET: usize = 64 * 1024;

/// Application close codes.
const CLOSE_NORMAL: u32 = 0;
const CLOSE_FRAME_TOO_LARGE: u32 = 1;
const CLOSE_DIAL_TIMEOUT: u32 = 2;
const CLOSE_STREAM_STOPPED: u32 = 3;

/// Settings of a [`Transport`]; [`TransportConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Local `ip:peer_port` (port 0 picks one; see [`Transport::local_addr`]).
    pub bind: SocketAddr,
    /// Certificates (or `--insecure`).
    pub tls: TlsMode,
    /// A connection silent for this long is dead (QUIC idle timeout).
    pub idle_timeout: Duration,
    /// Keep-alive period of idle connections (well below `idle_timeout`).
    pub keep_alive: Duration,
    /// A dial not confirmed within this is a failed dial.
    pub dial_timeout: Duration,
    /// Without a connection for this long, a peer is Down.
    pub down_after: Duration,
    /// This many consecutive failed dials make a peer Down.
    pub down_after_failures: u32,
    /// First redial delay after a failure or loss; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest redial delay.
    pub backoff_max: Duration,
    /// Bytes of frames queued per peer before [`SendError::Full`].
    pub max_queue_bytes: usize,
    /// Largest frame body, both ways.
    pub max_frame: usize,
    /// Bytes of received frames held for [`Transport::recv`] before streams stop being read.
    pub max_recv_buffered: usize,
    /// Incoming connections held at once; more are refused.
    pub max_incoming: usize,
    /// SO_RCVBUF / SO_SNDBUF of the UDP socket.
    pub socket_buffer: usize,
    /// Per-stream receive window (bytes a peer may send ahead of our reading).
    pub stream_window: u32,
    /// Bytes written into a connection and not yet acknowledged (beyond it frames wait in our
    /// queue): it bounds the data in flight, hence throughput per round trip (4 MiB: 4 GB/s at
    /// 1 ms, 80 MB/s at 50 ms).
    pub send_window: u32,
}

impl TransportConfig {
    /// The defaults described in the module documentation.
    pub fn new(bind: SocketAddr, tls: TlsMode) -> Self {
        Self {
            bind,
            tls,
            idle_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_secs(1),
            dial_timeout: Duration::from_millis(1500),
            down_after: Duration::from_secs(6),
            down_after_failures: 3,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            max_queue_bytes: 64 << 20,
            max_frame: 16 << 20,
            max_recv_buffered: 64 << 20,
            max_incoming: 256,
            socket_buffer: 4 << 20,
            stream_window: 16 << 20,
            send_window: 4 << 20,
        }
    }
}

/// What the transport knows about a peer, from its outgoing connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Not dialed yet (or not a peer).
    Unknown,
    /// Connected, handshake confirmed by the peer.
    Up,
    /// The connection was lost or a dial failed; redialing.
    Suspicious,
    /// Unreachable for `down_after` or `down_after_failures` dials; still redialing.
    Down,
}

/// What [`Transport::recv`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A frame body from the peer at `from` (its `ip:peer_port`).
    Frame {
        /// Remote endpoint address.
        from: SocketAddr,
        /// The frame, without its length prefix.
        body: Bytes,
    },
    /// The peer's health changed (changes are coalesced: this is the latest state).
    Health {
        /// The peer.
        peer: SocketAddr,
        /// Its new health.
        health: Health,
    },
}

/// Why [`Transport::send`] did not queue a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The address is not in the peer set.
    UnknownPeer,
    /// The peer is Down: nothing is queued for it.
    NotConnected,
    /// The peer's queue is at its byte limit.
    Full,
    /// The frame is larger than `max_frame`.
    TooLarge,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::UnknownPeer => "not a peer",
            SendError::NotConnected => "peer is down",
            SendError::Full => "peer queue is full",
            SendError::TooLarge => "frame too large",
        })
    }
}

impl std::error::Error for SendError {}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames accepted by [`Transport::send`].
    pub frames_sent: u64,
    /// Bytes (prefixes included) written into streams.
    pub bytes_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Stream bytes received (prefixes included).
    pub bytes_received: u64,
    /// UDP datagrams sent and received.
    pub datagrams_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// Failed `send_to` calls.
    pub send_errors: u64,
    /// Outgoing connections that came up.
    pub connects: u64,
    /// Dials that failed or timed out.
    pub dial_failures: u64,
    /// Up connections that were lost.
    pub connections_lost: u64,
    /// Incoming connections accepted (before their handshake).
    pub accepted: u64,
    /// Incoming connections refused or whose handshake failed (bad certificate...).
    pub refused: u64,
    /// Queued bytes dropped because their peer went Down or was removed.
    pub bytes_dropped: u64,
}

/// A wake-up flag for one waiting task (single-threaded, lost-wake-up free: the flag stays set
/// until the task consumes it).
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn clear(&self) {
        self.set.set(false);
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

#[derive(Clone, Copy)]
enum Role {
    /// We dialed this peer address.
    Out(SocketAddr),
    /// A peer dialed us.
    In,
}

struct Conn {
    conn: Connection,
    role: Role,
    remote: SocketAddr,
    /// Outgoing: our side saw `Connected`; Up once the server's HANDSHAKE_DONE arrived too.
    connected: bool,
    /// Incoming: the handshake completed (its certificate was accepted).
    established: bool,
    readers: HashMap<StreamId, FrameReader>,
}

struct Peer {
    conn: Option<ConnectionHandle>,
    /// Our uni stream on `conn`; `Some` exactly when Up.
    stream: Option<StreamId>,
    dial_started: Instant,
    /// The pending dial answers a dial of the peer's (see `on_incoming`): never replaced.
    dial_is_answer: bool,
    /// The next dial answers a dial of the peer's.
    answer_next: bool,
    next_dial: Instant,
    backoff: Duration,
    failures: u32,
    /// Since when there is no Up connection (for the Down rule).
    disconnected_since: Instant,
    health: Health,
    /// Chunks ready for the stream, in order, then `tail`: small frames being coalesced.
    /// Every chunk ends where a frame ends, so a new stream can start with any of them.
    queue: VecDeque<Bytes>,
    /// The length each chunk of `queue` had when queued: a front chunk shorter than that was
    /// partly written into the stream.
    queue_lens: VecDeque<usize>,
    tail: BytesMut,
    /// Bytes in `queue` and `tail`.
    queued: usize,
}

impl Peer {
    fn push_chunk(&mut self, chunk: Bytes) {
        self.queue_lens.push_back(chunk.len());
        self.queue.push_back(chunk);
    }

    fn clear_queue(&mut self) {
        self.queue.clear();
        self.queue_lens.clear();
        self.tail = BytesMut::new();
        self.queued = 0;
    }

    /// After the stream was lost: drops the rest of a chunk that was partly written into it.
    ///
    /// Why: the next stream must start on a frame boundary. Resuming mid-chunk sent the tail
    /// of a frame as if it began a new one; the peer read garbage as a frame length ("frame of
    /// 1310720000 bytes exceeds ...") and closed every connection that followed, again and
    /// again (seen after a reconnect of a member that did not hear us, joining under load).
    /// The dropped frames are lost like those already handed to the old connection.
    fn drop_partly_written(&mut self) -> usize {
        match (self.queue.front(), self.queue_lens.front()) {
            (Some(chunk), Some(&len)) if chunk.len() < len => {
                let rest = chunk.len();
                self.queue.pop_front();
                self.queue_lens.pop_front();
                self.queued -= rest;
                rest
            }
            _ => 0,
        }
    }

    fn new(now: Instant, backoff: Duration) -> Self {
        Peer {
            conn: None,
            stream: None,
            dial_started: now,
            dial_is_answer: false,
            answer_next: false,
            next_dial: now,
            backoff,
            failures: 0,
            disconnected_since: now,
            health: Health::Unknown,
            queue: VecDeque::new(),
            queue_lens: VecDeque::new(),
            tail: BytesMut::new(),
            queued: 0,
        }
    }
}

struct Inner {
    cfg: TransportConfig,
    local: SocketAddr,
    endpoint: Endpoint,
    client_config: ClientConfig,
    conns: HashMap<ConnectionHandle, Conn>,
    incoming: usize,
    peers: HashMap<SocketAddr, Peer>,
    /// Connections whose events must be drained.
    dirty: Vec<ConnectionHandle>,
    /// When a datagram last arrived from each peer address on an established connection that
    /// carries the peer's stream to us: the peer is talking to us, however far behind our
    /// reading of its frames is.
    last_datagram: HashMap<SocketAddr, Instant>,
    endpoint_tx: VecDeque<(SocketAddr, Vec<u8>)>,
    frames: VecDeque<(SocketAddr, Bytes)>,
    recv_buffered: usize,
    health_events: Vec<(SocketAddr, Health)>,
    /// Readable streams left unread while `frames` is over its byte budget.
    stalled: Vec<(ConnectionHandle, StreamId)>,
    stats: TransportStats,
    scratch: Vec<u8>,
    events: Vec<quinn_proto::Event>,
    /// Round-robin start of the send batches.
    rr: usize,
    order: Vec<ConnectionHandle>,
    /// `shutdown` was called: new connections are refused.
    closing: bool,
}

struct Shared {
    inner: RefCell<Inner>,
    socket: glommio::net::UdpSocket,
    send_wake: Signal,
    timer_wake: Signal,
    /// The deadline the timer task sleeps until (`None`: no deadline, waits for a signal).
    armed: Cell<Option<Instant>>,
    recv_waker: Cell<Option<Waker>>,
}

struct Handle {
    shared: Rc<Shared>,
    _tasks: Vec<glommio::Task<()>>,
}

/// The peer transport of one node. Clones share it; the last one dropped stops it.
#[derive(Clone)]
pub struct Transport {
    h: Rc<Handle>,
}
