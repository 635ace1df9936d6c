//! The three tasks sharing one `Inner` (receive, send, timer) and `Shared::run`, the one place
//! that borrows it: never across an `.await`, and waking the send task when asked.

use super::*;

impl Shared {
    /// Runs `f` on the state, drains the connections it touched, and wakes whoever has work:
    /// the send task (unless it is the caller), the timer task when a deadline moved earlier,
    /// and the `recv` consumer when events wait.
    pub(super) fn run<R>(&self, wake_sender: bool, f: impl FnOnce(&mut Inner, Instant) -> R) -> R {
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

pub(super) async fn recv_task(shared: Rc<Shared>) {
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

pub(super) async fn send_task(shared: Rc<Shared>) {
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

pub(super) async fn timer_task(shared: Rc<Shared>) {
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
