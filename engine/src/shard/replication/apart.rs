//! Removals held back from members that were apart (DISTRO.md, I1 "No flaps" and
//! "Unreachable is not dead… nor is silence"): a heartbeat client that this node removed,
//! or refuses to take back, because no beat reached it proves nothing to a member this node
//! could not hear meanwhile — the beats may have gone there. Such a member does not get our
//! "nothing" (a `Drop`, a verify list without the client) until it has been UP for the
//! client's hold time (two beat intervals and a second): by then a live client's next beat
//! has gone through that member to the responsible node and re-registered it there, and a
//! dead one is dropped after the hold, never earlier than today plus the hold.
//!
//! Holding only ever delays a removal; it never creates or restores a copy anywhere, so it
//! cannot bring a dead instance back (I8) or make a revision go back (I2).

use smallvec::SmallVec;

use crate::distro::{client_digest, partition_of, slice_of, ClientHash, Health, NodeId};
use crate::model::Publish;
use crate::shard::{ClientId, Shard};

use super::SyncKey;

/// The hold of a client whose beat interval is unknown here (5 s, Nacos's default).
const DEFAULT_HOLD_MS: u64 = 2 * 5_000 + 1_000;

/// A removal this node holds back from some members.
pub(crate) struct Held {
    /// The members that do not get the removal yet.
    peers: SmallVec<[NodeId; 2]>,
    /// How long a member must be UP before it gets the removal.
    hold_ms: u64,
    /// When the hold started (holds are forgotten after `HOLD_MAX_LEASES` leases).
    since_ms: u64,
}

/// A member away for this many leases has expired our copies itself (I4): the hold is
/// forgotten, nothing is sent.
const HOLD_MAX_LEASES: u64 = 10;

/// How long a member is given to show a client's beats: two beat intervals and a second.
pub(in crate::shard) fn hold_for(publish: &Publish) -> u64 {
    publish
        .iter()
        .map(|i| 2 * u64::from(i.timing().interval_ms) + 1_000)
        .max()
        .unwrap_or(DEFAULT_HOLD_MS)
}

impl Shard {
    /// Whether `peer` was not UP at some moment since `t` (mono ms), or is not UP now. Before
    /// this node started it knows nothing: every member counts as away then.
    fn away_since(&self, peer: &NodeId, t: u64) -> bool {
        let Some(d) = self.distro.as_ref() else {
            return false;
        };
        t <= d.started_ms
            || self.peer_health(peer) != Health::Up
            || d.last_away.get(peer).is_some_and(|a| *a >= t)
    }

