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
use engine::distro::membership::{MemberView, Membership, DEAF_RESET_MS, REACHABLE_EVERY_MS};
use engine::distro::{Health, NodeId};
use tracing::{info, warn};
use wire::peer::{encode_body, Frame};

use crate::config::ClusterArgs;
use crate::peer::members::{find_self, read_cluster_conf, Member};
use crate::peer::transport::{self, Event, Transport, TransportConfig};
use crate::peer::{ClusterConfWatcher, TlsMode};

/// How often a node tells each member it reaches which members it reaches
/// ([`Frame::Reachable`]; the rule itself is the engine's, `distro::membership`).
const REACHABLE_EVERY: Duration = Duration::from_millis(REACHABLE_EVERY_MS);

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

/// Where the peer layer hands what it learns: the membership views it computes and the
/// frames members send. The cores implement it (`core::CorePeerEvents`); this layer does not
/// know them.
pub trait PeerEvents: Clone + 'static {
    /// The membership view changed: every core gets the new one.
    fn members_changed(&self, view: MemberView);
    /// Member `from` sent a frame body.
    fn frame(&self, from: NodeId, body: Bytes);
    /// A new connection to member `peer` is up (first dial, reconnect, or its restart):
    /// whatever was sent to it before may be lost.
    fn peer_up(&self, _peer: NodeId) {}
}

/// Core 0's side of the cluster: the transport and the address book.
pub struct PeerIo {
    transport: Transport,
    by_addr: HashMap<SocketAddr, NodeId>,
    by_node: HashMap<NodeId, SocketAddr>,
    members: Vec<Member>,
    me: NodeId,
    /// Link health, reports, what was heard when: the engine's membership rule.
    membership: Membership,
    /// Origin of the milliseconds the membership is given.
    origin: std::time::Instant,
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

