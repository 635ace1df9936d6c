//! Client writes and where the engine's router sends them: submission, writes forwarded by
//! peers, the router's commands (apply here, forward, relay a beat), and the waiters that
//! complete when the outcome is known (local callers, or the peer that forwarded the write).

use std::sync::atomic::Ordering;

use engine::distro::route::{Route, RouteCommand};
use engine::distro::NodeId;
use engine::model::ClientId;
use engine::shard::{client_shard, ClientOp, OpResult, ReplyTo, ShardMsg};
use futures_channel::oneshot;
use wire::peer::encode_body;

use super::{Core, Overloaded};

impl Core {
    /// Sends a client op where the router says (this node's shard for the client, or the
    /// member responsible for it); the receiver completes once the change is readable (see
    /// `Shard::handle`) or the responsible member answered.
    pub fn submit_client(
        &mut self,
        client: ClientId,
        op: ClientOp,
    ) -> Result<oneshot::Receiver<OpResult>, Overloaded> {
        let now = self.now();
        if self.router.route_of(now.mono_ms, &client, &op) == Route::Local {
            self.admit(client_shard(&client, self.n))?;
        }
        let (reply, rx) = self.waiter();
        let route = self
            .router
            .handle_client_write(now.mono_ms, reply.token, client, op);
        self.count_route(&route);
        self.execute_route_commands();
        Ok(rx)
    }

    /// A write forwarded by a peer: apply it here (never forward it again: the sender's
    /// view made us responsible) and answer once it is readable.
    pub(super) fn accept_forward(
        &mut self,
        from: NodeId,
        id: wire::peer::ForwardId,
        client: ClientId,
        op: ClientOp,
    ) {
        if let Some(t) = self.trace.as_ref().and_then(|t| t.get(&client)) {
            t.event(format_args!("forwarded write from {from}: {op:?}"));
        }
        // Our view decides whether the write goes on (`route_forwarded_write`); the answer
        // reaches the sender through `remote_waiters` whichever way the write goes.
        self.next_token += 1;
        let token = self.next_token;
        self.remote_waiters.insert(token, (from.clone(), id));
        let now = self.now();
        let route = self
            .router
            .handle_forwarded_write(now.mono_ms, token, &from, client, op);
        self.count_route(&route);
        self.execute_route_commands();
    }

    /// Counts a routing decision in the cluster metrics.
    fn count_route(&self, route: &Route) {
        let Some(info) = &self.shared.cluster else {
            return;
        };
        let stats = &info.stats;
        match route {
            Route::Local => {}
            Route::Forward(_) => {
                stats.forwards.fetch_add(1, Ordering::Relaxed);
            }
            Route::Detour(_) => {
                stats.forwards.fetch_add(1, Ordering::Relaxed);
                stats.detours.fetch_add(1, Ordering::Relaxed);
            }
            Route::Defer { .. } => {
                stats
                    .deferred_deregistrations
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Executes what the router decided.
    pub(super) fn execute_route_commands(&mut self) {
        while let Some(cmd) = self.router.poll_command() {
            match cmd {
                RouteCommand::Apply {
                    token,
                    client,
                    op,
                    fallback,
                } => {
                    if fallback {
                        if let Some(info) = &self.shared.cluster {
                            info.stats.forward_fallbacks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let owner = client_shard(&client, self.n);
                    let reply = Some(ReplyTo {
                        shard: self.id,
                        token,
                    });
                    self.route(owner, ShardMsg::Client { client, op, reply });
                }
                RouteCommand::Forward {
                    to,
                    token,
                    client,
                    op,
                } => {
                    if let Some(t) = self.trace.as_ref().and_then(|t| t.get(&client)) {
                        t.event(format_args!("forward {op:?} to {to}"));
                    }
                    // Cores are fewer than 256 (`ForwardId`): `Config` uses at most one per partition.
                    let core = self.id as u8;
                    let id = wire::peer::ForwardId { core, token };
                    let body = encode_body(&wire::peer::Frame::Forward { id, client, op });
                    self.send_peer(to, body);
                }
                RouteCommand::RelayBeat { client, op } => {
                    // A beat forwarded through this node tells the client's shard here that
                    // it is alive (see `ShardMsg::BeatRelayed`).
                    let owner = client_shard(&client, self.n);
                    self.route(
                        owner,
                        ShardMsg::BeatRelayed {
                            client,
                            op,
                            to_claimants: true,
                        },
                    );
                }
            }
        }
    }

    pub(super) fn complete(&mut self, token: u64, result: OpResult) {
        // A forward's answer (or the shard's, after the fallback): whichever comes first.
        self.router.handle_forward_reply(token);
        if let Some((node, id)) = self.remote_waiters.remove(&token) {
            let body = encode_body(&wire::peer::Frame::ForwardReply { id, result });
            self.send_peer(node, body);
            return;
        }
        if let Some(tx) = self.replies.remove(&token) {
            // The requester may have gone (client hung up): nothing to do then.
            let _ = tx.send(result);
        }
    }
}
