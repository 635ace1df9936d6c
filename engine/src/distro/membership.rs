//! Who is a member in good standing, as one node sees it: its own links' health, and what
//! the members it reaches say they reach.
//!
//! DISTRO.md, "Unreachable is not dead". Every [`REACHABLE_EVERY_MS`] a node tells each
//! member its own link reaches which members it reaches and hears ([`Membership::report`]).
//! A member DOWN on our own link that a member we reach (UP) reported reaching within
//! [`REACHABLE_FRESH_MS`] is alive, only not reachable from here: it stays SUSPICIOUS in the
//! view the shards get, so every node keeps the same responsibilities, and writes for its
//! clients go through the member that vouches for it ([`super::route`]).
//!
//! This is policy, so it lives here and not in the transport: the server feeds it transport
//! events and `Reachable` frames, the simulator feeds it the simulated network's, and both
//! run the same rule. Time is an argument in milliseconds of a monotonic clock.

use std::collections::BTreeMap;

use super::{Health, Members, NodeId};

/// How often a node reports whom it reaches to each member it reaches.
pub const REACHABLE_EVERY_MS: u64 = 500;
/// How long a report vouches for the members it lists: several reports, so that a lost
/// frame or two change nothing, and no longer than the idle timeout that would end the
/// reporter's own connection to a dead member.
pub const REACHABLE_FRESH_MS: u64 = 3_000;
/// A member counts as reached (and is listed in our reports) only if something of its own
/// arrived within this: every member sends at least a report every [`REACHABLE_EVERY_MS`].
pub const HEARD_FRESH_MS: u64 = 2_000;
/// A member whose reports leave us out for this long, while our own link to it is UP, does
/// not get what we send: our connection is a zombie and is to be replaced.
pub const DEAF_RESET_MS: u64 = 2_000;

/// The membership as the shards and the router see it, and which members only another
/// member vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MemberView {
    /// This node and each peer's health.
    pub members: Members,
    /// Members this node cannot reach but another member it reaches does, each with one
    /// such member (reported SUSPICIOUS in `members`; writes for them go through it).
    pub vouched: Vec<(NodeId, NodeId)>,
}

impl MemberView {
    /// The member that reaches `node` for us, if only another member reaches it.
    pub fn voucher_of(&self, node: &NodeId) -> Option<&NodeId> {
        self.vouched.iter().find(|(n, _)| n == node).map(|(_, v)| v)
    }
}

/// Switches that turn the rules of this module and of [`super::route`] off one at a time.
/// They exist so that tests can show the simulator catches each finding these rules fixed
/// (a mutation test); the server always runs with the default, every rule on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reverted {
    /// A DOWN member is DOWN, whoever reaches it ("Unreachable is not dead").
    pub vouching: bool,
    /// A write for a SUSPICIOUS owner is applied where it arrived, never routed through an
    /// UP member ("Writes while the owner is SUSPICIOUS").
    pub detour: bool,
    /// A deregistration for a SUSPICIOUS owner is applied at once.
    pub deregister_patience: bool,
    /// A node that did not run for a while (SIGSTOP) keeps its heartbeat clients as its own
    /// whatever its peers did meanwhile: a peer's `Drop` of one never wins over our copy, and
    /// a `Resync` of one is answered with fresh revisions (the pause/`Drop` rule of DISTRO.md,
    /// "Leases and expiry"; carried to the shards by `DistroConfig::reverted`).
    pub pause_drop: bool,
    /// A heartbeat client removed while a member was apart is dropped there at once when it
    /// is back, whatever beats it had (the holds of DISTRO.md, I1 "No flaps"; carried to the
    /// shards by `DistroConfig::reverted`).
    pub holds: bool,
}

/// One node's membership state: its links, the peers' reports, what it heard when.
#[derive(Clone, Debug)]
pub struct Membership {
    me: NodeId,
    /// Each peer's health on our own link to it.
    health: BTreeMap<NodeId, Health>,
    /// What each peer last said it reaches, and when.
    reports: BTreeMap<NodeId, (Vec<NodeId>, u64)>,
    /// When something of each peer last arrived.
    heard: BTreeMap<NodeId, u64>,
    /// Since when each peer's reports leave us out although our link to it is UP.
    deaf_since: BTreeMap<NodeId, u64>,
    /// The view last returned by [`Membership::changed_view`].
    published: Option<MemberView>,
    reverted: Reverted,
}

