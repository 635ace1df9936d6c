//! Where a client write goes: applied here, forwarded to the member responsible for its
//! client, routed through a member that still reaches that one, or held back for a while.
//!
//! DISTRO.md, "Writes while the owner is SUSPICIOUS" and "When views disagree". Each rule was
//! added after a fault-harness finding; they live here, not in the server, so the simulator
//! runs the very code the server runs. [`route_client_write`] and [`route_forwarded_write`]
//! are the pure decisions; [`Router`] keeps what is pending (forwards waiting for an answer,
//! deregistrations waiting for their owner) with typed timers, quinn-style: inputs
//! `handle_*`, outputs [`Router::poll_command`], next wake-up [`Router::poll_timeout`].
//!
//! A router belongs to one core of one node. Tokens are the driver's: it allocates one per
//! write, keeps the waiter (a client request, or a peer waiting for a forward's answer), and
//! completes it when the shard answers or a forward's answer arrives.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use super::membership::{MemberView, Reverted};
use super::{Health, NodeId};
use crate::model::ClientId;
use crate::shard::ClientOp;

/// How long a forwarded write may wait for the responsible node before it is applied here
/// (the owner just died and its peers have not noticed yet: an AP registry takes the write,
/// and the owner gets the client back once it answers again).
pub const FORWARD_TIMEOUT_MS: u64 = 1_500;
/// How long a deregistration waits for a SUSPICIOUS owner (a restarting node is back within
/// a few hundred ms; a dead one is declared DOWN later, and then the write is applied here).
pub const DEREGISTER_PATIENCE_MS: u64 = 1_500;

/// The decision for one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Apply it here.
    Local,
    /// Send it to the member responsible for its client, which is UP.
    Forward(NodeId),
    /// The responsible member is SUSPICIOUS: send it through this UP member, which forwards
    /// it on by its own view or applies it if it cannot reach the owner either.
    Detour(NodeId),
    /// A deregistration whose owner is SUSPICIOUS and reached by nobody we reach: decide
    /// again when the view changes, at the latest at `until_ms`.
    Defer {
        /// The last moment to wait.
        until_ms: u64,
    },
}

/// The member other than us that `view` makes responsible for heartbeat client `client`,
/// and its health.
fn responsible_peer<'v>(view: &'v MemberView, client: &ClientId) -> Option<(&'v NodeId, Health)> {
    let members = &view.members;
    if !client.is_heartbeat() || !members.is_cluster() || members.is_mine(client) {
        return None;
    }
    let node = members.responsible_for(client)?;
    members
        .peers
        .iter()
        .find(|(n, _)| n == node)
        .map(|(n, h)| (n, *h))
}

/// Whether the member `view` makes responsible for `client` is another one, and SUSPICIOUS.
pub fn responsible_is_suspicious(view: &MemberView, client: &ClientId) -> bool {
    responsible_peer(view, client).is_some_and(|(_, h)| h == Health::Suspicious)
}

/// Where a write a client sent to this node goes. `patient` is false once a deregistration
/// has waited (it is not deferred twice).
pub fn route_client_write(
    view: &MemberView,
    reverted: Reverted,
    client: &ClientId,
    op: &ClientOp,
    now_ms: u64,
    patient: bool,
) -> Route {
    let Some((owner, health)) = responsible_peer(view, client) else {
        return Route::Local;
    };
    match health {
        Health::Up => Route::Forward(owner.clone()),
        // A DOWN member is not responsible for anything (`Members::responsible_for`).
        Health::Down => Route::Local,
        Health::Suspicious => {
            // A SUSPICIOUS owner still counts for responsibility (so a flapping link does not
            // reshuffle every client), but a write is not sent into a link that just failed.
            let voucher = view.voucher_of(owner);
            if patient
                && !reverted.deregister_patience
                && matches!(op, ClientOp::Deregister { .. })
                && (voucher.is_none() || reverted.detour)
            {
                // Applied here at once, it would be lost: a register or beat applied here
                // leaves a client to hand back to the owner, a deregistration leaves nothing,
                // and an owner that just restarted would restore the client from its
                // snapshot.
                return Route::Defer {
                    until_ms: now_ms + DEREGISTER_PATIENCE_MS,
                };
            }
            if reverted.detour {
                return Route::Local;
            }
            // Another member may still reach the owner (a one-way partition): the write goes
            // through it. Applied here, the owner would stop hearing the client's beats and
            // expire a live instance.
            let via = voucher.or_else(|| {
                view.members
                    .peers
                    .iter()
                    .filter(|(_, h)| *h == Health::Up)
                    .map(|(n, _)| n)
                    .min()
            });
            match via {
                Some(via) => Route::Detour(via.clone()),
                None => Route::Local,
            }
        }
    }
}