    /// Notes when each member was last not UP (called on every membership change, with the
    /// view before and after it).
    pub(super) fn note_away(&mut self, before: &crate::distro::Members) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        for (n, h) in before.peers.iter().chain(d.members.peers.iter()) {
            if *h != Health::Up {
                d.last_away.insert(n.clone(), now_ms);
            }
        }
        let members: Vec<NodeId> = d.members.peers.iter().map(|(n, _)| n.clone()).collect();
        d.last_away.retain(|n, _| members.contains(n));
        let returned = d.members.peers.iter().any(|(n, h)| {
            *h == Health::Up
                && before
                    .peers
                    .iter()
                    .any(|(m, was)| m == n && *was != Health::Up)
        });
        if returned && !d.cfg.reverted.holds {
            self.grace_after_return();
        }
    }

    /// A member is back: the beats of our heartbeat clients may have gone to it while it was
    /// away, and the next one comes through it now. None of them expires here before a
    /// hold from now (found by the simulator's no-flap check: an isolated owner, back, expired
    /// a live client 400 ms after the heal, just before its next beat arrived through a peer).
    fn grace_after_return(&mut self) {
        let now_ms = self.now.mono_ms;
        for (id, c) in self.clients.iter_mut() {
            if !id.is_heartbeat() || c.replica.is_some() {
                continue;
            }
            for e in c.publishes.iter_mut() {
                let hold = hold_for(&e.publish);
                let delete = e
                    .publish
                    .iter()
                    .map(|i| u64::from(i.timing().delete_ms))
                    .max()
                    .unwrap_or(0);
                let floor = (now_ms + hold).saturating_sub(delete);
                e.last_beat_ms = e.last_beat_ms.max(floor.min(now_ms));
            }
        }
    }

    fn add_hold(&mut self, client: &ClientId, peers: SmallVec<[NodeId; 2]>, hold_ms: u64) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if peers.is_empty() || d.cfg.reverted.holds {
            return;
        }
        // Bounded: beyond the limit a removal goes out at once, as it did before holds.
        if d.held.len() >= d.cfg.max_pending_keys && !d.held.contains_key(client) {
            return;
        }
        let h = d.held.entry(client.clone()).or_insert(Held {
            peers: SmallVec::new(),
            hold_ms,
            since_ms: now_ms,
        });
        h.hold_ms = h.hold_ms.max(hold_ms);
        h.since_ms = now_ms;
        for p in peers {
            if !h.peers.contains(&p) {
                h.peers.push(p);
            }
        }
    }

    /// Heartbeat client `client` expired here as its owner, last beaten at `last_beat_ms`:
    /// the members that were not UP at some moment since then, and within the last
    /// `hold_ms`, may have had beats they could not pass on; they do not get the removal
    /// until they have been UP for `hold_ms`. (A member back for longer has passed on
    /// whatever beats it got: they would have reached us.)
    pub(in crate::shard) fn hold_expiry(
        &mut self,
        client: &ClientId,
        last_beat_ms: u64,
        hold_ms: u64,
    ) {
        if self.clients.contains_key(client) {
            return;
        }
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        let peers: SmallVec<[NodeId; 2]> = d
            .members
            .peers
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| {
                let since = last_beat_ms.max(self.now.mono_ms.saturating_sub(hold_ms));
                self.away_since(n, since)
            })
            .collect();
        self.add_hold(client, peers, hold_ms);
    }

    /// We refuse `origin`'s copy of heartbeat client `client` because we removed it (or
    /// saw it removed) at `removed_ms`: if `origin` was away since then and within a hold,
    /// the client's beats may have gone to it, and our answer (a `Drop`) waits for the hold.
    /// (A member back for longer than a hold would have passed the beats on.)
    pub(super) fn hold_refusal(&mut self, origin: &NodeId, client: &ClientId, removed_ms: u64) {
        let since = removed_ms.max(self.now.mono_ms.saturating_sub(DEFAULT_HOLD_MS));
        if self.away_since(origin, since) {
            self.add_hold(
                client,
                SmallVec::from_elem(origin.clone(), 1),
                DEFAULT_HOLD_MS,
            );
        }
    }

    /// A refused copy's own beat interval, once known, sets its hold.
    pub(super) fn refine_hold(&mut self, client: &ClientId, publish: &Publish) {
        if let Some(h) = self.distro.as_mut().and_then(|d| d.held.get_mut(client)) {
            h.hold_ms = hold_for(publish);
        }
    }

    /// Whether the removal of `client` is held back from `peer` now.
    pub(super) fn held_from(&self, peer: &NodeId, client: &ClientId) -> bool {
        self.distro.as_ref().is_some_and(|d| {
            !d.held.is_empty() && d.held.get(client).is_some_and(|h| h.peers.contains(peer))
        })
    }

    /// The tick: members UP for a hold get the removal now (if the client is still gone; a
    /// beat that re-registered it ends the hold), and holds past their bound are forgotten.
    pub(super) fn release_holds(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        if d.held.is_empty() {
            return;
        }
        let max_ms = HOLD_MAX_LEASES * d.cfg.replica_lease_ms;
        let mut release: Vec<(ClientId, NodeId)> = Vec::new();
        let mut done: Vec<ClientId> = Vec::new();
        for (client, h) in &d.held {
            if self.clients.contains_key(client) || now_ms.saturating_sub(h.since_ms) > max_ms {
                done.push(client.clone());
                continue;
            }
            for p in &h.peers {
                let up = d
                    .members
                    .peers
                    .iter()
                    .any(|(n, hl)| n == p && *hl == Health::Up);
                let member = d.members.peers.iter().any(|(n, _)| n == p);
                let back_ms = d.last_away.get(p).copied().unwrap_or(0).max(h.since_ms);
                if !member || (up && now_ms >= back_ms + h.hold_ms) {
                    release.push((client.clone(), p.clone()));
                }
            }
        }
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        for c in done {
            d.held.remove(&c);
        }
        let mut any = false;
        for (client, peer) in release {
            if let Some(h) = d.held.get_mut(&client) {
                h.peers.retain(|p| p != &peer);
                if h.peers.is_empty() {
                    d.held.remove(&client);
                }
            }
            let partition = partition_of(&client);
            if let Some(link) = d.links.get_mut(&peer) {
                any = true;
                link.entry(partition).or_default().dirty.insert(SyncKey {
                    client,
                    service: None,
                });
            }
        }
        if any {
            self.arm_sync_timer();
        }
    }

    /// Held clients of `partition` that verify lists to `peer` as present (hash 0, so a copy
    /// that differs is asked for, and the answer — nothing — waits for the hold too): the
    /// peer's copies of them are renewed, not pruned, while the hold lasts.
    pub(super) fn held_listing(
        &self,
        peer: &NodeId,
        partition: u16,
        slice: impl Fn(u16) -> bool,
    ) -> Vec<(u16, ClientHash)> {
        let Some(d) = self.distro.as_ref() else {
            return Vec::new();
        };
        d.held
            .iter()
            .filter(|(c, h)| {
                partition_of(c) == partition
                    && h.peers.contains(peer)
                    && slice(slice_of(c))
                    && !self.clients.contains_key(*c)
            })
            .map(|(c, _)| {
                (
                    slice_of(c),
                    ClientHash {
                        client: c.clone(),
                        state_hash: client_digest(c, std::iter::empty()),
                    },
                )
            })
            .collect()
    }
}
