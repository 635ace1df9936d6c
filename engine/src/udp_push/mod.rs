//! UDP push targets of Nacos 1.x HTTP clients (the Node SDK, Go SDK v1, Java 1.x) and the
//! ack/resend state machine of their pushes, for the services one core owns.
//!
//! A client announces a target with `GET /instance/list?udpPort=N`; the core owning the service
//! keeps it ([`UdpPush::handle_subscribe`]) until `ttl_ms` pass without another list call.
//! Each view the service's shard pushes (after the shard's push merge window) becomes one
//! datagram per target ([`UdpPush::handle_view`]) keyed by a `lastRefTime` that the client's
//! ack echoes ([`UdpPush::handle_ack`]); a push not acked within `ack_timeout_ms` is sent once
//! more, and forgotten after a second timeout (Nacos: `UDP_MAX_RETRY_TIMES` = 1).
//!
//! Sans-IO like the shard: time is an argument, timers are data ([`UdpPush::poll_timeout`]),
//! what to send comes out of [`UdpPush::poll_output`]. The driver encodes the packet (the
//! view's `ServiceInfo` JSON, `wire::udp_push`), owns the socket, and subscribes the shard on
//! [`Output::Subscribe`] so that the service's changes are pushed at all.
//!
//! # Why these choices
//! - **One target per (service, address)**, with the filter (clusters, healthy only) of the
//!   latest list call, as Nacos keys its subscribers by `ip:port`.
//! - **Keys from a counter**, not Nacos's `System.nanoTime()`: it passes 2^53 after ~104 days,
//!   beyond what the Node SDK's `JSON.parse` keeps exactly, and the ack would no longer match.
//!   One key per pushed view: every target of a push gets the same bytes when their filters
//!   agree, so the driver encodes (and gzips) once; acks match by (source address, key).
//! - **A newer push replaces an unacked one**: the client needs the newest view, not every
//!   view; so a target has at most one packet in flight and the table stays at one entry per
//!   target, however often the service changes and however silent the client is.
//! - **Bounds**: targets per core, targets per source address (the request's TCP peer, so one
//!   host cannot fill the table for all), and a token bucket of packets per second. A packet
//!   the bucket refuses counts as a drop; its ack timer still runs, so the resend is its second
//!   chance. Timers are one ordered set, at most one expiry and one ack entry per target.
//! - **A new target gets the current view at once when it is newer than what its list call
//!   answered** (the change's push may have left before the target arrived here); otherwise the
//!   list answer already holds it (Nacos 2.x always pushes on a first subscription).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use indexmap::IndexSet;

use crate::model::{ServiceKey, StableHasher, Str};
use crate::view::ServiceView;

#[cfg(test)]
mod tests;

/// Settings of one core's push table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpPushConfig {
    /// A target without a list call for this long is forgotten (ms; Nacos 2.x: 30 s).
    pub ttl_ms: u64,
    /// A push not acked within this long is sent once more; after a second timeout it is
    /// given up (ms; Nacos: 10 s).
    pub ack_timeout_ms: u64,
    /// Most targets this core keeps.
    pub max_targets: usize,
    /// Most targets this core keeps for one source address.
    pub max_targets_per_source: usize,
    /// Most packets per second this core sends (the bucket holds one second's worth).
    pub packets_per_sec: u32,
}

impl Default for UdpPushConfig {
    fn default() -> Self {
        UdpPushConfig {
            ttl_ms: 30_000,
            ack_timeout_ms: 10_000,
            max_targets: 100_000,
            max_targets_per_source: 1_024,
            packets_per_sec: 20_000,
        }
    }
}

/// A list call that names a push target.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    /// Service.
    pub service: ServiceKey,
    /// Where pushes go (the request's source IP by default, or its `clientIP`) and `udpPort`.
    pub target: SocketAddr,
    /// The request's TCP peer address (what the per-source bound counts).
    pub source: IpAddr,
    /// Cluster filter (comma-separated, empty = all).
    pub clusters: Str,
    /// Only healthy instances.
    pub healthy_only: bool,
    /// `app` as the client sent it (for introspection only).
    pub app: Str,
    /// Revision of the view the list call answered (0: the service did not exist).
    pub seen_revision: u64,
}

/// Why a target was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This core holds `max_targets`.
    CoreFull,
    /// This core holds `max_targets_per_source` for the request's source address.
    SourceFull,
}