/// Where a write forwarded to us by `from` goes: views may disagree (a member is DOWN for
/// the sender but not for us), so it goes on to the member our view makes responsible if
/// that one is UP; otherwise it is applied here (never detoured again: the sender chose us).
/// Each hop goes to a member that ranks higher for the client than the hop before it
/// (rendezvous order is the same on every node, and every view contains its node), so a
/// write never loops.
pub fn route_forwarded_write(view: &MemberView, client: &ClientId, from: &NodeId) -> Route {
    match responsible_peer(view, client) {
        Some((next, Health::Up)) if next != from => Route::Forward(next.clone()),
        _ => Route::Local,
    }
}

/// What the driver is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteCommand {
    /// Apply the write at this node (the client's shard); its answer completes `token`.
    Apply {
        /// The write's token.
        token: u64,
        /// Client.
        client: ClientId,
        /// Operation.
        op: ClientOp,
        /// Applied because the forward got no answer within [`FORWARD_TIMEOUT_MS`].
        fallback: bool,
    },
    /// Send the write to `to`; its answer comes back through [`Router::handle_forward_reply`].
    Forward {
        /// Destination.
        to: NodeId,
        /// The write's token (the forward's id).
        token: u64,
        /// Client.
        client: ClientId,
        /// Operation.
        op: ClientOp,
    },
    /// A beat passes through this node on its way to the owner: tell this node's shard of
    /// the client it is alive (`ShardMsg::BeatRelayed` with `to_claimants`).
    RelayBeat {
        /// Client.
        client: ClientId,
        /// The beat.
        op: ClientOp,
    },
}

/// Delayed work of the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteTimer {
    /// The forward of `token` got no answer in time.
    ForwardTimeout(u64),
    /// The deregistration of `token` has waited long enough.
    PatienceOver(u64),
}

/// Counters of the router's decisions (the driver exports them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Writes sent to another member (forwards and detours).
    pub forwards: u64,
    /// Of which through a member other than the owner.
    pub detours: u64,
    /// Forwards applied here because no answer came in time.
    pub fallbacks: u64,
    /// Deregistrations that waited for a SUSPICIOUS owner.
    pub deferred: u64,
}

/// Most writes waiting in one router (forwards in flight plus deferred deregistrations);
/// beyond it a forward's fallback state is not kept and the write is applied here at once.
pub const MAX_PENDING: usize = 100_000;

/// The routing state of one core. See the module docs.
#[derive(Debug, Default)]
pub struct Router {
    view: MemberView,
    reverted: Reverted,
    /// Forwards waiting for an answer: what to apply here if none comes.
    forwards: BTreeMap<u64, (ClientId, ClientOp)>,
    /// Deregistrations waiting for their owner.
    deferred: BTreeMap<u64, (ClientId, ClientOp)>,
    timers: BinaryHeap<Reverse<(u64, RouteTimer)>>,
    commands: VecDeque<RouteCommand>,
    stats: RouteStats,
}

impl Router {
    /// A router with a standalone view.
    pub fn new() -> Router {
        Router::default()
    }

    /// Turns rules off (tests only; see [`Reverted`]).
    pub fn with_reverted(mut self, reverted: Reverted) -> Router {
        self.reverted = reverted;
        self
    }

    /// The view the router decides by.
    pub fn view(&self) -> &MemberView {
        &self.view
    }

    /// Counters so far.
    pub fn stats(&self) -> RouteStats {
        self.stats
    }

    /// Forwards and deferred deregistrations pending.
    pub fn pending(&self) -> usize {
        self.forwards.len() + self.deferred.len()
    }

    /// Where a client's write would go now (nothing is recorded): lets the driver refuse a
    /// write it would apply here while overloaded before handing it over.
    pub fn route_of(&self, now_ms: u64, client: &ClientId, op: &ClientOp) -> Route {
        route_client_write(&self.view, self.reverted, client, op, now_ms, true)
    }

    /// The membership view changed: deferred deregistrations whose owner is no longer
    /// SUSPICIOUS are routed now.
    pub fn handle_members(&mut self, now_ms: u64, view: MemberView) {
        self.view = view;
        let ready: Vec<u64> = self
            .deferred
            .iter()
            .filter(|(_, (client, _))| !responsible_is_suspicious(&self.view, client))
            .map(|(t, _)| *t)
            .collect();
        for token in ready {
            if let Some((client, op)) = self.deferred.remove(&token) {
                self.route(now_ms, token, client, op, false);
            }
        }
    }

