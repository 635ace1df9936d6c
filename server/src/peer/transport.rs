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

fn make_socket(cfg: &TransportConfig) -> Result<glommio::net::UdpSocket, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = cfg.bind;
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| format!("peer transport: UDP socket: {e}"))?;
    // Bursts of a bulk transfer overflow the default ~208 KB buffers even on loopback; the kernel
    // caps these at net.core.{r,w}mem_max, which is only worth a warning.
    let _ = sock.set_recv_buffer_size(cfg.socket_buffer);
    let _ = sock.set_send_buffer_size(cfg.socket_buffer);
    if let Ok(n) = sock.recv_buffer_size() {
        if n < cfg.socket_buffer {
            warn!(
                "peer transport: UDP receive buffer is {n} bytes, not {} (raise net.core.rmem_max)",
                cfg.socket_buffer
            );
        }
    }
    // No SO_REUSEPORT (which glommio's own bind sets): a second node on the same port must fail
    // here instead of silently sharing the datagrams.
    sock.bind(&bind.into())
        .map_err(|e| format!("peer transport: cannot bind UDP {bind}: {e}"))?;
    let mut udp = glommio::net::UdpSocket::from(sock);
    udp.set_buffer_size(MAX_DATAGRAM);
    Ok(udp)
}

fn quic_configs(cfg: &TransportConfig) -> Result<(ServerConfig, ClientConfig), String> {
    let mut t = quinn_proto::TransportConfig::default();
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(cfg.idle_timeout).map_err(|e| format!("idle timeout: {e}"))?,
    ))
    .keep_alive_interval(Some(cfg.keep_alive))
    // Peers send on uni streams only (one per connection; a few spare for overlap).
    .max_concurrent_bidi_streams(VarInt::from_u32(0))
    .max_concurrent_uni_streams(VarInt::from_u32(4))
    .stream_receive_window(VarInt::from_u32(cfg.stream_window))
    .receive_window(VarInt::from_u32(cfg.stream_window.saturating_mul(2)))
    .send_window(u64::from(cfg.send_window))
    .datagram_receive_buffer_size(None);
    let t = Arc::new(t);
    let mut server = ServerConfig::with_crypto(cfg.tls.server_crypto());
    server.transport_config(t.clone()).migration(false);
    let mut client = ClientConfig::new(cfg.tls.client_crypto());
    client.transport_config(t);
    Ok((server, client))
}

impl Transport {
    /// Binds `cfg.bind` and starts the transport's tasks on the current glommio executor (call
    /// it from inside one). Nothing is dialed before [`set_peers`](Self::set_peers).
    pub fn start(cfg: TransportConfig) -> Result<Transport, String> {
        let socket = make_socket(&cfg)?;
        let local = socket
            .local_addr()
            .map_err(|e| format!("peer transport: local address: {e}"))?;
        let (server, client_config) = quic_configs(&cfg)?;
        // The reset key must survive a restart (see `TlsMode::reset_secret`). Without a
        // node key (insecure mode), it is derived from the node's address: as guessable as
        // everything else in that mode.
        let secret = cfg.tls.reset_secret().unwrap_or_else(|| {
            super::tls::derive_secret(
                b"nacelle insecure quic stateless reset v1\0",
                local.to_string().as_bytes(),
            )
        });
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let mut endpoint_config = EndpointConfig::new(Arc::new(reset_key));
        // Connection ids carry a check derived from this key; with a random one the new
        // process would drop the old connections' packets as invalid instead of resetting.
        let cid_key = u64::from_le_bytes(secret[..8].try_into().unwrap_or([0; 8]));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = Endpoint::new(
            Arc::new(endpoint_config),
            Some(Arc::new(server)),
            true,
            None,
        );
        if cfg.tls.is_insecure() {
            warn!(%local, "peer transport without peer authentication (--insecure)");
        }
        info!(%local, "peer transport listening (QUIC)");
        let inner = Inner {
            cfg,
            local,
            endpoint,
            client_config,
            conns: HashMap::new(),
            incoming: 0,
            peers: HashMap::new(),
            dirty: Vec::new(),
            last_datagram: HashMap::new(),
            endpoint_tx: VecDeque::new(),
            frames: VecDeque::new(),
            recv_buffered: 0,
            health_events: Vec::new(),
            stalled: Vec::new(),
            stats: TransportStats::default(),
            scratch: Vec::new(),
            events: Vec::new(),
            rr: 0,
            order: Vec::new(),
            closing: false,
        };
        let shared = Rc::new(Shared {
            inner: RefCell::new(inner),
            socket,
            send_wake: Signal::default(),
            timer_wake: Signal::default(),
            armed: Cell::new(None),
            recv_waker: Cell::new(None),
        });
        let tasks = vec![
            glommio::spawn_local(recv_task(shared.clone())),
            glommio::spawn_local(send_task(shared.clone())),
            glommio::spawn_local(timer_task(shared.clone())),
        ];
        Ok(Transport {
            h: Rc::new(Handle {
                shared,
                _tasks: tasks,
            }),
        })
    }

