//! The cluster glue: membership, the peer transport, and how peer frames reach shards.
//!
//! One core (core 0) owns the QUIC [`Transport`]: it dials the members, turns transport
//! health into the membership view every shard sees, and routes incoming frames to the core
//! that owns their partition without decoding them ([`wire::peer::peek_partition`]). The
//! owning core decodes and feeds its shard; a shard's outgoing messages are encoded on the
//! shard's own core and handed to core 0 as bytes. So the codec work is spread over every
//! core, and the protocol state of a partition never leaves its core.
//!
//! HTTP writes for a heartbeat client another node is responsible for are forwarded as a
//! [`Frame::Forward`]; the caller's core keeps a waiter and never blocks (Nacos proxies them
//! synchronously, which exhausts its worker threads when a peer is slow).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::distro::{Health, Members, NodeId};
use tracing::{info, warn};
use wire::peer::{encode_frame, Frame};

use crate::config::ClusterArgs;
use crate::core::with_core;
use crate::peer::members::{find_self, read_cluster_conf, Member};
use crate::peer::transport::{self, Event, Transport, TransportConfig};
use crate::peer::{ClusterConfWatcher, TlsMode};

/// How often a node tells each member it reaches which members it reaches
/// ([`Frame::Reachable`]).
const REACHABLE_EVERY: Duration = Duration::from_millis(500);
/// How long such a report vouches for the members it lists: several reports, so that a lost
/// frame or two change nothing, and no longer than the idle timeout that would end the
/// reporter's own connection to a dead member.
const REACHABLE_FRESH: Duration = Duration::from_secs(3);
/// A member counts as reached (and is listed in our reports) only if a frame of its own
/// arrived within this: every member sends at least a report every [`REACHABLE_EVERY`].
const HEARD_FRESH: Duration = Duration::from_secs(2);
/// A member whose reports leave us out for this long, while our own link to it is UP, does
/// not get what we send: our connection is a zombie and is replaced.
const DEAF_RESET: Duration = Duration::from_secs(2);

/// The members to list in our report: UP on our own link *and* heard from lately. A link can
/// look UP and carry nothing — found by the chaos harness: after a 15 s SIGSTOP, the paused
/// node's old connection to a peer that had dropped it stayed open (no idle timeout, no
/// stateless reset arrived), its sync batches vanished into it and the peer lost instances.
/// Listing only members we hear lets such a member see that we do not hear it.
fn members_to_report(
    health: &HashMap<NodeId, Health>,
    heard: &HashMap<NodeId, std::time::Instant>,
    now: std::time::Instant,
) -> Vec<NodeId> {
    let mut up: Vec<NodeId> = health
        .iter()
        .filter(|(n, h)| {
            **h == Health::Up
                && heard
                    .get(*n)
                    .is_some_and(|at| now.saturating_duration_since(*at) <= HEARD_FRESH)
        })
        .map(|(n, _)| n.clone())
        .collect();
    up.sort();
    up
}

/// A report from a member arrived: whether it has left us out for [`DEAF_RESET`] while our
/// link to it was UP (then the link is to be replaced; the tracking restarts).
fn peer_is_deaf_to_us(
    deaf_since: &mut HashMap<NodeId, std::time::Instant>,
    from: &NodeId,
    lists_us: bool,
    our_link_up: bool,
    now: std::time::Instant,
) -> bool {
    if lists_us || !our_link_up {
        deaf_since.remove(from);
        return false;
    }
    let since = *deaf_since.entry(from.clone()).or_insert(now);
    if now.saturating_duration_since(since) >= DEAF_RESET {
        deaf_since.remove(from);
        return true;
    }
    false
}

/// The membership as the shards see it, and which members only another member vouches for.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberView {
    /// This node and each peer's health.
    pub members: Members,
    /// Members this node cannot reach but another member it reaches does, each with one
    /// such member (reported SUSPICIOUS in `members`, and writes for them go through it).
    pub vouched: Vec<(NodeId, NodeId)>,
}