/// What a list call did to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// A new target.
    Added,
    /// An existing target, refreshed (its filter replaced).
    Refreshed,
    /// Not kept.
    Refused(Refusal),
}

/// One datagram to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The packet's `lastRefTime` (the ack key).
    pub ref_time: u64,
    /// The view whose `ServiceInfo` the packet carries.
    pub view: Arc<ServiceView>,
    /// The target's cluster filter.
    pub clusters: Str,
    /// The target's health filter.
    pub healthy_only: bool,
    /// Whether this is the one resend of an unacked packet.
    pub resend: bool,
}

/// Field by field; views compare by identity (the snapshot pushed), as in
/// [`crate::shard::Command`].
impl PartialEq for Transmit {
    fn eq(&self, o: &Transmit) -> bool {
        self.to == o.to
            && self.ref_time == o.ref_time
            && Arc::ptr_eq(&self.view, &o.view)
            && self.clusters == o.clusters
            && self.healthy_only == o.healthy_only
            && self.resend == o.resend
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// The first target of `service` arrived: subscribe the shard to it, so that its
    /// changes reach [`UdpPush::handle_view`].
    Subscribe(ServiceKey),
    /// The last target of `service` is gone: unsubscribe the shard.
    Unsubscribe(ServiceKey),
    /// Send a packet.
    Transmit(Transmit),
}

/// Counters of one core's table; any core reads them for `/metrics`.
#[derive(Default, Debug)]
pub struct UdpPushStats {
    /// Targets held.
    pub targets: AtomicI64,
    /// Targets added.
    pub added: AtomicU64,
    /// List calls whose target was refused (bounds).
    pub refused: AtomicU64,
    /// Targets forgotten after `ttl_ms` without a list call.
    pub expired: AtomicU64,
    /// Packets handed to the driver (first sends).
    pub pushes: AtomicU64,
    /// Packets handed to the driver as resends.
    pub resends: AtomicU64,
    /// Acks that matched a packet in flight.
    pub acks: AtomicU64,
    /// Acks that matched nothing (late, duplicate, forged).
    pub unmatched_acks: AtomicU64,
    /// Datagrams the driver could not decode as acks.
    pub malformed_acks: AtomicU64,
    /// Pushes given up after the resend was not acked either.
    pub failed: AtomicU64,
    /// Packets not sent: over the packet rate here, or refused by the driver (queue full,
    /// too large, send error) through [`UdpPushStats::drop_packet`].
    pub drops: AtomicU64,
}

impl UdpPushStats {
    /// Counts a packet the driver could not send.
    pub fn drop_packet(&self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// A packet in flight to a target.
struct InFlight {
    ref_time: u64,
    view: Arc<ServiceView>,
    /// When its ack timer fires.
    deadline: u64,
    resent: bool,
}

struct Target {
    service: ServiceKey,
    addr: SocketAddr,
    source: IpAddr,
    clusters: Str,
    healthy_only: bool,
    app: Str,
    last_seen_ms: u64,
    /// When its expiry timer fires (it is re-armed from `last_seen_ms` then).
    expiry_at: u64,
    in_flight: Option<InFlight>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum TimerKind {
    Ack,
    Expiry,
}

/// One token, in the bucket's units (a thousandth of a token per ms and packet/s of rate).
const TOKEN: u64 = 1_000;

/// One core's push targets. See the module docs.
pub struct UdpPush {
    cfg: UdpPushConfig,
    targets: HashMap<u64, Target, StableHasher>,
    by_key: HashMap<(ServiceKey, SocketAddr), u64, StableHasher>,
    /// Targets per service, in arrival order (swap-removed).
    by_service: HashMap<ServiceKey, IndexSet<u64, StableHasher>, StableHasher>,
    per_source: HashMap<IpAddr, usize, StableHasher>,
    /// Packets in flight by (destination, key).
    in_flight: HashMap<(SocketAddr, u64), u64, StableHasher>,
    timers: BTreeSet<(u64, TimerKind, u64)>,
    out: VecDeque<Output>,
    next_id: u64,
    next_ref: u64,
    tokens: u64,
    refilled_ms: u64,
    stats: Arc<UdpPushStats>,
}

impl UdpPush {
    /// An empty table at `now_ms` (monotonic ms) with a full token bucket.
    pub fn new(cfg: UdpPushConfig, now_ms: u64) -> UdpPush {
        UdpPush {
            tokens: u64::from(cfg.packets_per_sec) * TOKEN,
            refilled_ms: now_ms,
            cfg,
            targets: HashMap::default(),
            by_key: HashMap::default(),
            by_service: HashMap::default(),
            per_source: HashMap::default(),
            in_flight: HashMap::default(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            next_id: 0,
            next_ref: 0,
            stats: Arc::new(UdpPushStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<UdpPushStats> {
        &self.stats
    }

    /// Targets held.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether no target is held.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Targets of `service`: (address, clusters, healthy only, app).
    pub fn targets_of(&self, service: &ServiceKey) -> Vec<(SocketAddr, Str, bool, Str)> {
        self.by_service.get(service).map_or_else(Vec::new, |ids| {
            ids.iter()
                .filter_map(|id| self.targets.get(id))
                .map(|t| (t.addr, t.clusters.clone(), t.healthy_only, t.app.clone()))
                .collect()
        })
    }

    /// Next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`UdpPush::handle_timeout`] wants to run next (ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// A list call naming a target; `current` is the service's view as its owner holds it now.
    pub fn handle_subscribe(
        &mut self,
        now_ms: u64,
        sub: Subscription,
        current: Option<Arc<ServiceView>>,
    ) -> SubscribeOutcome {
        if let Some(&id) = self.by_key.get(&(sub.service.clone(), sub.target)) {
            if let Some(t) = self.targets.get_mut(&id) {
                t.last_seen_ms = now_ms;
                t.clusters = sub.clusters;
                t.healthy_only = sub.healthy_only;
                t.app = sub.app;
                return SubscribeOutcome::Refreshed;
            }
        }
        let refusal = if self.targets.len() >= self.cfg.max_targets {
            Some(Refusal::CoreFull)
        } else if self.per_source.get(&sub.source).copied().unwrap_or(0)
            >= self.cfg.max_targets_per_source
        {
            Some(Refusal::SourceFull)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return SubscribeOutcome::Refused(r);
        }
        self.next_id += 1;
        let id = self.next_id;
        let expiry_at = now_ms + self.cfg.ttl_ms;
        self.timers.insert((expiry_at, TimerKind::Expiry, id));
        *self.per_source.entry(sub.source).or_insert(0) += 1;
        self.by_key.insert((sub.service.clone(), sub.target), id);
        let ids = self.by_service.entry(sub.service.clone()).or_default();
        if ids.is_empty() {
            self.out.push_back(Output::Subscribe(sub.service.clone()));
        }
        ids.insert(id);
        self.targets.insert(
            id,
            Target {
                service: sub.service,
                addr: sub.target,
                source: sub.source,
                clusters: sub.clusters,
                healthy_only: sub.healthy_only,
                app: sub.app,
                last_seen_ms: now_ms,
                expiry_at,
                in_flight: None,
            },
        );
        self.stats.targets.fetch_add(1, Ordering::Relaxed);
        self.stats.added.fetch_add(1, Ordering::Relaxed);
        if let Some(view) = current.filter(|v| v.revision > sub.seen_revision) {
            let ref_time = self.next_ref();
            self.send(now_ms, id, ref_time, view);
        }
        SubscribeOutcome::Added
    }

    /// The service's shard pushed `view`: one packet per target of its service.
    pub fn handle_view(&mut self, now_ms: u64, view: Arc<ServiceView>) {
        let Some(ids) = self.by_service.get(&view.key) else {
            return;
        };
        let ids: Vec<u64> = ids.iter().copied().collect();
        let ref_time = self.next_ref();
        for id in ids {
            self.send(now_ms, id, ref_time, view.clone());
        }
    }

    /// A datagram from `from` decoded as an ack of key `ref_time`. Whether it matched a packet
    /// in flight (acks match by address and key, whatever their `type`, as in Nacos).
    pub fn handle_ack(&mut self, from: SocketAddr, ref_time: u64) -> bool {
        let Some(id) = self.in_flight.remove(&(from, ref_time)) else {
            self.stats.unmatched_acks.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if let Some(f) = self.targets.get_mut(&id).and_then(|t| t.in_flight.take()) {
            self.timers.remove(&(f.deadline, TimerKind::Ack, id));
        }
        self.stats.acks.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Fires due timers: resends, give-ups, expiries.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(&(at, kind, id)) = self.timers.first() {
            if at > now_ms {
                break;
            }
            self.timers.pop_first();
            match kind {
                TimerKind::Ack => self.on_ack_timeout(now_ms, id),
                TimerKind::Expiry => self.on_expiry(id),
            }
        }
    }

    fn on_ack_timeout(&mut self, now_ms: u64, id: u64) {
        let Some(t) = self.targets.get_mut(&id) else {
            return;
        };
        let Some(f) = t.in_flight.as_mut() else {
            return;
        };
        if f.resent {
            self.in_flight.remove(&(t.addr, f.ref_time));
            t.in_flight = None;
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        f.resent = true;
        f.deadline = now_ms + self.cfg.ack_timeout_ms;
        self.timers.insert((f.deadline, TimerKind::Ack, id));
        let transmit = Transmit {
            to: t.addr,
            ref_time: f.ref_time,
            view: f.view.clone(),
            clusters: t.clusters.clone(),
            healthy_only: t.healthy_only,
            resend: true,
        };
        if self.take_token(now_ms) {
            self.stats.resends.fetch_add(1, Ordering::Relaxed);
            self.out.push_back(Output::Transmit(transmit));
        }
    }

    fn on_expiry(&mut self, id: u64) {
        let Some(t) = self.targets.get_mut(&id) else {
            return;
        };
        let due = t.last_seen_ms + self.cfg.ttl_ms;
        if due > t.expiry_at {
            // Refreshed since the timer was set: wait for the rest of the new lease.
            t.expiry_at = due;
            self.timers.insert((due, TimerKind::Expiry, id));
            return;
        }
        self.stats.expired.fetch_add(1, Ordering::Relaxed);
        self.remove(id);
    }

    fn remove(&mut self, id: u64) {
        let Some(t) = self.targets.remove(&id) else {
            return;
        };
        self.stats.targets.fetch_sub(1, Ordering::Relaxed);
        self.timers.remove(&(t.expiry_at, TimerKind::Expiry, id));
        if let Some(f) = &t.in_flight {
            self.timers.remove(&(f.deadline, TimerKind::Ack, id));
            self.in_flight.remove(&(t.addr, f.ref_time));
        }
        self.by_key.remove(&(t.service.clone(), t.addr));
        if let Some(n) = self.per_source.get_mut(&t.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&t.source);
            }
        }
        if let Some(ids) = self.by_service.get_mut(&t.service) {
            ids.swap_remove(&id);
            if ids.is_empty() {
                self.by_service.remove(&t.service);
                self.out.push_back(Output::Unsubscribe(t.service));
            }
        }
    }

    fn next_ref(&mut self) -> u64 {
        self.next_ref += 1;
        self.next_ref
    }

    /// Sends `view` to target `id` under key `ref_time`, replacing a packet in flight.
    fn send(&mut self, now_ms: u64, id: u64, ref_time: u64, view: Arc<ServiceView>) {
        let Some(t) = self.targets.get_mut(&id) else {
            return;
        };
        if let Some(old) = t.in_flight.take() {
            self.timers.remove(&(old.deadline, TimerKind::Ack, id));
            self.in_flight.remove(&(t.addr, old.ref_time));
        }
        let deadline = now_ms + self.cfg.ack_timeout_ms;
        self.timers.insert((deadline, TimerKind::Ack, id));
        self.in_flight.insert((t.addr, ref_time), id);
        let transmit = Transmit {
            to: t.addr,
            ref_time,
            view: view.clone(),
            clusters: t.clusters.clone(),
            healthy_only: t.healthy_only,
            resend: false,
        };
        t.in_flight = Some(InFlight {
            ref_time,
            view,
            deadline,
            resent: false,
        });
        if self.take_token(now_ms) {
            self.stats.pushes.fetch_add(1, Ordering::Relaxed);
            self.out.push_back(Output::Transmit(transmit));
        }
    }

    /// Takes one token from the bucket, or counts a drop.
    fn take_token(&mut self, now_ms: u64) -> bool {
        let rate = u64::from(self.cfg.packets_per_sec);
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * rate).min(rate * TOKEN);
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            self.stats.drops.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}
