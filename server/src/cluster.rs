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
    health: HashMap<NodeId, Health>,
    info: Arc<ClusterInfo>,
}

impl PeerIo {
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
        for n in self.by_node.keys() {
            self.health.entry(n.clone()).or_insert(Health::Suspicious);
        }
        self.members = members;
        self.transport.set_peers(addrs);
    }

    /// The membership view: this node and each peer's health.
    pub fn view(&self) -> Members {
        let mut peers: Vec<(NodeId, Health)> =
            self.health.iter().map(|(n, h)| (n.clone(), *h)).collect();
        peers.sort();
        Members {
            me: Some(self.me.clone()),
            peers,
        }
    }

    fn publish_health(&self) {
        if let Ok(mut h) = self.info.stats.health.lock() {
            *h = self
                .view()
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
    io.publish_health();
    let io = Rc::new(std::cell::RefCell::new(io));

    let events = io.clone();
    glommio::spawn_local(async move {
        loop {
            let transport = events.borrow().transport.clone();
            let event = transport.recv().await;
            match event {
                Event::Frame { from, body } => {
                    let node = events.borrow().by_addr.get(&from).cloned();
                    let stats = &events.borrow().info.stats;
                    stats.frames_received.fetch_add(1, Ordering::Relaxed);
                    stats
                        .bytes_received
                        .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
                    let Some(node) = node else {
                        stats.frames_refused.fetch_add(1, Ordering::Relaxed);
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
                        io.publish_health();
                        io.view()
                    };
                    with_core(|c| c.broadcast_members(view));
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
                    io.publish_health();
                    io.view()
                };
                with_core(|c| c.broadcast_members(view));
            }
        })
        .detach();
    }
    Ok(io)
}
