//! Peer lifecycle on top of the connections: the member list, per-peer queues, health, dials
//! with backoff, and the deadlines the timer task sleeps until.

use super::*;

impl Inner {
    pub(super) fn has_events(&self) -> bool {
        !self.frames.is_empty() || !self.health_events.is_empty()
    }

    pub(super) fn pop_event(&mut self) -> Option<Event> {
        if !self.health_events.is_empty() {
            let (peer, health) = self.health_events.remove(0);
            return Some(Event::Health { peer, health });
        }
        let (from, body) = self.frames.pop_front()?;
        self.recv_buffered -= body.len();
        Some(Event::Frame { from, body })
    }

    pub(super) fn set_peers(&mut self, peers: &[SocketAddr], now: Instant) {
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

    pub(super) fn enqueue(&mut self, to: SocketAddr, body: Bytes) -> Result<bool, SendError> {
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

    pub(super) fn set_health(&mut self, addr: SocketAddr, health: Health) {
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

    /// The outgoing connection to `addr` is gone (lost, timed out, refused): a lost Up
    /// connection makes the peer Suspicious, a failed dial counts towards Down.
    pub(super) fn on_conn_gone(&mut self, addr: SocketAddr, now: Instant, reason: &str) {
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
    pub(super) fn maintain_peer(&mut self, addr: SocketAddr, now: Instant) {
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

    pub(super) fn dial(&mut self, addr: SocketAddr, now: Instant) {
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

    pub(super) fn on_timeout(&mut self, now: Instant) {
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

    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
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

    pub(super) fn close_all(&mut self, now: Instant) {
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
