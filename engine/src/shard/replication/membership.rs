//! Membership: reacting to a new member list (links, DOWN times, snapshot streams), and
//! rebalancing heartbeat clients — whose owner follows the members — between this node and
//! the others. Connection clients never move: their owner holds the connection.

use std::collections::{BTreeSet, HashMap};

use super::SyncKey;
use crate::distro::{Health, Members, NodeId};
use crate::shard::{ClientId, Shard};

impl Shard {
    /// The membership as this node sees it changed: peers came, went, or changed health.
    pub fn handle_members(&mut self, now: crate::shard::Now, members: Members) {
        self.now = now;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if d.members == members {
            return;
        }
        let old = std::mem::replace(&mut d.members, members);
        let now_ms = now.mono_ms;
        for (n, h) in &old.peers {
            let health_now = d
                .members
                .peers
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, h)| *h);
            if *h != Health::Down && health_now.is_none_or(|h| h == Health::Down) {
                d.down_since.insert(n.clone(), now_ms);
            }
        }
        // Links follow the member list (health does not remove a link: a DOWN peer keeps
        // its queue, bounded, until it is back or removed).
        let peers: BTreeSet<NodeId> = d.members.peers.iter().map(|(n, _)| n.clone()).collect();
        d.links.retain(|n, _| peers.contains(n));
        for p in &peers {
            d.links.entry(p.clone()).or_default();
        }
        let down: BTreeSet<&NodeId> = d
            .members
            .peers
            .iter()
            .filter(|(_, h)| *h == Health::Down)
            .map(|(n, _)| n)
            .collect();
        d.serving
            .retain(|s| peers.contains(&s.to) && !down.contains(&s.to));
        self.note_away(&old);
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let responsibility_changed =
            old.candidates() != d.members.candidates() || old.me != d.members.me;
        if responsibility_changed {
            self.rebalance_heartbeat_clients(Some(&old));
        }
        self.requeue_lost_links(&old);
        self.drive_load();
        self.arm_sync_timer();
        self.flush(now);
    }

    /// After a membership change (from `old`): heartbeat clients we hold but are no longer
    /// responsible for become replicas of their new owner; replicas we are now responsible
    /// for become ours and are announced to every peer (their revision grows, so peers
    /// switch owner).
    pub(super) fn rebalance_heartbeat_clients(&mut self, old: Option<&Members>) {
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        let mut demote: Vec<(ClientId, NodeId)> = Vec::new();
        let mut adopt: Vec<ClientId> = Vec::new();
        let mut now_mine: Vec<ClientId> = Vec::new();
        for (id, c) in &self.clients {
            if !id.is_heartbeat() {
                continue;
            }
            let owner = d.members.responsible_for(id).cloned();
            let mine = owner.is_none() || owner == d.members.me;
            match (&c.replica, mine) {
                (None, true) if old.is_some_and(|o| !o.is_mine(id)) => now_mine.push(id.clone()),
                (None, false) => {
                    // Handed over only to a member that answers: a SUSPICIOUS owner could
                    // not take it, and the client would be nobody's.
                    let up = owner.as_ref().is_some_and(|o| {
                        d.members
                            .peers
                            .iter()
                            .any(|(n, h)| n == o && *h == Health::Up)
                    });
                    if let (Some(o), true) = (owner, up) {
                        demote.push((id.clone(), o));
                    }
                }
                (Some(_), true) => adopt.push(id.clone()),
                _ => {}
            }
        }
        // The new owner may never have seen a client (it was written here while the owner
        // was away): it gets our full state through the acknowledged sync path, and the
        // client stays ours until that is acknowledged.
        let mut pending = HashMap::default();
        for (id, owner) in demote {
            let already = self
                .distro
                .as_ref()
                .and_then(|d| d.handovers.get(&id))
                .is_some_and(|o| o == &owner);
            if !already {
                self.mark_for(
                    &owner,
                    SyncKey {
                        client: id.clone(),
                        service: None,
                    },
                );
            }
            pending.insert(id, owner);
        }
        if let Some(d) = self.distro.as_mut() {
            d.handovers = pending;
        }
        self.arm_sync_timer();
        for id in adopt {
            self.adopt_if_replica(&id);
        }
        // Held for another node until now, their beats went there: like a client taken
        // over, each gets a full beat period before it can expire here.
        let now_ms = self.now.mono_ms;
        for id in now_mine {
            if let Some(c) = self.clients.get_mut(&id) {
                c.publishes
                    .iter_mut()
                    .for_each(|e| e.last_beat_ms = e.last_beat_ms.max(now_ms));
            }
        }
    }
}
