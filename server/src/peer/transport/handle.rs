//! [`Transport`], the handle: binding the socket, starting the tasks, and the calls the node
//! makes (send, receive, health, shutdown).

use super::tasks::{recv_task, send_task, timer_task};
use super::*;

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

pub(super) fn quic_configs(cfg: &TransportConfig) -> Result<(ServerConfig, ClientConfig), String> {
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
            super::super::tls::derive_secret(
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