/// The membership view from our own links' `health` and the peers' `reports` of whom they
/// reach.
///
/// Indirect reachability: a peer that is DOWN on our own link but that a member we reach
/// (UP) has reported reaching within [`REACHABLE_FRESH`] is alive, only not reachable from
/// here (a one-way or partial partition). It stays SUSPICIOUS, so it keeps its clients on
/// every node: without this, this node would take over the clients of a member the others
/// still see UP, hold a dead client it took over from a stale copy for a whole beat period,
/// and hand it back when the partition heals (the chaos harness's asymmetric scenario).
/// Reports are not passed on: a member is vouched for only by one that reaches it itself, so
/// a dead member cannot be kept alive by hearsay.
fn member_view(
    me: &NodeId,
    health: &HashMap<NodeId, Health>,
    reports: &HashMap<NodeId, (Vec<NodeId>, std::time::Instant)>,
    now: std::time::Instant,
) -> MemberView {
    let mut vouched = Vec::new();
    let mut peers: Vec<(NodeId, Health)> = health
        .iter()
        .map(|(n, h)| {
            if *h != Health::Down {
                return (n.clone(), *h);
            }
            let voucher = reports
                .iter()
                .filter(|(v, (up, at))| {
                    health.get(*v) == Some(&Health::Up)
                        && now.saturating_duration_since(*at) <= REACHABLE_FRESH
                        && up.contains(n)
                })
                .map(|(v, _)| v)
                .min();
            match voucher {
                Some(v) => {
                    vouched.push((n.clone(), v.clone()));
                    (n.clone(), Health::Suspicious)
                }
                None => (n.clone(), Health::Down),
            }
        })
        .collect();
    peers.sort();
    vouched.sort();
    MemberView {
        members: Members {
            me: Some(me.clone()),
            peers,
        },
        vouched,
    }
}

/// The resolved cluster setup, shared by every core.
pub struct ClusterInfo {
    /// This node.
    pub me: NodeId,
    /// Where this node's peer transport listens.
    pub peer_bind: SocketAddr,
    /// Certificates, or insecure.
    pub tls: TlsMode,
    /// The members at start.
    pub members: Vec<Member>,
    /// `--cluster-conf`, followed for changes.
    pub conf: Option<std::path::PathBuf>,
    /// Live counters for metrics.
    pub stats: ClusterStats,
}

/// Counters and gauges of the peer layer, readable from any core.
#[derive(Default)]
pub struct ClusterStats {
    /// Frame bytes sent / received.
    pub bytes_sent: AtomicU64,
    /// Frame bytes received.
    pub bytes_received: AtomicU64,
    /// Frames sent.
    pub frames_sent: AtomicU64,
    /// Frames received.
    pub frames_received: AtomicU64,
    /// Frames that could not be queued (peer down or queue full); verify repairs them.
    pub frames_dropped: AtomicU64,
    /// Frames refused as malformed or from an unknown address.
    pub frames_refused: AtomicU64,
    /// HTTP writes forwarded to the responsible node.
    pub forwards: AtomicU64,
    /// Forwarded writes applied here because the responsible node did not answer in time.
    pub forward_fallbacks: AtomicU64,
    /// Deregistrations that waited for a SUSPICIOUS owner before being routed.
    pub deferred_deregistrations: AtomicU64,
    /// HTTP writes routed through another member because the owner was SUSPICIOUS to us.
    pub detours: AtomicU64,
    /// Members DOWN on this node's own links but reachable through another member.
    pub vouched: AtomicU64,
    /// Connections to a member replaced because the member did not hear us on them.
    pub reconnects: AtomicU64,
    /// Health of each member (index as in `members_now`): 0 up, 1 suspicious, 2 down.
    pub health: std::sync::Mutex<Vec<(String, u8)>>,
    /// Bytes of verify digests sent (the `Digest` frames).
    pub digest_bytes: AtomicU64,
    /// Number of digest frames sent.
    pub digest_frames: AtomicU64,
}