    /// The members besides this node (those with a peer address).
    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.by_node.keys()
    }

    /// Counts a frame that could not be sent.
    pub fn count_dropped(&self) {
        self.info
            .stats
            .frames_dropped
            .fetch_add(1, Ordering::Relaxed);
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
        self.membership.set_peers(self.by_node.keys().cloned());
        self.members = members;
        self.transport.set_peers(addrs);
    }

    /// Milliseconds of `at` since this layer started.
    fn ms(&self, at: std::time::Instant) -> u64 {
        at.checked_duration_since(self.origin)
            .unwrap_or_default()
            .as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.ms(std::time::Instant::now())
    }

    /// The membership view: this node and each peer's health (see
    /// `engine::distro::membership::Membership::view`).
    pub fn view(&self) -> MemberView {
        self.membership.view(self.now_ms())
    }

    /// The view, if it differs from the one the cores have (then they get it).
    fn changed_view(&mut self) -> Option<MemberView> {
        let change = self.membership.changed_view(self.now_ms())?;
        for (n, v) in &change.newly_vouched {
            info!(member = %n, via = %v, "member unreachable from here but reachable through another member: kept SUSPICIOUS");
        }
        for n in &change.no_longer_vouched {
            info!(member = %n, "member no longer vouched for");
        }
        let view = change.view;
        self.info
            .stats
            .vouched
            .store(view.vouched.len() as u64, Ordering::Relaxed);
        self.publish_health(&view);
        Some(view)
    }

    /// The first view, which the caller gives the cores.
    pub fn initial_view(&mut self) -> MemberView {
        self.changed_view().unwrap_or_else(|| self.view())
    }

    /// Peer `from` reports the members it reaches; the new view if that changes it.
    pub fn record_reachable(&mut self, from: NodeId, up: Vec<NodeId>) -> Option<MemberView> {
        let now_ms = self.now_ms();
        if self.membership.handle_report(&from, up, now_ms) {
            if let Some(addr) = self.by_node.get(&from) {
                warn!(member = %from, "the member has not heard from us for {DEAF_RESET_MS} ms although our link to it is up: reconnecting");
                self.info.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                self.transport.reconnect(*addr);
            }
        }
        self.changed_view()
    }

    /// A frame from `from` arrived.
    fn heard_from(&mut self, from: &NodeId) {
        let now_ms = self.now_ms();
        self.membership.handle_heard(from, now_ms);
    }

    /// The members our own links reach and that we hear (what we report to them).
    fn reachable(&mut self) -> Vec<NodeId> {
        // Heard: a frame taken lately, or a datagram of our connection that arrived lately.
        // Frames can wait in the transport for seconds when this node is busy (a snapshot
        // load on a loaded machine); counting only them made busy members drop each other's
        // links every few seconds, which killed the snapshot streams and a join never ended.
        // A zombie connection (session 7) brings no datagram at all.
        let datagrams: Vec<(NodeId, u64)> = self
            .by_node
            .iter()
            .filter_map(|(node, addr)| {
                let at = self.transport.last_datagram(*addr)?;
                Some((node.clone(), self.ms(at)))
            })
            .collect();
        for (node, at) in datagrams {
            self.membership.handle_heard(&node, at);
        }
        self.membership.report(self.now_ms())
    }

    /// The members our own links reach (whom our reports go to).
    fn linked(&self) -> Vec<NodeId> {
        self.membership.linked()
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
/// then broadcasts the first view (events only arrive after that). Later views and every
/// frame go to `sink`.
pub fn start(
    info: Arc<ClusterInfo>,
    sink: impl PeerEvents,
) -> Result<Rc<std::cell::RefCell<PeerIo>>, String> {
    let cfg = TransportConfig::new(info.peer_bind, info.tls.clone());
    let transport = Transport::start(cfg)
        .map_err(|e| format!("peer transport on udp {}: {e}", info.peer_bind))?;
    let mut io = PeerIo {
        transport,
        by_addr: HashMap::new(),
        by_node: HashMap::new(),
        members: Vec::new(),
        me: info.me.clone(),
        membership: Membership::new(info.me.clone()),
        origin: std::time::Instant::now(),
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

    spawn_reporter(io.clone(), sink.clone());
    spawn_events(io.clone(), sink.clone());
    if let Some(path) = info.conf.clone() {
        spawn_conf_watcher(io.clone(), path, sink);
    }
    Ok(io)
}

/// Tells every member we reach whom we reach, and lets reports that went stale expire.
fn spawn_reporter(reporter: Rc<std::cell::RefCell<PeerIo>>, sink: impl PeerEvents) {
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
                sink.members_changed(view);
            }
        }
    })
    .detach();
}

/// Takes the transport's events: frames go to `sink`, link health changes the view.
fn spawn_events(events: Rc<std::cell::RefCell<PeerIo>>, sink: impl PeerEvents) {
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
                    sink.frame(node, body);
                }
                Event::Health { peer, health } => {
                    let up = {
                        let io = events.borrow();
                        io.by_addr.get(&peer).cloned()
                    };
                    if let (Some(node), transport::Health::Up) = (up, health) {
                        sink.peer_up(node);
                    }
                    let view = {
                        let mut io = events.borrow_mut();
                        let Some(node) = io.by_addr.get(&peer).cloned() else {
                            continue;
                        };
                        let h = engine_health(health);
                        if !io.membership.handle_link_health(&node, h) {
                            continue;
                        }
                        info!(member = %node, health = ?h, "member health changed");
                        io.changed_view()
                    };
                    if let Some(view) = view {
                        sink.members_changed(view);
                    }
                }
            }
            glommio::yield_if_needed().await;
        }
    })
    .detach();
}

/// Follows `cluster.conf`: a changed member list changes the view.
fn spawn_conf_watcher(
    io: Rc<std::cell::RefCell<PeerIo>>,
    path: std::path::PathBuf,
    sink: impl PeerEvents,
) {
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
                    warn!("cluster.conf no longer lists this node; keeping the old member list");
                    continue;
                }
                io.set_members(members);
                io.changed_view()
            };
            if let Some(view) = view {
                sink.members_changed(view);
            }
        }
    })
    .detach();
}