    /// A client sent write `op` of `client` to this node; `token` is its waiter.
    pub fn handle_client_write(
        &mut self,
        now_ms: u64,
        token: u64,
        client: ClientId,
        op: ClientOp,
    ) -> Route {
        self.route(now_ms, token, client, op, true)
    }

    /// Peer `from` forwarded write `op` of `client` to us; `token` is the driver's waiter
    /// for the peer's answer.
    pub fn handle_forwarded_write(
        &mut self,
        now_ms: u64,
        token: u64,
        from: &NodeId,
        client: ClientId,
        op: ClientOp,
    ) -> Route {
        let route = route_forwarded_write(&self.view, &client, from);
        self.execute(now_ms, token, client, op, &route);
        route
    }

    /// The answer to the forward of `token` arrived. Returns whether it was still waited for
    /// (false: it came after the fallback applied the write here; the driver completes the
    /// waiter with whichever answer is first).
    pub fn handle_forward_reply(&mut self, token: u64) -> bool {
        self.forwards.remove(&token).is_some()
    }

    /// Fires the timers due at `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now_ms {
                break;
            }
            self.timers.pop();
            match timer {
                RouteTimer::ForwardTimeout(token) => {
                    let Some((client, mut op)) = self.forwards.remove(&token) else {
                        continue;
                    };
                    if let ClientOp::Beat { reregister, .. } = &mut op {
                        // A late beat must not recreate an instance: the client may have
                        // deregistered meanwhile (the DELETE went through while this beat
                        // waited for a restarting owner). An unknown instance answers "not
                        // found", and a live client re-registers.
                        *reregister = None;
                    }
                    self.stats.fallbacks += 1;
                    self.commands.push_back(RouteCommand::Apply {
                        token,
                        client,
                        op,
                        fallback: true,
                    });
                }
                RouteTimer::PatienceOver(token) => {
                    if let Some((client, op)) = self.deferred.remove(&token) {
                        self.route(now_ms, token, client, op, false);
                    }
                }
            }
        }
    }

    /// The next command for the driver.
    pub fn poll_command(&mut self) -> Option<RouteCommand> {
        self.commands.pop_front()
    }

    /// When [`Router::handle_timeout`] is next due (monotonic ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn route(
        &mut self,
        now_ms: u64,
        token: u64,
        client: ClientId,
        op: ClientOp,
        patient: bool,
    ) -> Route {
        let route = route_client_write(&self.view, self.reverted, &client, &op, now_ms, patient);
        self.execute(now_ms, token, client, op, &route);
        route
    }

    fn execute(&mut self, now_ms: u64, token: u64, client: ClientId, op: ClientOp, route: &Route) {
        match route {
            Route::Local => self.commands.push_back(RouteCommand::Apply {
                token,
                client,
                op,
                fallback: false,
            }),
            Route::Forward(to) | Route::Detour(to) => {
                self.stats.forwards += 1;
                if matches!(route, Route::Detour(_)) {
                    self.stats.detours += 1;
                }
                if matches!(op, ClientOp::Beat { .. }) {
                    self.commands.push_back(RouteCommand::RelayBeat {
                        client: client.clone(),
                        op: op.clone(),
                    });
                }
                if self.pending() < MAX_PENDING {
                    self.forwards.insert(token, (client.clone(), op.clone()));
                    self.timers.push(Reverse((
                        now_ms + FORWARD_TIMEOUT_MS,
                        RouteTimer::ForwardTimeout(token),
                    )));
                }
                self.commands.push_back(RouteCommand::Forward {
                    to: to.clone(),
                    token,
                    client,
                    op,
                });
            }
            Route::Defer { until_ms } => {
                if self.pending() >= MAX_PENDING {
                    // Bounded: with too much waiting already, route as if patience were over.
                    self.route(now_ms, token, client, op, false);
                    return;
                }
                self.stats.deferred += 1;
                self.deferred.insert(token, (client, op));
                self.timers
                    .push(Reverse((*until_ms, RouteTimer::PatienceOver(token))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distro::Members;
    use crate::model::{Host, Instance, ServiceKey};
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn n(i: u8) -> NodeId {
        NodeId::new(&format!("10.0.0.{i}:8848"))
    }

    fn view(peers: &[(u8, Health)], vouched: &[(u8, u8)]) -> MemberView {
        MemberView {
            members: Members {
                me: Some(n(1)),
                peers: peers.iter().map(|(i, h)| (n(*i), *h)).collect(),
            },
            vouched: vouched.iter().map(|(a, b)| (n(*a), n(*b))).collect(),
        }
    }

    /// A heartbeat client that `view` makes node `owner` responsible for.
    fn client_of(view: &MemberView, owner: u8) -> ClientId {
        (0..10_000u16)
            .map(|port| ClientId::V4(Ipv4Addr::new(10, 9, 0, 1), port))
            .find(|c| view.members.responsible_for(c) == Some(&n(owner)))
            .expect("some client lands on every member")
    }

    fn service() -> ServiceKey {
        ServiceKey::new("public", "DEFAULT_GROUP", "svc").expect("valid")
    }

    fn beat(client: &ClientId) -> ClientOp {
        let ClientId::V4(ip, port) = client else {
            unreachable!("heartbeat clients here are v4")
        };
        let instance = Instance::new(Host::V4(*ip), *port, Arc::from("DEFAULT"));
        ClientOp::Beat {
            service: service(),
            host: Host::V4(*ip),
            port: *port,
            cluster: Arc::from("DEFAULT"),
            reregister: Some(instance),
        }
    }

    fn deregister(client: &ClientId) -> ClientOp {
        let ClientId::V4(ip, port) = client else {
            unreachable!("heartbeat clients here are v4")
        };
        ClientOp::Deregister {
            service: service(),
            host: Host::V4(*ip),
            port: *port,
            cluster: Arc::from("DEFAULT"),
        }
    }

    fn drain(r: &mut Router) -> Vec<RouteCommand> {
        std::iter::from_fn(|| r.poll_command()).collect()
    }

    #[test]
    fn a_write_for_an_up_owner_is_forwarded_and_a_beat_also_renews_here() {
        let v = view(&[(2, Health::Up), (3, Health::Up)], &[]);
        let c = client_of(&v, 2);
        let mut r = Router::new();
        r.handle_members(0, v);
        assert_eq!(
            r.handle_client_write(0, 7, c.clone(), beat(&c)),
            Route::Forward(n(2))
        );
        assert_eq!(
            drain(&mut r),
            vec![
                RouteCommand::RelayBeat {
                    client: c.clone(),
                    op: beat(&c)
                },
                RouteCommand::Forward {
                    to: n(2),
                    token: 7,
                    client: c.clone(),
                    op: beat(&c)
                },
            ]
        );
        assert_eq!(r.poll_timeout(), Some(FORWARD_TIMEOUT_MS));
        // The answer arrives: nothing more happens.
        assert!(r.handle_forward_reply(7));
        r.handle_timeout(FORWARD_TIMEOUT_MS);
        assert_eq!(drain(&mut r), vec![]);
    }

    #[test]
    fn a_forward_without_an_answer_is_applied_here_and_a_late_beat_does_not_reregister() {
        let v = view(&[(2, Health::Up)], &[]);
        let c = client_of(&v, 2);
        let mut r = Router::new();
        r.handle_members(0, v);
        r.handle_client_write(100, 1, c.clone(), beat(&c));
        drain(&mut r);
        r.handle_timeout(100 + FORWARD_TIMEOUT_MS - 1);
        assert_eq!(drain(&mut r), vec![]);
        r.handle_timeout(100 + FORWARD_TIMEOUT_MS);
        let mut late = beat(&c);
        if let ClientOp::Beat { reregister, .. } = &mut late {
            *reregister = None;
        }
        assert_eq!(
            drain(&mut r),
            vec![RouteCommand::Apply {
                token: 1,
                client: c,
                op: late,
                fallback: true
            }]
        );
        assert!(
            !r.handle_forward_reply(1),
            "a late answer finds nothing pending"
        );
        assert_eq!(r.stats().fallbacks, 1);
    }

    #[test]
    fn a_write_for_a_suspicious_owner_goes_through_its_voucher_or_the_lowest_up_member() {
        let v = view(
            &[(2, Health::Suspicious), (3, Health::Up), (4, Health::Up)],
            &[(2, 4)],
        );
        let c = client_of(&v, 2);
        let mut r = Router::new();
        r.handle_members(0, v);
        assert_eq!(
            r.handle_client_write(0, 1, c.clone(), beat(&c)),
            Route::Detour(n(4))
        );
        let v = view(
            &[(2, Health::Suspicious), (3, Health::Up), (4, Health::Up)],
            &[],
        );
        r.handle_members(0, v);
        assert_eq!(
            r.handle_client_write(0, 2, c.clone(), beat(&c)),
            Route::Detour(n(3))
        );
        // Nobody UP: applied here (a stand-in).
        r.handle_members(0, view(&[(2, Health::Suspicious)], &[]));
        assert_eq!(
            r.handle_client_write(0, 3, c.clone(), beat(&c)),
            Route::Local
        );
        assert_eq!(r.stats().detours, 2);
    }

    #[test]
    fn a_deregistration_waits_for_a_suspicious_owner_until_it_answers() {
        let v = view(&[(2, Health::Suspicious), (3, Health::Up)], &[]);
        let c = client_of(&v, 2);
        let mut r = Router::new();
        r.handle_members(0, v);
        assert_eq!(
            r.handle_client_write(10, 5, c.clone(), deregister(&c)),
            Route::Defer {
                until_ms: 10 + DEREGISTER_PATIENCE_MS
            }
        );
        assert_eq!(drain(&mut r), vec![]);
        // The owner answers again: the deregistration goes to it at once.
        r.handle_members(300, view(&[(2, Health::Up), (3, Health::Up)], &[]));
        assert_eq!(
            drain(&mut r),
            vec![RouteCommand::Forward {
                to: n(2),
                token: 5,
                client: c.clone(),
                op: deregister(&c)
            }]
        );
        // Its patience timer finds nothing left to do.
        r.handle_timeout(10 + DEREGISTER_PATIENCE_MS);
        assert_eq!(drain(&mut r), vec![]);
    }

    #[test]
    fn a_deregistration_whose_owner_stays_suspicious_is_routed_after_its_patience() {
        let v = view(&[(2, Health::Suspicious), (3, Health::Up)], &[]);
        let c = client_of(&v, 2);
        let mut r = Router::new();
        r.handle_members(0, v);
        r.handle_client_write(0, 5, c.clone(), deregister(&c));
        r.handle_timeout(DEREGISTER_PATIENCE_MS - 1);
        assert_eq!(drain(&mut r), vec![]);
        r.handle_timeout(DEREGISTER_PATIENCE_MS);
        assert_eq!(
            drain(&mut r),
            vec![RouteCommand::Forward {
                to: n(3),
                token: 5,
                client: c.clone(),
                op: deregister(&c)
            }]
        );
    }

    #[test]
    fn a_deregistration_for_a_vouched_owner_goes_through_the_voucher_at_once() {
        let v = view(&[(2, Health::Suspicious), (3, Health::Up)], &[(2, 3)]);
        let c = client_of(&v, 2);
        let mut r = Router::new();
        r.handle_members(0, v);
        assert_eq!(
            r.handle_client_write(0, 1, c.clone(), deregister(&c)),
            Route::Detour(n(3))
        );
    }

    #[test]
    fn reverted_rules_apply_writes_here_at_once() {
        let v = view(&[(2, Health::Suspicious), (3, Health::Up)], &[]);
        let c = client_of(&v, 2);
        let all = Reverted {
            detour: true,
            deregister_patience: true,
            ..Reverted::default()
        };
        assert_eq!(
            route_client_write(&v, all, &c, &deregister(&c), 0, true),
            Route::Local
        );
        assert_eq!(
            route_client_write(&v, all, &c, &beat(&c), 0, true),
            Route::Local
        );
        let no_detour = Reverted {
            detour: true,
            ..Reverted::default()
        };
        assert!(matches!(
            route_client_write(&v, no_detour, &c, &deregister(&c), 0, true),
            Route::Defer { .. }
        ));
    }

    #[test]
    fn a_forwarded_write_goes_on_by_our_view_but_never_back_and_never_detoured() {
        let v = view(&[(2, Health::Up), (3, Health::Up)], &[]);
        let c = client_of(&v, 2);
        assert_eq!(route_forwarded_write(&v, &c, &n(3)), Route::Forward(n(2)));
        assert_eq!(route_forwarded_write(&v, &c, &n(2)), Route::Local);
        let v = view(&[(2, Health::Suspicious), (3, Health::Up)], &[]);
        assert_eq!(route_forwarded_write(&v, &c, &n(3)), Route::Local);
        let mine = client_of(&v, 1);
        assert_eq!(route_forwarded_write(&v, &mine, &n(3)), Route::Local);
    }

    #[test]
    fn connection_clients_and_standalone_nodes_apply_here() {
        let mut r = Router::new();
        let c = ClientId::V4(Ipv4Addr::new(10, 9, 0, 1), 1);
        assert_eq!(
            r.handle_client_write(0, 1, c.clone(), beat(&c)),
            Route::Local
        );
        let v = view(&[(2, Health::Up)], &[]);
        let conn = ClientId::Conn(42);
        assert_eq!(
            route_client_write(&v, Reverted::default(), &conn, &deregister(&c), 0, true),
            Route::Local
        );
    }
}