impl ClusterInfo {
    /// Resolves membership, self and TLS from the flags. Errors are messages for the user.
    pub fn resolve(
        args: &ClusterArgs,
        bind: std::net::IpAddr,
        http_port: u16,
    ) -> Result<ClusterInfo, String> {
        let members = match &args.cluster_conf {
            Some(path) => read_cluster_conf(path)?,
            None => crate::peer::members::parse_members_flag(&args.members.join(","))?,
        };
        let me_index = find_self(&members, bind, http_port)?;
        let me = members[me_index];
        let tls = TlsMode::from_flags(
            args.tls.0.as_deref(),
            args.tls.1.as_deref(),
            args.tls.2.as_deref(),
            args.insecure,
        )?;
        let bind_ip = if bind.is_unspecified() { bind } else { me.ip };
        Ok(ClusterInfo {
            me: node_id(&me),
            peer_bind: SocketAddr::new(bind_ip, args.peer_port),
            tls,
            members,
            conf: args.cluster_conf.clone(),
            stats: ClusterStats::default(),
        })
    }
}

/// The engine's name of a member (`ip:httpPort`).
pub fn node_id(m: &Member) -> NodeId {
    NodeId::new(&m.to_string())
}

/// Health of a member as the engine sees it, from the transport's.
fn engine_health(h: transport::Health) -> Health {
    match h {
        transport::Health::Up => Health::Up,
        transport::Health::Suspicious => Health::Suspicious,
        // Not dialed yet: the first dial decides within a second or two. Counting it as
        // SUSPICIOUS keeps responsibility stable while a node starts.
        transport::Health::Unknown => Health::Suspicious,
        transport::Health::Down => Health::Down,
    }
}

/// Encodes a frame body (without the length prefix the transport adds).
pub fn encode_body(frame: &Frame) -> Bytes {
    let mut out = Vec::with_capacity(256);
    encode_frame(frame, &mut out);
    Bytes::from(out).slice(4..)
}

/// Core 0's side of the cluster: the transport and the address book.
pub struct PeerIo {
    transport: Transport,
    by_addr: HashMap<SocketAddr, NodeId>,
    by_node: HashMap<NodeId, SocketAddr>,
    members: Vec<Member>,
    me: NodeId,
    /// Each peer's health on our own link to it.
    health: HashMap<NodeId, Health>,
    /// What each peer last said it reaches, and when.
    reports: HashMap<NodeId, (Vec<NodeId>, std::time::Instant)>,
    /// When a frame of each peer last arrived.
    heard: HashMap<NodeId, std::time::Instant>,
    /// Since when each peer's reports leave us out although our link to it is UP.
    deaf_since: HashMap<NodeId, std::time::Instant>,
    /// The view the cores have.
    published: Option<MemberView>,
    info: Arc<ClusterInfo>,
}

