//! One client's story on a real node, for investigations: `NACELLE_TRACE_CLIENT=ip:port`
//! (or several, comma-separated: the chaos harness passes every client it may start) logs (target `nacelle::trace`, level info) every change of what this node holds about
//! that heartbeat client together with the input that caused it, and every peer message,
//! forward or relayed beat that names it, in and out.
//!
//! The simulator has `DISTRO_CLIENT` for the same purpose; this is its counterpart for the
//! chaos harness, where a lost or resurrected instance is found by reading every node's
//! trace side by side. Off unless the variable is set; then it costs one comparison per
//! input.

use engine::distro::{NodeId, PeerMsg, SyncItem};
use engine::model::{ClientId, Host};
use engine::shard::Shard;
use tracing::info;

/// The traced client and what this node held about it at the last look.
pub struct ClientTrace {
    client: ClientId,
    last: String,
    /// [`Shard::client_fingerprint`] at the last look (`None`: not looked yet).
    fingerprint: Option<u64>,
}

/// Every traced client.
pub struct Traces(Vec<ClientTrace>);

impl Traces {
    /// The traces `NACELLE_TRACE_CLIENT` asks for, if any (a malformed address is reported
    /// and skipped: tracing must never stop a node).
    pub fn from_env() -> Option<Traces> {
        let raw = std::env::var("NACELLE_TRACE_CLIENT").ok()?;
        let mut traces = Vec::new();
        for one in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parsed = one.rsplit_once(':').and_then(|(ip, port)| {
                Some(ClientId::for_address(
                    &Host::parse(ip).ok()?,
                    port.parse().ok()?,
                ))
            });
            match parsed {
                Some(client) => traces.push(ClientTrace {
                    client,
                    last: String::new(),
                    fingerprint: None,
                }),
                None => tracing::warn!("NACELLE_TRACE_CLIENT: {one:?} is not ip:port; not traced"),
            }
        }
        (!traces.is_empty()).then_some(Traces(traces))
    }

    /// The trace of `client`, if it is traced.
    pub fn get(&self, client: &ClientId) -> Option<&ClientTrace> {
        self.0.iter().find(|t| &t.client == client)
    }

    /// Every trace.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut ClientTrace> {
        self.0.iter_mut()
    }

    /// Logs a peer message for every traced client it names.
    pub fn peer_message(&self, dir: &str, peer: &NodeId, partition: u16, msg: &PeerMsg) {
        for t in &self.0 {
            t.peer_message(dir, peer, partition, msg);
        }
    }
}

impl ClientTrace {
    /// The traced client.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// Logs the state of the client in `shard` if it changed since the last look.
    /// The silence a description shows grows every millisecond; it is logged only with a
    /// change of something else, or else every input would log every traced client.
    pub fn observe(&mut self, shard: &Shard, input: impl FnOnce() -> String) {
        let fingerprint = shard.client_fingerprint(&self.client);
        if self.fingerprint == Some(fingerprint) {
            return;
        }
        self.fingerprint = Some(fingerprint);
        let now = shard.describe_client(&self.client);
        if now != self.last {
            info!(target: "nacelle::trace", client = %self.client, "{} => {now}  [after {}]", self.last, input());
            self.last = now;
        }
    }

    /// Logs `what` (a message naming the client).
    pub fn event(&self, what: std::fmt::Arguments<'_>) {
        info!(target: "nacelle::trace", client = %self.client, "{what}");
    }

    /// What `msg` says about the client, if it names it.
    pub fn mention(&self, msg: &PeerMsg) -> Option<String> {
        let c = &self.client;
        match msg {
            PeerMsg::Sync { seq, items } => items
                .iter()
                .find(|i| match i {
                    SyncItem::Upsert { client, .. }
                    | SyncItem::Remove { client, .. }
                    | SyncItem::Drop { client, .. } => client == c,
                    SyncItem::Full(s) => &s.client == c,
                })
                .map(|i| format!("Sync seq {seq}: {}", describe_item(i))),
            PeerMsg::SliceClients { as_of, lists, .. } => lists
                .iter()
                .flat_map(|(_, l)| l)
                .find(|h| &h.client == c)
                .map(|h| {
                    format!(
                        "SliceClients as_of {as_of}: listed, hash {:x}",
                        h.state_hash
                    )
                }),
            PeerMsg::Resync { clients } => {
                clients.contains(c).then(|| "Resync: asked for".to_string())
            }
            PeerMsg::SnapshotChunk { clients, .. } => clients
                .iter()
                .find(|(_, s)| &s.client == c)
                .map(|(owner, s)| format!("SnapshotChunk: owner {owner}, rev {}", s.rev)),
            _ => None,
        }
    }

    /// Logs a peer message if it names the client.
    pub fn peer_message(&self, dir: &str, peer: &NodeId, partition: u16, msg: &PeerMsg) {
        if let Some(m) = self.mention(msg) {
            self.event(format_args!("{dir} {peer} p{partition}: {m}"));
        }
    }
}

fn describe_item(item: &SyncItem) -> String {
    match item {
        SyncItem::Upsert { entry, .. } => format!(
            "Upsert {} rev {} ({} instances)",
            entry.service.name(),
            entry.rev,
            entry.publish.len()
        ),
        SyncItem::Remove { service, rev, .. } => {
            format!("Remove {} rev {rev}", service.name())
        }
        SyncItem::Full(s) => format!("Full rev {} ({} entries)", s.rev, s.entries.len()),
        SyncItem::Drop { rev, .. } => format!("Drop rev {rev}"),
    }
}