    /// The bound address (what peers dial). The node knows its own from its settings; the
    /// transport tests, bound to kernel-chosen ports, ask here.
    pub fn local_addr(&self) -> SocketAddr {
        self.h.shared.inner.borrow().local
    }

    /// Sets the peers (`ip:peer_port`, our own address is ignored): new ones are dialed at once,
    /// removed ones are disconnected and their queues dropped.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let peers: Vec<SocketAddr> = peers.into_iter().collect();
        self.h
            .shared
            .run(true, |inner, now| inner.set_peers(&peers, now));
    }

    /// Queues a frame for `to` without waiting. The frame goes out on the current connection
    /// or, while there is none, on the next one.
    pub fn send(&self, to: SocketAddr, body: Bytes) -> Result<(), SendError> {
        let up = {
            let mut inner = self.h.shared.inner.borrow_mut();
            inner.enqueue(to, body)?
        };
        if up {
            self.h.shared.send_wake.notify();
        }
        Ok(())
    }

    /// The next event. Meant for one consumer task at a time (a second one could wait forever).
    pub async fn recv(&self) -> Event {
        poll_fn(|cx| match self.try_recv() {
            Some(ev) => Poll::Ready(ev),
            None => {
                self.h.shared.recv_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        let (ev, resume) = {
            let mut inner = self.h.shared.inner.borrow_mut();
            let ev = inner.pop_event();
            let resume =
                !inner.stalled.is_empty() && inner.recv_buffered <= inner.cfg.max_recv_buffered / 2;
            (ev, resume)
        };
        if resume {
            self.h
                .shared
                .run(true, |inner, now| inner.resume_reads(now));
        }
        ev
    }

    /// The health of a peer ([`Health::Unknown`] for an address that is not a peer). The node
    /// follows health through [`Event::Health`]; the transport tests poll it here.
    pub fn health(&self, peer: SocketAddr) -> Health {
        self.h
            .shared
            .inner
            .borrow()
            .peers
            .get(&peer)
            .map_or(Health::Unknown, |p| p.health)
    }

    /// Bytes queued for a peer and not yet written into its stream (read by the transport
    /// tests; the node does not use it).
    pub fn queued_bytes(&self, peer: SocketAddr) -> usize {
        self.h
            .shared
            .inner
            .borrow()
            .peers
            .get(&peer)
            .map_or(0, |p| p.queued)
    }

    /// Replaces the connection to `peer` (the peer says it does not hear us on it): the
    /// peer goes SUSPICIOUS and is redialed after the first backoff; queued frames wait for
    /// the new connection, frames already handed to the old one are gone (Distro resends).
    pub fn reconnect(&self, peer: SocketAddr) {
        self.h.shared.run(true, |inner, now| {
            let Some(ch) = inner.peers.get(&peer).and_then(|p| p.conn) else {
                return;
            };
            inner.close_conn(ch, now, CLOSE_NORMAL, "peer does not hear us");
            inner.on_conn_gone(peer, now, "the peer does not hear us on it");
        });
    }

    /// When a datagram from `peer` last arrived on a connection carrying its stream to us.
    pub fn last_datagram(&self, peer: SocketAddr) -> Option<Instant> {
        self.h
            .shared
            .inner
            .borrow()
            .last_datagram
            .get(&peer)
            .copied()
    }

    /// Counters since start (read by the transport tests; the node keeps its own peer
    /// counters in `cluster`).
    pub fn stats(&self) -> TransportStats {
        self.h.shared.inner.borrow().stats
    }

    /// Closes every connection (peers see it at once instead of after their idle timeout) and
    /// waits up to `grace` for the close packets to leave. The transport stays usable but has
    /// no peers afterwards.
    pub async fn shutdown(&self, grace: Duration) {
        self.h.shared.run(true, |inner, now| inner.close_all(now));
        let until = Instant::now() + grace;
        while Instant::now() < until {
            let quiet = {
                let inner = self.h.shared.inner.borrow();
                inner.conns.is_empty() && inner.endpoint_tx.is_empty()
            };
            if quiet {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Shared {
    /// Runs `f` on the state, drains the connections it touched, and wakes whoever has work:
    /// the send task (unless it is the caller), the timer task when a deadline moved earlier,
    /// and the `recv` consumer when events wait.
    fn run<R>(&self, wake_sender: bool, f: impl FnOnce(&mut Inner, Instant) -> R) -> R {
        let now = Instant::now();
        let (r, deadline, has_events) = {
            let mut inner = self.inner.borrow_mut();
            let r = f(&mut inner, now);
            inner.process(now);
            (r, inner.next_deadline(), inner.has_events())
        };
        if wake_sender {
            self.send_wake.notify();
        }
        if let Some(d) = deadline {
            if self.armed.get().is_none_or(|a| d < a) {
                self.timer_wake.notify();
            }
        }
        if has_events {
            if let Some(w) = self.recv_waker.take() {
                w.wake();
            }
        }
        r
    }
}

async fn recv_task(shared: Rc<Shared>) {
    let mut block = BytesMut::with_capacity(RX_BLOCK);
    let mut errors = 0u64;
    loop {
        if block.capacity() < MAX_DATAGRAM {
            block = BytesMut::with_capacity(RX_BLOCK);
        }
        block.resize(MAX_DATAGRAM, 0);
        match shared.socket.recv_from(&mut block[..]).await {
            Ok((n, from)) => {
                block.truncate(n);
                let data = block.split();
                shared.run(true, |inner, now| inner.on_datagram(now, from, data));
            }
            Err(e) => {
                // Unconnected UDP sockets report little (no ICMP errors); whatever this is, do
                // not spin on it.
                errors += 1;
                if errors.is_power_of_two() {
                    warn!("peer transport: UDP receive failed ({errors} so far): {e}");
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn send_task(shared: Rc<Shared>) {
    let mut batch: Vec<(SocketAddr, Vec<u8>)> = Vec::with_capacity(SEND_BATCH);
    let mut pool: Vec<Vec<u8>> = Vec::with_capacity(SEND_BATCH);
    loop {
        shared.send_wake.clear();
        shared.run(false, |inner, now| {
            inner.collect(now, &mut batch, &mut pool)
        });
        if batch.is_empty() {
            shared.send_wake.wait().await;
            continue;
        }
        let (mut sent, mut failed) = (0u64, 0u64);
        for (dest, mut buf) in batch.drain(..) {
            match shared.socket.send_to(&buf, dest).await {
                Ok(_) => sent += 1,
                Err(e) => {
                    failed += 1;
                    debug!(%dest, "peer transport: UDP send failed: {e}");
                }
            }
            buf.clear();
            pool.push(buf);
        }
        let mut inner = shared.inner.borrow_mut();
        inner.stats.datagrams_sent += sent;
        inner.stats.send_errors += failed;
    }
}

async fn timer_task(shared: Rc<Shared>) {
    loop {
        let deadline = shared.inner.borrow_mut().next_deadline();
        shared.armed.set(deadline);
        shared.timer_wake.clear();
        let now = Instant::now();
        match deadline {
            Some(d) if d > now => {
                futures_lite::future::or(glommio::timer::sleep(d - now), shared.timer_wake.wait())
                    .await;
            }
            Some(_) => {}
            None => shared.timer_wake.wait().await,
        }
        shared.run(true, |inner, now| inner.on_timeout(now));
    }
}

impl Inner {
    fn has_events(&self) -> bool {
        !self.frames.is_empty() || !self.health_events.is_empty()
    }

    fn pop_event(&mut self) -> Option<Event> {
        if !self.health_events.is_empty() {
            let (peer, health) = self.health_events.remove(0);
            return Some(Event::Health { peer, health });
        }
        let (from, body) = self.frames.pop_front()?;
        self.recv_buffered -= body.len();
        Some(Event::Frame { from, body })
    }

    fn set_peers(&mut self, peers: &[SocketAddr], now: Instant) {
        let local = self.local;
        let removed: Vec<SocketAddr> = self
            .peers
            .keys()
            .filter(|a| !peers.contains(a))
            .copied()
            .collect();
        for addr in removed {
            if let Some(p) = self.peers.remove(&addr) {
                self.stats.bytes_dropped += p.queued as u64;
                if let Some(ch) = p.conn {
                    self.close_conn(ch, now, CLOSE_NORMAL, "peer removed");
                }
            }
            self.health_events.retain(|(a, _)| *a != addr);
            info!(peer = %addr, "peer removed");
        }
        for &addr in peers {
            if addr == local || self.peers.contains_key(&addr) {
                continue;
            }
            info!(peer = %addr, "peer added");
            self.peers
                .insert(addr, Peer::new(now, self.cfg.backoff_min));
            self.maintain_peer(addr, now);
        }
    }

    fn enqueue(&mut self, to: SocketAddr, body: Bytes) -> Result<bool, SendError> {
        if body.len() > self.cfg.max_frame {
            return Err(SendError::TooLarge);
        }
        let max = self.cfg.max_queue_bytes;
        let peer = self.peers.get_mut(&to).ok_or(SendError::UnknownPeer)?;
        if peer.health == Health::Down {
            return Err(SendError::NotConnected);
        }
        let size = 4 + body.len();
        if peer.queued + size > max {
            return Err(SendError::Full);
        }
        peer.tail.reserve(4 + body.len());
        peer.tail.put_u32_le(body.len() as u32);
        // A large frame is copied too: a chunk holding only its length prefix would end
        // mid-frame (see `Peer::drop_partly_written`). Frames are 16 MiB at most and large
        // ones rare (snapshot chunks), so one more copy of them costs little.
        peer.tail.extend_from_slice(&body);
        if peer.tail.len() >= TAIL_TARGET || body.len() > COALESCE_MAX {
            let chunk = peer.tail.split().freeze();
            peer.push_chunk(chunk);
        }
        peer.queued += size;
        self.stats.frames_sent += 1;
        Ok(peer.stream.is_some())
    }

    fn on_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        self.stats.datagrams_received += 1;
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        match self.endpoint.handle(now, from, None, None, data, &mut buf) {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    // Only a connection that carries the peer's stream to us: a peer whose
                    // frames go into a connection we no longer have (a zombie, see cluster)
                    // may still acknowledge our data on another one.
                    if (c.connected || c.established) && !c.readers.is_empty() {
                        self.last_datagram.insert(c.remote, now);
                    }
                    c.conn.handle_event(ev);
                    self.dirty.push(ch);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.on_incoming(now, incoming, &mut buf)
            }
            Some(DatagramEvent::Response(t)) => {
                let size = t.size.min(buf.len());
                self.queue_endpoint_tx(t.destination, buf[..size].to_vec());
            }
            None => {}
        }
        self.scratch = buf;
    }

    fn queue_endpoint_tx(&mut self, to: SocketAddr, data: Vec<u8>) {
        if self.endpoint_tx.len() < MAX_ENDPOINT_TX {
            self.endpoint_tx.push_back((to, data));
        }
    }

    fn on_incoming(&mut self, now: Instant, incoming: Incoming, buf: &mut Vec<u8>) {
        let remote = incoming.remote_address();
        if self.closing {
            // A peer redialing a node that shuts down would otherwise connect to the dying
            // process and count it UP until the restarted one resets the connection.
            buf.clear();
            let t = self.endpoint.refuse(incoming, buf);
            let size = t.size.min(buf.len());
            self.queue_endpoint_tx(t.destination, buf[..size].to_vec());
            return;
        }
        if self.incoming >= self.cfg.max_incoming {
            self.stats.refused += 1;
            warn!(%remote, "peer transport: refusing connection: {} incoming already", self.incoming);
            buf.clear();
            let t = self.endpoint.refuse(incoming, buf);
            let size = t.size.min(buf.len());
            self.queue_endpoint_tx(t.destination, buf[..size].to_vec());
            return;
        }
        buf.clear();
        match self.endpoint.accept(incoming, now, buf, None) {
            Ok((ch, conn)) => {
                self.stats.accepted += 1;
                self.incoming += 1;
                debug!(%remote, "peer transport: incoming connection");
                // A peer dialing us is back (a restart): dial it now rather than when our
                // backoff says, so that our frames to it (its snapshot answers, acks) do not
                // wait for up to `backoff_max`. A dial of ours still unanswered went to the
                // dead process and would only succeed at its next Initial retransmission
                // (a second or more): replace it. Until we see the peer UP, our view and
                // the view of peers that already do disagree about who is responsible for
                // its heartbeat clients, so this window should be as short as a round trip.
                let min = self.cfg.backoff_min;
                // Our pending dial is replaced unless it answers an earlier dial of the peer's:
                // nodes that start together dial each other at once, each replaces its first
                // dial with an answer, and answers are kept, so this cannot ping-pong. (An
                // age rule — replace dials older than 300 ms — kept a restarted peer
                // SUSPICIOUS for 1–2 s when our redial went out just before it was back;
                // found by the chaos harness, where deregistrations waited for it in vain.)
                let stale_dial = self.peers.get(&remote).and_then(|p| {
                    let ch = p.conn?;
                    let pending = p.stream.is_none()
                        && !p.dial_is_answer
                        && self.conns.get(&ch).is_some_and(|c| !c.connected);
                    pending.then_some(ch)
                });
                if let Some(old) = stale_dial {
                    self.close_conn(old, now, CLOSE_DIAL_TIMEOUT, "superseded dial");
                }
                if let Some(p) = self.peers.get_mut(&remote) {
                    if stale_dial.is_some() {
                        p.conn = None;
                    }
                    if p.conn.is_none() {
                        p.next_dial = p.next_dial.min(now);
                        p.backoff = min;
                        p.answer_next = true;
                    }
                }
                self.conns.insert(
                    ch,
                    Conn {
                        conn,
                        role: Role::In,
                        remote,
                        connected: false,
                        established: false,
                        readers: HashMap::new(),
                    },
                );
                self.dirty.push(ch);
            }
            Err(e) => {
                self.stats.refused += 1;
                debug!(%remote, "peer transport: incoming connection failed: {}", e.cause);
                if let Some(t) = e.response {
                    let size = t.size.min(buf.len());
                    self.queue_endpoint_tx(t.destination, buf[..size].to_vec());
                }
            }
        }
    }

    /// Drains the events of every connection touched since the last call.
    fn process(&mut self, now: Instant) {
        while let Some(ch) = self.dirty.pop() {
            self.process_conn(ch, now);
        }
    }

    fn process_conn(&mut self, ch: ConnectionHandle, now: Instant) {
        let mut events = std::mem::take(&mut self.events);
        let drained = {
            let Some(c) = self.conns.get_mut(&ch) else {
                self.events = events;
                return;
            };
            let mut drained = false;
            while let Some(ev) = c.conn.poll_endpoint_events() {
                drained |= ev.is_drained();
                if let Some(back) = self.endpoint.handle_event(ch, ev) {
                    c.conn.handle_event(back);
                }
            }
            while let Some(ev) = c.conn.poll() {
                events.push(ev);
            }
            drained
        };
        for ev in events.drain(..) {
            self.on_conn_event(ch, ev, now);
        }
        self.events = events;
        self.check_confirmed(ch);
        if drained {
            if let Some(c) = self.conns.remove(&ch) {
                self.stalled.retain(|(h, _)| *h != ch);
                match c.role {
                    Role::In => self.incoming -= 1,
                    Role::Out(addr) => {
                        // Normally handled at ConnectionLost already.
                        if self.peers.get(&addr).and_then(|p| p.conn) == Some(ch) {
                            self.on_conn_gone(addr, now, "drained");
                        }
                    }
                }
            }
        }
    }

    fn on_conn_event(&mut self, ch: ConnectionHandle, ev: quinn_proto::Event, now: Instant) {
        use quinn_proto::Event as E;
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        let (role, remote) = (c.role, c.remote);
        let ours = |inner: &Inner, addr: SocketAddr| {
            inner.peers.get(&addr).and_then(|p| p.conn) == Some(ch)
        };
        match ev {
            E::Connected => match role {
                Role::Out(_) => c.connected = true,
                Role::In => {
                    c.established = true;
                    debug!(%remote, "peer transport: incoming connection established");
                }
            },
            E::ConnectionLost { reason } => {
                c.readers.clear();
                let established = c.established;
                match role {
                    Role::Out(addr) => {
                        if ours(self, addr) {
                            self.on_conn_gone(addr, now, &reason.to_string());
                        }
                    }
                    Role::In if !established => {
                        self.stats.refused += 1;
                        // Two members that dial each other at once keep one connection: the
                        // other side closes its own dial (or gives up on it) while we are
                        // still in its handshake. That happens at every start and is not a
                        // failure; a refused certificate or a timeout is.
                        let peer_closed_its_dial = matches!(
                            &reason,
                            quinn_proto::ConnectionError::ConnectionClosed(close)
                                if close.error_code == quinn_proto::TransportErrorCode::APPLICATION_ERROR
                        );
                        if peer_closed_its_dial {
                            debug!(%remote, "peer transport: the peer closed its dial during the handshake: {reason}");
                        } else {
                            warn!(%remote, "peer transport: handshake of an incoming connection failed: {reason}");
                        }
                    }
                    Role::In => {
                        debug!(%remote, "peer transport: incoming connection lost: {reason}");
                    }
                }
            }
            E::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                let mut opened = Vec::new();
                while let Some(id) = c.conn.streams().accept(Dir::Uni) {
                    // A new stream starts on a frame boundary: a new reader.
                    c.readers.insert(id, FrameReader::new(self.cfg.max_frame));
                    opened.push(id);
                }
                for id in opened {
                    self.read_stream(ch, id, now);
                }
            }
            E::Stream(StreamEvent::Readable { id }) => self.read_stream(ch, id, now),
            E::Stream(StreamEvent::Stopped { id, error_code }) => {
                if let Role::Out(addr) = role {
                    warn!(peer = %addr, "peer transport: peer stopped our stream {id} ({error_code})");
                    if ours(self, addr) {
                        self.close_conn(ch, now, CLOSE_STREAM_STOPPED, "stream stopped");
                        self.on_conn_gone(addr, now, "stream stopped");
                    }
                }
            }
            // Writable: the send task pumps every Up peer with queued frames on its next pass,
            // which this very processing wakes up.
            E::Stream(_) | E::HandshakeDataReady | E::DatagramReceived | E::DatagramsUnblocked => {}
        }
    }

    /// An outgoing connection is Up once the server confirmed the handshake (after checking our
    /// certificate): then our stream opens and the queue starts flowing.
    fn check_confirmed(&mut self, ch: ConnectionHandle) {
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        let Role::Out(addr) = c.role else {
            return;
        };
        if !c.connected {
            return;
        }
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        if peer.conn != Some(ch) || peer.stream.is_some() {
            return;
        }
        if c.conn.stats().frame_rx.handshake_done == 0 {
            return;
        }
        let Some(id) = c.conn.streams().open(Dir::Uni) else {
            // The server allows uni streams; not being able to open one is a broken peer.
            warn!(peer = %addr, "peer transport: cannot open a stream to the peer");
            return;
        };
        peer.stream = Some(id);
        peer.failures = 0;
        peer.backoff = self.cfg.backoff_min;
        self.stats.connects += 1;
        info!(peer = %addr, rtt_us = c.conn.rtt().as_micros() as u64, "peer up");
        self.set_health(addr, Health::Up);
    }

    fn read_stream(&mut self, ch: ConnectionHandle, id: StreamId, now: Instant) {
        if self.recv_buffered >= self.cfg.max_recv_buffered {
            if !self.stalled.contains(&(ch, id)) {
                self.stalled.push((ch, id));
            }
            return;
        }
        let Inner {
            conns,
            frames,
            stats,
            recv_buffered,
            dirty,
            ..
        } = self;
        let Some(c) = conns.get_mut(&ch) else {
            return;
        };
        let remote = c.remote;
        let Some(reader) = c.readers.get_mut(&id) else {
            return;
        };
        let mut stream = c.conn.recv_stream(id);
        let mut chunks = match stream.read(true) {
            Ok(chunks) => chunks,
            Err(_) => {
                c.readers.remove(&id);
                return;
            }
        };
        let mut finished = false;
        let mut too_large = None;
        let mut bytes = 0u64;
        let mut deliver = |body: Bytes| {
            *recv_buffered += body.len();
            stats.frames_received += 1;
            frames.push_back((remote, body));
        };
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    bytes += chunk.bytes.len() as u64;
                    if let Err(e) = reader.push(&chunk.bytes, &mut deliver) {
                        too_large = Some(e);
                        break;
                    }
                }
                Ok(None) | Err(ReadError::Reset(_)) => {
                    finished = true;
                    break;
                }
                Err(ReadError::Blocked) => break,
            }
        }
        // Returns flow-control credit to the peer; the send task (woken after this processing)
        // transmits it.
        let _ = chunks.finalize();
        stats.bytes_received += bytes;
        if finished {
            c.readers.remove(&id);
        }
        if let Some(e) = too_large {
            match e {
                PeerDecodeError::TooLarge { len, max } => {
                    warn!(%remote, "peer transport: frame of {len} bytes exceeds {max}: closing the connection");
                }
                other => warn!(%remote, "peer transport: {other}: closing the connection"),
            }
            c.readers.clear();
            c.conn.close(
                now,
                VarInt::from_u32(CLOSE_FRAME_TOO_LARGE),
                Bytes::from_static(b"frame too large"),
            );
            dirty.push(ch);
        }
    }

    fn resume_reads(&mut self, now: Instant) {
        let stalled = std::mem::take(&mut self.stalled);
        for (ch, id) in stalled {
            self.read_stream(ch, id, now);
            self.dirty.push(ch);
        }
    }

    fn set_health(&mut self, addr: SocketAddr, health: Health) {
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        if peer.health == health {
            return;
        }
        peer.health = health;
        match health {
            Health::Down => {
                self.stats.bytes_dropped += peer.queued as u64;
                if peer.queued > 0 {
                    warn!(peer = %addr, bytes = peer.queued, "peer down: dropping its queue");
                } else {
                    warn!(peer = %addr, "peer down");
                }
                peer.clear_queue();
            }
            Health::Suspicious => info!(peer = %addr, "peer suspicious"),
            Health::Up | Health::Unknown => {}
        }
        match self.health_events.iter_mut().find(|(a, _)| *a == addr) {
            Some(e) => e.1 = health,
            None => self.health_events.push((addr, health)),
        }
    }

    fn close_conn(&mut self, ch: ConnectionHandle, now: Instant, code: u32, reason: &'static str) {
        if let Some(c) = self.conns.get_mut(&ch) {
            c.conn.close(
                now,
                VarInt::from_u32(code),
                Bytes::from_static(reason.as_bytes()),
            );
            c.readers.clear();
            self.dirty.push(ch);
        }
    }

    /// The outgoing connection to `addr` is gone (lost, timed out, refused): a lost Up
    /// connection makes the peer Suspicious, a failed dial counts towards Down.
    fn on_conn_gone(&mut self, addr: SocketAddr, now: Instant, reason: &str) {
        let (min, max, fails_for_down, down_after) = (
            self.cfg.backoff_min,
            self.cfg.backoff_max,
            self.cfg.down_after_failures,
            self.cfg.down_after,
        );
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        let was_up = peer.stream.is_some();
        peer.conn = None;
        peer.stream = None;
        let dropped = peer.drop_partly_written();
        if dropped > 0 {
            self.stats.bytes_dropped += dropped as u64;
            debug!(peer = %addr, bytes = dropped, "dropped the rest of a chunk the lost stream had begun");
        }
        let health = if was_up {
            self.stats.connections_lost += 1;
            info!(peer = %addr, "peer connection lost: {reason}");
            peer.failures = 0;
            peer.disconnected_since = now;
            peer.backoff = min;
            Health::Suspicious
        } else {
            self.stats.dial_failures += 1;
            debug!(peer = %addr, "peer dial failed: {reason}");
            peer.failures += 1;
            if peer.failures >= fails_for_down
                || now.saturating_duration_since(peer.disconnected_since) >= down_after
            {
                Health::Down
            } else {
                Health::Suspicious
            }
        };
        peer.next_dial = now + peer.backoff;
        peer.backoff = (peer.backoff * 2).min(max);
        self.set_health(addr, health);
    }

    /// Dial timeouts, the Down rule and (re)dials of one peer.
    fn maintain_peer(&mut self, addr: SocketAddr, now: Instant) {
        let Some(peer) = self.peers.get(&addr) else {
            return;
        };
        if peer.stream.is_some() {
            return;
        }
        if let Some(ch) = peer.conn {
            if now >= peer.dial_started + self.cfg.dial_timeout {
                self.close_conn(ch, now, CLOSE_DIAL_TIMEOUT, "dial timeout");
                self.on_conn_gone(addr, now, "dial timeout");
            }
        }
        let Some(peer) = self.peers.get(&addr) else {
            return;
        };
        if peer.health != Health::Down
            && now.saturating_duration_since(peer.disconnected_since) >= self.cfg.down_after
        {
            self.set_health(addr, Health::Down);
        }
        let Some(peer) = self.peers.get(&addr) else {
            return;
        };
        if peer.conn.is_none() && now >= peer.next_dial {
            self.dial(addr, now);
        }
    }

    fn dial(&mut self, addr: SocketAddr, now: Instant) {
        let server_name = addr.ip().to_string();
        match self
            .endpoint
            .connect(now, self.client_config.clone(), addr, &server_name)
        {
            Ok((ch, conn)) => {
                debug!(peer = %addr, "dialing peer");
                self.conns.insert(
                    ch,
                    Conn {
                        conn,
                        role: Role::Out(addr),
                        remote: addr,
                        connected: false,
                        established: false,
                        readers: HashMap::new(),
                    },
                );
                if let Some(p) = self.peers.get_mut(&addr) {
                    p.conn = Some(ch);
                    p.dial_started = now;
                    p.dial_is_answer = std::mem::take(&mut p.answer_next);
                }
                self.dirty.push(ch);
            }
            Err(e) => {
                warn!(peer = %addr, "cannot dial peer: {e}");
                self.on_conn_gone(addr, now, "connect refused locally");
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        for (ch, c) in self.conns.iter_mut() {
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
                self.dirty.push(*ch);
            }
        }
        let addrs: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for addr in addrs {
            self.maintain_peer(addr, now);
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for c in self.conns.values_mut() {
            if let Some(t) = c.conn.poll_timeout() {
                at(t);
            }
        }
        for p in self.peers.values() {
            if p.stream.is_some() {
                continue;
            }
            match p.conn {
                Some(_) => at(p.dial_started + self.cfg.dial_timeout),
                None => at(p.next_dial),
            }
            if p.health != Health::Down {
                at(p.disconnected_since + self.cfg.down_after);
            }
        }
        next
    }

    /// Moves queued frames of Up peers into their streams (as far as flow control allows).
    fn pump(&mut self, now: Instant) {
        let mut stopped = Vec::new();
        for (addr, peer) in self.peers.iter_mut() {
            let (Some(ch), Some(id)) = (peer.conn, peer.stream) else {
                continue;
            };
            let Some(c) = self.conns.get_mut(&ch) else {
                continue;
            };
            let before = peer.queued;
            loop {
                if peer.queue.is_empty() {
                    if peer.tail.is_empty() {
                        break;
                    }
                    // The stream has room: what was coalesced so far goes now, not later.
                    let chunk = peer.tail.split().freeze();
                    peer.push_chunk(chunk);
                }
                let (front, _) = peer.queue.as_mut_slices();
                let n = front.len();
                match c.conn.send_stream(id).write_chunks(front) {
                    Ok(w) => {
                        peer.queued -= w.bytes;
                        self.stats.bytes_sent += w.bytes as u64;
                        peer.queue.drain(..w.chunks);
                        peer.queue_lens.drain(..w.chunks);
                        if w.chunks < n {
                            break;
                        }
                    }
                    Err(WriteError::Blocked) => break,
                    Err(WriteError::Stopped(_) | WriteError::ClosedStream) => {
                        stopped.push(*addr);
                        break;
                    }
                }
            }
            if peer.queued != before {
                self.dirty.push(ch);
            }
        }
        for addr in stopped {
            if let Some(ch) = self.peers.get(&addr).and_then(|p| p.conn) {
                self.close_conn(ch, now, CLOSE_STREAM_STOPPED, "stream closed");
            }
            self.on_conn_gone(addr, now, "stream closed");
        }
    }

    /// Fills `out` with datagrams to send: endpoint answers first, then round-robin over the
    /// connections.
    fn collect(
        &mut self,
        now: Instant,
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
        pool: &mut Vec<Vec<u8>>,
    ) {
        self.pump(now);
        while out.len() < SEND_BATCH {
            match self.endpoint_tx.pop_front() {
                Some(t) => out.push(t),
                None => break,
            }
        }
        self.order.clear();
        self.order.extend(self.conns.keys().copied());
        // HashMap order is arbitrary but stable between calls without inserts: rotating the
        // start spreads the batch limit over the connections.
        let n = self.order.len();
        if n == 0 {
            return;
        }
        self.rr = (self.rr + 1) % n;
        for i in 0..n {
            if out.len() >= SEND_BATCH {
                break;
            }
            let ch = self.order[(self.rr + i) % n];
            let Some(c) = self.conns.get_mut(&ch) else {
                continue;
            };
            let mut produced = false;
            for _ in 0..SEND_PER_CONN {
                if out.len() >= SEND_BATCH {
                    break;
                }
                let mut buf = pool.pop().unwrap_or_default();
                match c.conn.poll_transmit(now, 1, &mut buf) {
                    Some(t) => {
                        buf.truncate(t.size);
                        out.push((t.destination, buf));
                        produced = true;
                    }
                    None => {
                        pool.push(buf);
                        break;
                    }
                }
            }
            if produced {
                self.dirty.push(ch);
            }
        }
    }

    fn close_all(&mut self, now: Instant) {
        self.closing = true;
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            self.close_conn(ch, now, CLOSE_NORMAL, "shutdown");
        }
        let addrs: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for addr in addrs {
            if let Some(p) = self.peers.remove(&addr) {
                self.stats.bytes_dropped += p.queued as u64;
            }
        }
        self.health_events.clear();
    }
}