impl PeerIo {
    /// The transport (a cheap handle), e.g. to close every connection at shutdown.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Sends a frame body to a member; counts what could not be queued.
    pub fn send(&self, to: &NodeId, body: Bytes) {
        let stats = &self.info.stats;
        let Some(addr) = self.by_node.get(to) else {
            stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let len = body.len() as u64;
        match self.transport.send(*addr, body) {
            Ok(()) => {
                stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                stats.bytes_sent.fetch_add(len + 4, Ordering::Relaxed);
            }
            Err(_) => {
                // Sync retries and verify repair what a peer missed; nothing waits on this.
                stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn set_members(&mut self, members: Vec<Member>) {
        self.by_addr.clear();
        self.by_node.clear();
        let mut addrs = Vec::new();
        for m in &members {
            let id = node_id(m);
            if id == self.me {
                continue;
            }
            match m.peer_addr() {
                Ok(addr) => {
                    self.by_addr.insert(addr, id.clone());
                    self.by_node.insert(id, addr);
                    addrs.push(addr);
                }
                Err(e) => warn!("{e}"),
            }
        }
        self.health.retain(|n, _| self.by_node.contains_key(n));
        self.reports.retain(|n, _| self.by_node.contains_key(n));
        for n in self.by_node.keys() {
            self.health.entry(n.clone()).or_insert(Health::Suspicious);
        }
        self.members = members;
        self.transport.set_peers(addrs);
    }

    /// The membership view: this node and each peer's health (see [`member_view`]).
    pub fn view(&self) -> MemberView {
        member_view(
            &self.me,
            &self.health,
            &self.reports,
            std::time::Instant::now(),
        )
    }

    /// The view, if it differs from the one the cores have (then they get it).
    fn changed_view(&mut self) -> Option<MemberView> {
        let view = self.view();
        if self.published.as_ref() == Some(&view) {
            return None;
        }
        let was = self
            .published
            .as_ref()
            .map(|v| v.vouched.clone())
            .unwrap_or_default();
        for (n, v) in &view.vouched {
            if !was.iter().any(|(m, _)| m == n) {
                info!(member = %n, via = %v, "member unreachable from here but reachable through another member: kept SUSPICIOUS");
            }
        }
        for (n, _) in &was {
            if !view.vouched.iter().any(|(m, _)| m == n) {
                info!(member = %n, "member no longer vouched for");
            }
        }
        self.info
            .stats
            .vouched
            .store(view.vouched.len() as u64, Ordering::Relaxed);
        self.published = Some(view.clone());
        self.publish_health(&view);
        Some(view)
    }

    /// The first view, which the caller gives the cores.
    pub fn initial_view(&mut self) -> MemberView {
        self.changed_view().unwrap_or_else(|| self.view())
    }

    /// Peer `from` reports the members it reaches; the new view if that changes it.
    pub fn record_reachable(&mut self, from: NodeId, up: Vec<NodeId>) -> Option<MemberView> {
        let now = std::time::Instant::now();
        let link_up = self.health.get(&from) == Some(&Health::Up);
        if peer_is_deaf_to_us(
            &mut self.deaf_since,
            &from,
            up.contains(&self.me),
            link_up,
            now,
        ) {
            if let Some(addr) = self.by_node.get(&from) {
                warn!(member = %from, "the member has not heard from us for {DEAF_RESET:?} although our link to it is up: reconnecting");
                self.info.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                self.transport.reconnect(*addr);
            }
        }
        self.reports.insert(from, (up, now));
        self.changed_view()
    }

    /// A frame from `from` arrived.
    fn heard_from(&mut self, from: &NodeId) {
        let now = std::time::Instant::now();
        match self.heard.get_mut(from) {
            Some(at) => *at = now,
            None => {
                self.heard.insert(from.clone(), now);
            }
        }
    }

    /// The members our own links reach and that we hear (what we report to them).
    fn reachable(&self) -> Vec<NodeId> {
        // Heard: a frame taken lately, or a datagram of our connection that arrived lately.
        // Frames can wait in the transport for seconds when this node is busy (a snapshot
        // load on a loaded machine); counting only them made busy members drop each other's
        // links every few seconds, which killed the snapshot streams and a join never ended.
        // A zombie connection (session 7) brings no datagram at all.
        let mut heard = self.heard.clone();
        for (node, addr) in &self.by_node {
            if let Some(at) = self.transport.last_datagram(*addr) {
                let entry = heard.entry(node.clone()).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
        members_to_report(&self.health, &heard, std::time::Instant::now())
    }

    /// The members our own links reach (whom our reports go to).
    fn linked(&self) -> Vec<NodeId> {
        let mut up: Vec<NodeId> = self
            .health
            .iter()
            .filter(|(_, h)| **h == Health::Up)
            .map(|(n, _)| n.clone())
            .collect();
        up.sort();
        up
    }

    fn publish_health(&self, view: &MemberView) {
        if let Ok(mut h) = self.info.stats.health.lock() {
            *h = view
                .members
                .peers
                .iter()
                .map(|(n, h)| {
                    let code = match h {
                        Health::Up => 0,
                        Health::Suspicious => 1,
                        Health::Down => 2,
                    };
                    (n.to_string(), code)
                })
                .collect();
        }
    }
}

/// Starts the peer layer on this core (core 0): the transport, the event loop, the
/// `cluster.conf` watcher. Returns the handle the core keeps; the caller installs it and
/// then broadcasts the first view (events only arrive after that).
pub fn start(info: Arc<ClusterInfo>) -> Result<Rc<std::cell::RefCell<PeerIo>>, String> {
    let cfg = TransportConfig::new(info.peer_bind, info.tls.clone());
    let transport = Transport::start(cfg)
        .map_err(|e| format!("peer transport on udp {}: {e}", info.peer_bind))?;
    let mut io = PeerIo {
        transport,
        by_addr: HashMap::new(),
        by_node: HashMap::new(),
        members: Vec::new(),
        me: info.me.clone(),
        health: HashMap::new(),
        reports: HashMap::new(),
        heard: HashMap::new(),
        deaf_since: HashMap::new(),
        published: None,
        info: info.clone(),
    };
    io.set_members(info.members.clone());
    info!(
        me = %info.me,
        peers = io.by_node.len(),
        udp = %info.peer_bind,
        insecure = info.tls.is_insecure(),
        "cluster peer transport started"
    );
    let io = Rc::new(std::cell::RefCell::new(io));

    // Tell every member we reach whom we reach, and let reports that went stale expire.
    let reporter = io.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(REACHABLE_EVERY).await;
            let view = {
                let mut io = reporter.borrow_mut();
                let up = io.reachable();
                let body = encode_body(&Frame::Reachable { up });
                for n in &io.linked() {
                    io.send(n, body.clone());
                }
                io.changed_view()
            };
            if let Some(view) = view {
                with_core(|c| c.broadcast_members(view));
            }
        }
    })
    .detach();

    let events = io.clone();
    glommio::spawn_local(async move {
        loop {
            let transport = events.borrow().transport.clone();
            let event = transport.recv().await;
            match event {
                Event::Frame { from, body } => {
                    // The borrow ends before the core runs: routing may record a
                    // `Reachable` report in this same `PeerIo`.
                    let node = {
                        let mut io = events.borrow_mut();
                        let stats = &io.info.stats;
                        stats.frames_received.fetch_add(1, Ordering::Relaxed);
                        stats
                            .bytes_received
                            .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
                        let node = io.by_addr.get(&from).cloned();
                        match &node {
                            Some(n) => io.heard_from(n),
                            None => {
                                stats.frames_refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        node
                    };
                    let Some(node) = node else {
                        continue;
                    };
                    with_core(|c| c.route_peer_frame(node, body));
                }
                Event::Health { peer, health } => {
                    let view = {
                        let mut io = events.borrow_mut();
                        let Some(node) = io.by_addr.get(&peer).cloned() else {
                            continue;
                        };
                        let h = engine_health(health);
                        if io.health.get(&node) == Some(&h) {
                            continue;
                        }
                        info!(member = %node, health = ?h, "member health changed");
                        io.health.insert(node, h);
                        io.changed_view()
                    };
                    if let Some(view) = view {
                        with_core(|c| c.broadcast_members(view));
                    }
                }
            }
            glommio::yield_if_needed().await;
        }
    })
    .detach();

    if let Some(path) = info.conf.clone() {
        let io = io.clone();
        glommio::spawn_local(async move {
            let mut watcher = match ClusterConfWatcher::new(path.clone()) {
                Ok(w) => w.with_interval(Duration::from_secs(1)),
                Err(e) => {
                    warn!("cannot follow {}: {e}", path.display());
                    return;
                }
            };
            loop {
                let members = watcher.next().await;
                info!(
                    members = %members.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(","),
                    "cluster.conf changed"
                );
                let view = {
                    let mut io = io.borrow_mut();
                    if !members.iter().any(|m| node_id(m) == io.me) {
                        warn!(
                            "cluster.conf no longer lists this node; keeping the old member list"
                        );
                        continue;
                    }
                    io.set_members(members);
                    io.changed_view()
                };
                if let Some(view) = view {
                    with_core(|c| c.broadcast_members(view));
                }
            }
        })
        .detach();
    }
    Ok(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn n(i: u8) -> NodeId {
        NodeId::new(&format!("10.0.0.{i}:8848"))
    }

    fn health_of(view: &MemberView, node: &NodeId) -> Health {
        view.members
            .peers
            .iter()
            .find(|(m, _)| m == node)
            .map(|(_, h)| *h)
            .expect("member in view")
    }

    #[test]
    fn a_member_only_unreachable_from_here_stays_suspicious() {
        let t0 = Instant::now();
        let health = HashMap::from([(n(2), Health::Down), (n(3), Health::Up)]);
        // Nobody vouches: DOWN.
        let view = member_view(&n(1), &health, &HashMap::new(), t0);
        assert_eq!(health_of(&view, &n(2)), Health::Down);
        assert!(view.vouched.is_empty());
        // Node 3, which we reach, reaches node 2: SUSPICIOUS, through node 3.
        let reports = HashMap::from([(n(3), (vec![n(1), n(2)], t0))]);
        let view = member_view(&n(1), &health, &reports, t0 + Duration::from_secs(1));
        assert_eq!(health_of(&view, &n(2)), Health::Suspicious);
        assert_eq!(health_of(&view, &n(3)), Health::Up);
        assert_eq!(view.vouched, vec![(n(2), n(3))]);
        // The report goes stale: DOWN again.
        let view = member_view(
            &n(1),
            &health,
            &reports,
            t0 + REACHABLE_FRESH + Duration::from_millis(1),
        );
        assert_eq!(health_of(&view, &n(2)), Health::Down);
        assert!(view.vouched.is_empty());
    }

    #[test]
    fn only_a_member_we_reach_can_vouch_and_never_by_hearsay() {
        let t0 = Instant::now();
        // Node 3 reports node 2, but node 3 is not UP for us: its report proves nothing.
        let health = HashMap::from([
            (n(2), Health::Down),
            (n(3), Health::Suspicious),
            (n(4), Health::Up),
        ]);
        let reports = HashMap::from([
            (n(3), (vec![n(2)], t0)),
            // Node 4 reaches node 3 only; node 2 is not in its own report.
            (n(4), (vec![n(3)], t0)),
        ]);
        let view = member_view(&n(1), &health, &reports, t0);
        assert_eq!(health_of(&view, &n(2)), Health::Down);
        // A SUSPICIOUS member is left as it is (vouching only lifts DOWN).
        assert_eq!(health_of(&view, &n(3)), Health::Suspicious);
        assert!(view.vouched.is_empty());
    }

    #[test]
    fn we_report_only_members_we_reach_and_hear() {
        let t0 = Instant::now();
        let health = HashMap::from([
            (n(2), Health::Up),
            (n(3), Health::Up),
            (n(4), Health::Suspicious),
        ]);
        let heard = HashMap::from([(n(2), t0), (n(4), t0)]);
        // Node 3 is UP on our link but silent; node 4 is heard but not reached.
        assert_eq!(members_to_report(&health, &heard, t0), vec![n(2)]);
        let later = t0 + HEARD_FRESH + Duration::from_millis(1);
        assert!(members_to_report(&health, &heard, later).is_empty());
    }

    #[test]
    fn a_member_that_leaves_us_out_long_enough_gets_a_new_connection() {
        let t0 = Instant::now();
        let mut deaf = HashMap::new();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Left out, link up: tracked, no reset yet.
        assert!(!peer_is_deaf_to_us(&mut deaf, &n(2), false, true, at(0)));
        assert!(!peer_is_deaf_to_us(
            &mut deaf,
            &n(2),
            false,
            true,
            at(1_500)
        ));
        // One report that lists us starts the count again.
        assert!(!peer_is_deaf_to_us(&mut deaf, &n(2), true, true, at(1_900)));
        assert!(!peer_is_deaf_to_us(
            &mut deaf,
            &n(2),
            false,
            true,
            at(2_000)
        ));
        assert!(!peer_is_deaf_to_us(
            &mut deaf,
            &n(2),
            false,
            true,
            at(3_900)
        ));
        assert!(peer_is_deaf_to_us(&mut deaf, &n(2), false, true, at(4_000)));
        // After a reset the count restarts.
        assert!(!peer_is_deaf_to_us(
            &mut deaf,
            &n(2),
            false,
            true,
            at(4_100)
        ));
        // Our own link is not up: nothing to replace, nothing tracked.
        assert!(!peer_is_deaf_to_us(&mut deaf, &n(3), false, false, at(0)));
        assert!(!peer_is_deaf_to_us(
            &mut deaf,
            &n(3),
            false,
            false,
            at(10_000)
        ));
        assert!(!deaf.contains_key(&n(3)));
    }
}
