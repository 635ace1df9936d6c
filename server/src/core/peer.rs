//! Frames to and from peer nodes: core 0 routes an incoming frame to the core that owns it
//! (undecoded when it is a partition's), the owning core decodes it; outgoing bodies reach
//! the transport through core 0.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use engine::distro::membership::MemberView;
use engine::distro::NodeId;
use engine::shard::{client_shard, ShardMsg};
use tracing::warn;

use super::{with_core, Core, CoreMsg};
use crate::cluster::PeerEvents;

/// The peer layer's events as core 0 takes them: views go to every core, frames are routed
/// ([`Core::route_peer_frame`]).
#[derive(Clone, Copy)]
pub struct CorePeerEvents;

impl PeerEvents for CorePeerEvents {
    fn members_changed(&self, view: MemberView) {
        with_core(|c| c.broadcast_members(view));
    }

    fn frame(&self, from: NodeId, body: Bytes) {
        with_core(|c| c.route_peer_frame(from, body));
    }

    /// Raft calls to `peer` still waiting went out on a connection that is gone: they fail
    /// now and openraft resends them at once (raft `RaftHandle::peer_reconnected`).
    fn peer_up(&self, peer: NodeId) {
        with_core(|c| {
            c.shared
                .cp
                .raft()
                .peer_reconnected(crate::cp::peers::raft_id(&peer))
        });
    }
}

impl Core {
    /// Core 0: a frame arrived from `from`. Distro frames go to the core owning their
    /// partition undecoded; the rest is small and handled here.
    pub fn route_peer_frame(&mut self, from: NodeId, body: Bytes) {
        if let Some(p) = wire::peer::peek_partition(&body) {
            let core = usize::from(p) % self.n;
            if core == self.id {
                self.on_peer_body(from, body);
                self.schedule_flush();
            } else {
                self.send_core(core, CoreMsg::PeerIn { from, body });
            }
            return;
        }
        match wire::peer::decode_frame(&body) {
            Ok(wire::peer::Frame::Forward { id, client, op }) => {
                let core = client_shard(&client, self.n);
                if core == self.id {
                    self.accept_forward(from, id, client, op);
                } else {
                    self.send_core(
                        core,
                        CoreMsg::ForwardIn {
                            from,
                            id,
                            client,
                            op,
                        },
                    );
                }
            }
            Ok(wire::peer::Frame::RelayedBeat { client, op }) => {
                // A beat relayed to us as a claimant of its client (`Command::RelayBeat`).
                if let Some(t) = self.trace.as_ref().and_then(|t| t.get(&client)) {
                    t.event(format_args!("relayed beat from {from}: {op:?}"));
                }
                let owner = client_shard(&client, self.n);
                let to_claimants = false;
                self.route(
                    owner,
                    ShardMsg::BeatRelayed {
                        client,
                        op,
                        to_claimants,
                    },
                );
            }
            Ok(wire::peer::Frame::ForwardReply { id, result }) => {
                let (core, token) = (usize::from(id.core), id.token);
                if core == self.id {
                    self.complete(token, result);
                } else if core < self.n {
                    self.send_core(core, CoreMsg::Reply { token, result });
                }
            }
            Ok(wire::peer::Frame::Reachable { up }) => {
                let view = self
                    .peer_io
                    .as_ref()
                    .and_then(|io| io.borrow_mut().record_reachable(from, up));
                if let Some(view) = view {
                    self.broadcast_members(view);
                }
            }
            Ok(wire::peer::Frame::Raft { payload }) => {
                if let Err(e) = crate::cp::peers::deliver(self.shared.cp.raft(), &from, &payload) {
                    self.refuse_peer_frame(&from, &e);
                }
            }
            Ok(_) => {}
            Err(e) => self.refuse_peer_frame(&from, &e.to_string()),
        }
    }

    fn refuse_peer_frame(&self, from: &NodeId, why: &str) {
        if let Some(info) = &self.shared.cluster {
            let n = info.stats.frames_refused.fetch_add(1, Ordering::Relaxed);
            // Logged sparingly: a broken peer sends many.
            if n.is_power_of_two() {
                warn!(peer = %from, refused = n + 1, "refused a peer frame: {why}");
            }
        }
    }

    pub(super) fn on_peer_body(&mut self, from: NodeId, body: Bytes) {
        match wire::peer::decode_frame(&body) {
            Ok(wire::peer::Frame::Partition { partition, msg }) => {
                let now = self.now();
                if let Some(t) = &self.trace {
                    t.peer_message("from", &from, partition, &msg);
                }
                let label = self
                    .trace
                    .as_ref()
                    .map(|_| format!("{} from {from}", msg_kind(&msg)));
                self.shard.handle_peer(now, from, partition, msg);
                self.trace_step(|| label.unwrap_or_default());
            }
            Ok(_) => self.refuse_peer_frame(&from, "not a partition frame"),
            Err(e) => self.refuse_peer_frame(&from, &e.to_string()),
        }
    }

    /// Sends a frame body to a peer node (through core 0).
    pub(super) fn send_peer(&mut self, to: NodeId, body: Bytes) {
        if let Some(io) = &self.peer_io {
            io.borrow().send(&to, body);
        } else if self.id != 0 {
            self.send_core(0, CoreMsg::PeerOut { to, body });
        }
    }
}

/// A peer message's name, for traces.
fn msg_kind(msg: &engine::distro::PeerMsg) -> &'static str {
    use engine::distro::PeerMsg as M;
    match msg {
        M::Sync { .. } => "Sync",
        M::SyncAck { .. } => "SyncAck",
        M::Digest { .. } => "Digest",
        M::SliceDigests { .. } => "SliceDigests",
        M::SliceClients { .. } => "SliceClients",
        M::Resync { .. } => "Resync",
        M::SnapshotRequest { .. } => "SnapshotRequest",
        M::SnapshotChunk { .. } => "SnapshotChunk",
        M::SnapshotAck { .. } => "SnapshotAck",
    }
}
