//! UDP push on this core: the driver of the engine's [`UdpPush`] table for the services this
//! core owns, its socket, and the tasks around it.
//!
//! - A list call with `udpPort` (on any core, `http/udp_push.rs`) becomes a
//!   [`Subscription`] for the core owning the service ([`Core::udp_subscribe`]): one mesh
//!   message per list call, never one per packet.
//! - The first target of a service subscribes the shard under [`UDP_SUBSCRIBER`], a subscriber
//!   id no connection has; the shard's pushes to it (after the push merge window, for every
//!   change: local, replicated, persistent) are intercepted in `execute_commands` and handed
//!   to the table here, on the core that published the view.
//! - One socket per core, bound to `--bind` on a random port as Nacos does: acks come back to
//!   the socket that sent the push, so to the core whose table waits for them.
//! - Packets wait in a bounded queue (count and bytes) for the send task; what does not fit,
//!   is larger than a datagram, or fails to send counts as a drop.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::model::Str;
use engine::shard::{ServiceOp, ShardMsg};
use engine::udp_push::{Output, Subscription, Transmit, UdpPush, UdpPushConfig, UdpPushStats};
use engine::view::ServiceView;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use tracing::{debug, warn};
use wire::service_info::{self, NameStyle, Query};
use wire::udp_push;

use super::{with_core, Core, CoreMsg, Shared};

/// The shard subscriber id standing for "this core's UDP targets of the service". Connection
/// ids are `prefix << 40 | n` (see `conn_prefix`): this one would take a prefix of all ones and
/// 2^40 connections.
pub const UDP_SUBSCRIBER: u64 = u64::MAX;

/// Most packets waiting for the send task.
const SEND_QUEUE: usize = 16_384;
/// Most bytes waiting for the send task.
const SEND_QUEUE_BYTES: usize = 32 << 20;
/// How often due resends and expiries are looked for.
const TICK: Duration = Duration::from_millis(20);

/// This core's UDP push state.
pub struct UdpCore {
    table: UdpPush,
    queue: Rc<RefCell<SendQueue>>,
    doorbell: LocalSender<()>,
    /// Packets encoded for the current push: targets with the same filter share them.
    recent: Vec<(u64, Str, bool, Bytes)>,
}

#[derive(Default)]
struct SendQueue {
    packets: VecDeque<(SocketAddr, Bytes)>,
    bytes: usize,
}

/// The per-core table settings from the node's: node-wide bounds are split over the cores
/// (services spread over cores by hash).
pub fn table_config(cfg: &crate::config::UdpPushArgs, cores: usize) -> UdpPushConfig {
    let share = |n: usize| n.div_ceil(cores.max(1));
    UdpPushConfig {
        ttl_ms: cfg.udp_push_ttl_ms.max(1),
        ack_timeout_ms: cfg.udp_push_ack_timeout_ms.max(1),
        max_targets: share(cfg.udp_push_max_targets),
        max_targets_per_source: share(cfg.udp_push_max_per_source),
        packets_per_sec: share(cfg.udp_push_rate as usize).min(u32::MAX as usize) as u32,
    }
}