impl Membership {
    /// A node called `me` with no peers yet.
    pub fn new(me: NodeId) -> Membership {
        Membership {
            me,
            health: BTreeMap::new(),
            reports: BTreeMap::new(),
            heard: BTreeMap::new(),
            deaf_since: BTreeMap::new(),
            published: None,
            reverted: Reverted::default(),
        }
    }

    /// Turns rules off (tests only; see [`Reverted`]).
    pub fn with_reverted(mut self, reverted: Reverted) -> Membership {
        self.reverted = reverted;
        self
    }

    /// The member list changed: forgets removed peers; new ones start SUSPICIOUS (not
    /// dialed yet: counting them keeps responsibility stable while a node starts).
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = NodeId>) {
        let peers: Vec<NodeId> = peers.into_iter().filter(|p| *p != self.me).collect();
        self.health.retain(|n, _| peers.contains(n));
        self.reports.retain(|n, _| peers.contains(n));
        self.heard.retain(|n, _| peers.contains(n));
        self.deaf_since.retain(|n, _| peers.contains(n));
        for p in peers {
            self.health.entry(p).or_insert(Health::Suspicious);
        }
    }

    /// Our own link to `peer` is now `health`. Returns whether that is a change.
    pub fn handle_link_health(&mut self, peer: &NodeId, health: Health) -> bool {
        match self.health.get_mut(peer) {
            Some(h) if *h == health => false,
            Some(h) => {
                *h = health;
                true
            }
            None => false,
        }
    }

    /// Our own link's health to `peer`, if it is a member.
    pub fn link_health(&self, peer: &NodeId) -> Option<Health> {
        self.health.get(peer).copied()
    }

    /// Something of `peer`'s own arrived at `now_ms` (a frame, a datagram).
    pub fn handle_heard(&mut self, peer: &NodeId, now_ms: u64) {
        if let Some(at) = self.heard.get_mut(peer) {
            *at = (*at).max(now_ms);
        } else if self.health.contains_key(peer) {
            self.heard.insert(peer.clone(), now_ms);
        }
    }

    /// Peer `from` reports the members it reaches. Returns whether our connection to it is
    /// to be replaced: its reports have left us out for [`DEAF_RESET_MS`] while our link to
    /// it is UP (found by the chaos harness: after a 15 s SIGSTOP the paused node's old
    /// connection to a peer that had dropped it stayed open, and what it sent vanished).
    pub fn handle_report(&mut self, from: &NodeId, up: Vec<NodeId>, now_ms: u64) -> bool {
        if !self.health.contains_key(from) {
            return false;
        }
        let lists_us = up.contains(&self.me);
        let link_up = self.health.get(from) == Some(&Health::Up);
        let deaf = if lists_us || !link_up {
            self.deaf_since.remove(from);
            false
        } else {
            let since = *self.deaf_since.entry(from.clone()).or_insert(now_ms);
            let deaf = now_ms.saturating_sub(since) >= DEAF_RESET_MS;
            if deaf {
                self.deaf_since.remove(from);
            }
            deaf
        };
        self.reports.insert(from.clone(), (up, now_ms));
        deaf
    }

    /// The members to list in our report: UP on our own link *and* heard from within
    /// [`HEARD_FRESH_MS`]. A link can look UP and carry nothing (the zombie connection of
    /// [`Membership::handle_report`]); listing only members we hear lets such a member see
    /// that we do not hear it.
    pub fn report(&self, now_ms: u64) -> Vec<NodeId> {
        self.health
            .iter()
            .filter(|(n, h)| {
                **h == Health::Up
                    && self
                        .heard
                        .get(*n)
                        .is_some_and(|at| now_ms.saturating_sub(*at) <= HEARD_FRESH_MS)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The members our own links reach (whom our reports go to), sorted.
    pub fn linked(&self) -> Vec<NodeId> {
        self.health
            .iter()
            .filter(|(_, h)| **h == Health::Up)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The view at `now_ms`.
    ///
    /// A peer DOWN on our own link that a member we reach (UP) reported reaching within
    /// [`REACHABLE_FRESH_MS`] stays SUSPICIOUS, through the lowest such member. Without this,
    /// this node would take over the clients of a member the others still see UP, hold a
    /// dead client it took over from a stale copy for a whole beat period, and hand it back
    /// when the partition heals (the chaos harness's asymmetric scenario). Reports are not
    /// passed on: a member is vouched for only by one that reaches it itself, so a dead
    /// member cannot be kept alive by hearsay.
    pub fn view(&self, now_ms: u64) -> MemberView {
        let mut vouched = Vec::new();
        let peers = self
            .health
            .iter()
            .map(|(n, h)| {
                if *h != Health::Down || self.reverted.vouching {
                    return (n.clone(), *h);
                }
                let voucher = self
                    .reports
                    .iter()
                    .filter(|(v, (up, at))| {
                        self.health.get(*v) == Some(&Health::Up)
                            && now_ms.saturating_sub(*at) <= REACHABLE_FRESH_MS
                            && up.contains(n)
                    })
                    .map(|(v, _)| v)
                    .next();
                match voucher {
                    Some(v) => {
                        vouched.push((n.clone(), v.clone()));
                        (n.clone(), Health::Suspicious)
                    }
                    None => (n.clone(), Health::Down),
                }
            })
            .collect();
        MemberView {
            members: Members {
                me: Some(self.me.clone()),
                peers,
            },
            vouched,
        }
    }

    /// The view, if it differs from the one last returned here (then the caller gives it to
    /// the shards and the router), with the members that became or stopped being vouched for.
    pub fn changed_view(&mut self, now_ms: u64) -> Option<ViewChange> {
        let view = self.view(now_ms);
        if self.published.as_ref() == Some(&view) {
            return None;
        }
        let was = self
            .published
            .as_ref()
            .map(|v| v.vouched.clone())
            .unwrap_or_default();
        let newly_vouched = view
            .vouched
            .iter()
            .filter(|(n, _)| !was.iter().any(|(m, _)| m == n))
            .cloned()
            .collect();
        let no_longer_vouched = was
            .iter()
            .filter(|(n, _)| !view.vouched.iter().any(|(m, _)| m == n))
            .map(|(n, _)| n.clone())
            .collect();
        self.published = Some(view.clone());
        Some(ViewChange {
            view,
            newly_vouched,
            no_longer_vouched,
        })
    }
}

/// A new view, and what changed in who vouches for whom (for the logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewChange {
    /// The view.
    pub view: MemberView,
    /// Members now vouched for, with their voucher.
    pub newly_vouched: Vec<(NodeId, NodeId)>,
    /// Members no longer vouched for.
    pub no_longer_vouched: Vec<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> NodeId {
        NodeId::new(&format!("10.0.0.{i}:8848"))
    }

    fn with_links(links: &[(u8, Health)]) -> Membership {
        let mut m = Membership::new(n(1));
        m.set_peers(links.iter().map(|(i, _)| n(*i)));
        for (i, h) in links {
            m.handle_link_health(&n(*i), *h);
        }
        m
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
        let mut m = with_links(&[(2, Health::Down), (3, Health::Up)]);
        let view = m.view(0);
        assert_eq!(health_of(&view, &n(2)), Health::Down);
        assert!(view.vouched.is_empty());
        // Node 3, which we reach, reaches node 2: SUSPICIOUS, through node 3.
        m.handle_report(&n(3), vec![n(1), n(2)], 0);
        let view = m.view(1_000);
        assert_eq!(health_of(&view, &n(2)), Health::Suspicious);
        assert_eq!(health_of(&view, &n(3)), Health::Up);
        assert_eq!(view.vouched, vec![(n(2), n(3))]);
        assert_eq!(view.voucher_of(&n(2)), Some(&n(3)));
        // The report goes stale: DOWN again.
        let view = m.view(REACHABLE_FRESH_MS + 1);
        assert_eq!(health_of(&view, &n(2)), Health::Down);
        assert!(view.vouched.is_empty());
    }

    #[test]
    fn reverted_vouching_leaves_an_unreachable_member_down() {
        let mut m = with_links(&[(2, Health::Down), (3, Health::Up)]).with_reverted(Reverted {
            vouching: true,
            ..Reverted::default()
        });
        m.handle_report(&n(3), vec![n(1), n(2)], 0);
        assert_eq!(health_of(&m.view(0), &n(2)), Health::Down);
    }

    #[test]
    fn only_a_member_we_reach_can_vouch_and_never_by_hearsay() {
        let mut m = with_links(&[(2, Health::Down), (3, Health::Suspicious), (4, Health::Up)]);
        // Node 3 reports node 2, but node 3 is not UP for us: its report proves nothing.
        m.handle_report(&n(3), vec![n(2)], 0);
        // Node 4 reaches node 3 only; node 2 is not in its own report.
        m.handle_report(&n(4), vec![n(3)], 0);
        let view = m.view(0);
        assert_eq!(health_of(&view, &n(2)), Health::Down);
        // A SUSPICIOUS member is left as it is (vouching only lifts DOWN).
        assert_eq!(health_of(&view, &n(3)), Health::Suspicious);
        assert!(view.vouched.is_empty());
    }

    #[test]
    fn we_report_only_members_we_reach_and_hear() {
        let mut m = with_links(&[(2, Health::Up), (3, Health::Up), (4, Health::Suspicious)]);
        m.handle_heard(&n(2), 0);
        m.handle_heard(&n(4), 0);
        // Node 3 is UP on our link but silent; node 4 is heard but not reached.
        assert_eq!(m.report(0), vec![n(2)]);
        assert!(m.report(HEARD_FRESH_MS + 1).is_empty());
        assert_eq!(m.linked(), vec![n(2), n(3)]);
    }

    #[test]
    fn a_member_that_leaves_us_out_long_enough_gets_a_new_connection() {
        let mut m = with_links(&[(2, Health::Up), (3, Health::Down)]);
        // Left out, link up: tracked, no reset yet.
        assert!(!m.handle_report(&n(2), vec![], 0));
        assert!(!m.handle_report(&n(2), vec![], 1_500));
        // One report that lists us starts the count again.
        assert!(!m.handle_report(&n(2), vec![n(1)], 1_900));
        assert!(!m.handle_report(&n(2), vec![], 2_000));
        assert!(!m.handle_report(&n(2), vec![], 3_900));
        assert!(m.handle_report(&n(2), vec![], 4_000));
        // After a reset the count restarts.
        assert!(!m.handle_report(&n(2), vec![], 4_100));
        // Our own link is not up: nothing to replace.
        assert!(!m.handle_report(&n(3), vec![], 0));
        assert!(!m.handle_report(&n(3), vec![], 10_000));
    }

    #[test]
    fn a_view_is_given_out_once_and_says_who_became_vouched_for() {
        let mut m = with_links(&[(2, Health::Down), (3, Health::Up)]);
        assert!(m.changed_view(0).is_some());
        assert_eq!(m.changed_view(10), None);
        m.handle_report(&n(3), vec![n(2)], 20);
        let change = m.changed_view(20).expect("node 2 is vouched for now");
        assert_eq!(change.newly_vouched, vec![(n(2), n(3))]);
        let change = m
            .changed_view(20 + REACHABLE_FRESH_MS + 1)
            .expect("the report went stale");
        assert_eq!(change.no_longer_vouched, vec![n(2)]);
    }

    #[test]
    fn removed_peers_are_forgotten_and_new_ones_start_suspicious() {
        let mut m = with_links(&[(2, Health::Up)]);
        m.set_peers([n(1), n(3)]);
        let view = m.view(0);
        assert_eq!(view.members.peers, vec![(n(3), Health::Suspicious)]);
        assert!(!m.handle_link_health(&n(2), Health::Up), "not a member");
    }
}
