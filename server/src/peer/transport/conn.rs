//! QUIC connection events: datagrams in, handshakes accepted and confirmed, streams read into
//! frames, and queued frames pumped out as datagrams.

use super::*;

impl Inner {
    pub(super) fn on_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
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

    pub(super) fn queue_endpoint_tx(&mut self, to: SocketAddr, data: Vec<u8>) {
        if self.endpoint_tx.len() < MAX_ENDPOINT_TX {
            self.endpoint_tx.push_back((to, data));
        }
    }

    pub(super) fn on_incoming(&mut self, now: Instant, incoming: Incoming, buf: &mut Vec<u8>) {
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
    pub(super) fn process(&mut self, now: Instant) {
        while let Some(ch) = self.dirty.pop() {
            self.process_conn(ch, now);
        }
    }

    pub(super) fn process_conn(&mut self, ch: ConnectionHandle, now: Instant) {
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

    pub(super) fn on_conn_event(
        &mut self,
        ch: ConnectionHandle,
        ev: quinn_proto::Event,
        now: Instant,
    ) {
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
    pub(super) fn check_confirmed(&mut self, ch: ConnectionHandle) {
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

    pub(super) fn read_stream(&mut self, ch: ConnectionHandle, id: StreamId, now: Instant) {
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

    pub(super) fn resume_reads(&mut self, now: Instant) {
        let stalled = std::mem::take(&mut self.stalled);
        for (ch, id) in stalled {
            self.read_stream(ch, id, now);
            self.dirty.push(ch);
        }
    }

    pub(super) fn close_conn(
        &mut self,
        ch: ConnectionHandle,
        now: Instant,
        code: u32,
        reason: &'static str,
    ) {
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

    /// Moves queued frames of Up peers into their streams (as far as flow control allows).
    pub(super) fn pump(&mut self, now: Instant) {
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
    pub(super) fn collect(
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
}