impl Core {
    /// Opens this core's push socket and starts its tasks (on the core's thread).
    pub(super) fn start_udp(&mut self) {
        let shared = self.shared.clone();
        let bind = SocketAddr::new(shared.cfg.bind, 0);
        let socket = match glommio::net::UdpSocket::bind(bind) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                warn!(%bind, "UDP push disabled on core {}: cannot bind: {e}", self.id);
                return;
            }
        };
        let cfg = table_config(&shared.cfg.udp_push, self.n);
        let table = UdpPush::new(cfg, self.now().mono_ms);
        let _ = shared.udp_stats[self.id].set(table.stats().clone());
        let (doorbell, listen) = local_channel::new_bounded::<()>(1);
        let queue = Rc::new(RefCell::new(SendQueue::default()));
        self.udp = Some(UdpCore {
            table,
            queue: queue.clone(),
            doorbell,
            recent: Vec::new(),
        });
        if let Ok(local) = socket.local_addr() {
            debug!(core = self.id, %local, "UDP push socket");
        }
        glommio::spawn_local(send_task(socket.clone(), queue, listen)).detach();
        glommio::spawn_local(recv_task(socket)).detach();
        glommio::spawn_local(async {
            loop {
                glommio::timer::sleep(TICK).await;
                with_core(|c| c.udp_tick());
            }
        })
        .detach();
    }

    /// A list call's target, for the core owning its service (this one or another).
    pub fn udp_subscribe(&mut self, sub: Subscription) {
        let owner = self.shared.index.owner_of(&sub.service);
        if owner != self.id {
            self.send_core(owner, CoreMsg::UdpSubscribe(Box::new(sub)));
            return;
        }
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        let current = self.shared.index.view(&sub.service);
        let mono_ms = self.shared.now().mono_ms;
        udp.table.handle_subscribe(mono_ms, sub, current);
        self.udp_drain();
    }

    /// The shard pushed `view` to [`UDP_SUBSCRIBER`].
    pub(super) fn udp_view(&mut self, view: Arc<ServiceView>) {
        let mono_ms = self.now().mono_ms;
        if let Some(udp) = self.udp.as_mut() {
            udp.table.handle_view(mono_ms, view);
            self.udp_drain();
        }
    }

    fn udp_tick(&mut self) {
        let mono_ms = self.now().mono_ms;
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        if udp.table.poll_timeout().is_some_and(|at| at <= mono_ms) {
            udp.table.handle_timeout(mono_ms);
            self.udp_drain();
        }
    }

    fn udp_ack(&mut self, from: SocketAddr, bytes: &[u8]) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        match udp_push::decode_ack(bytes) {
            Ok(ack) => {
                udp.table.handle_ack(from, ack.ref_time);
            }
            Err(e) => {
                udp.table
                    .stats()
                    .malformed_acks
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%from, "UDP push: not an ack: {e}");
            }
        }
    }

    /// Executes the table's outputs: shard subscriptions and packets.
    fn udp_drain(&mut self) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        let mut shard_ops = Vec::new();
        let mut queued = false;
        udp.recent.clear();
        while let Some(out) = udp.table.poll_output() {
            match out {
                Output::Subscribe(service) => shard_ops.push((
                    service,
                    ServiceOp::Subscribe {
                        subscriber: UDP_SUBSCRIBER,
                        clusters: "".into(),
                    },
                )),
                Output::Unsubscribe(service) => shard_ops.push((
                    service,
                    ServiceOp::Unsubscribe {
                        subscriber: UDP_SUBSCRIBER,
                    },
                )),
                Output::Transmit(t) => queued |= udp.enqueue(&t),
            }
        }
        if queued {
            let _ = udp.doorbell.try_send(());
        }
        if !shard_ops.is_empty() {
            let now = self.now();
            for (service, op) in shard_ops {
                self.shard.handle(
                    now,
                    ShardMsg::Service {
                        service,
                        op,
                        reply: None,
                    },
                );
            }
            self.schedule_flush();
        }
    }
}

impl UdpCore {
    /// The push targets of `service` (the console's subscriber list).
    pub fn targets_of(
        &self,
        service: &engine::model::ServiceKey,
    ) -> Vec<(std::net::SocketAddr, engine::Str, bool, engine::Str)> {
        self.table.targets_of(service)
    }
}

impl UdpCore {
    /// Encodes (or reuses) the packet and queues it; whether it was queued.
    fn enqueue(&mut self, t: &Transmit) -> bool {
        let stats = self.table.stats().clone();
        let hit = self
            .recent
            .iter()
            .find(|(r, c, h, _)| *r == t.ref_time && *c == t.clusters && *h == t.healthy_only);
        let packet = match hit {
            Some((_, _, _, p)) => p.clone(),
            None => {
                let query = Query {
                    clusters: &t.clusters,
                    healthy_only: t.healthy_only,
                };
                let view = &t.view;
                let packet = service_info::with_service_info(
                    &view.key,
                    Some(view),
                    NameStyle::Grouped,
                    query,
                    view.last_ref_ms,
                    |b| Bytes::from(udp_push::encode_push(b, t.ref_time)),
                );
                if self.recent.len() >= 8 {
                    self.recent.remove(0);
                }
                self.recent.push((
                    t.ref_time,
                    t.clusters.clone(),
                    t.healthy_only,
                    packet.clone(),
                ));
                packet
            }
        };
        if packet.len() > udp_push::MAX_DATAGRAM {
            stats.drop_packet();
            debug!(to = %t.to, bytes = packet.len(), "UDP push larger than a datagram: dropped");
            return false;
        }
        let mut q = self.queue.borrow_mut();
        if q.packets.len() >= SEND_QUEUE || q.bytes + packet.len() > SEND_QUEUE_BYTES {
            stats.drop_packet();
            return false;
        }
        q.bytes += packet.len();
        q.packets.push_back((t.to, packet));
        true
    }
}

async fn send_task(
    socket: Rc<glommio::net::UdpSocket>,
    queue: Rc<RefCell<SendQueue>>,
    listen: LocalReceiver<()>,
) {
    let core = glommio::executor().id();
    while listen.recv().await.is_some() {
        loop {
            let next = {
                let mut q = queue.borrow_mut();
                let next = q.packets.pop_front();
                if let Some((_, p)) = &next {
                    q.bytes -= p.len();
                }
                next
            };
            let Some((to, packet)) = next else {
                break;
            };
            if let Err(e) = socket.send_to(&packet, to).await {
                with_core(|c| {
                    if let Some(u) = &c.udp {
                        u.table.stats().drop_packet();
                    }
                });
                debug!(core, %to, "UDP push send failed: {e}");
            }
        }
    }
}

async fn recv_task(socket: Rc<glommio::net::UdpSocket>) {
    let mut buf = vec![0u8; udp_push::MAX_ACK];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => with_core(|c| c.udp_ack(from, &buf[..n])),
            Err(e) => {
                debug!("UDP push receive failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// `/metrics` lines of UDP push, summed over the cores.
pub fn render_metrics(out: &mut String, shared: &Shared) {
    use std::fmt::Write as _;
    let sum = |f: fn(&UdpPushStats) -> u64| -> u64 {
        shared
            .udp_stats
            .iter()
            .filter_map(|s| s.get())
            .map(|s| f(s))
            .sum()
    };
    let targets: i64 = shared
        .udp_stats
        .iter()
        .filter_map(|s| s.get())
        .map(|s| s.targets.load(Ordering::Relaxed))
        .sum();
    let _ = writeln!(out, "# HELP nacelle_udp_push_targets UDP push targets (HTTP v1 clients that listed a service with udpPort).\n# TYPE nacelle_udp_push_targets gauge\nnacelle_udp_push_targets {targets}");
    type Counter = (&'static str, &'static str, fn(&UdpPushStats) -> u64);
    let counters: [Counter; 10] = [
        ("added", "UDP push targets added.", |s| {
            s.added.load(Ordering::Relaxed)
        }),
        (
            "refused",
            "List calls whose UDP push target was refused (per-core or per-source bound).",
            |s| s.refused.load(Ordering::Relaxed),
        ),
        (
            "expired",
            "UDP push targets forgotten without a list call for the TTL.",
            |s| s.expired.load(Ordering::Relaxed),
        ),
        ("sent", "UDP push packets sent (first sends).", |s| {
            s.pushes.load(Ordering::Relaxed)
        }),
        (
            "resent",
            "UDP push packets sent again after the ack timeout.",
            |s| s.resends.load(Ordering::Relaxed),
        ),
        (
            "acked",
            "UDP push acks that matched a packet in flight.",
            |s| s.acks.load(Ordering::Relaxed),
        ),
        (
            "unmatched_acks",
            "UDP push acks that matched nothing (late, duplicate, forged).",
            |s| s.unmatched_acks.load(Ordering::Relaxed),
        ),
        (
            "malformed_acks",
            "Datagrams on the UDP push sockets that are not acks.",
            |s| s.malformed_acks.load(Ordering::Relaxed),
        ),
        (
            "failed",
            "UDP pushes given up: neither the packet nor its resend was acked.",
            |s| s.failed.load(Ordering::Relaxed),
        ),
        (
            "dropped",
            "UDP push packets not sent (packet rate, queue full, too large, send error).",
            |s| s.drops.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, f) in counters {
        let v = sum(f);
        let _ = writeln!(out, "# HELP nacelle_udp_push_{name}_total {help}\n# TYPE nacelle_udp_push_{name}_total counter\nnacelle_udp_push_{name}_total {v}");
    }
}
