//! Inbound changes: applying a peer's sync items, full states and drops to the copies
//! (replicas) this node holds, newest revision wins (I2); and moving a client between
//! "ours" and "a copy of a peer's" — take-overs, hand-overs and the removal memory that
//! keeps late, older data from bringing a removed client back.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use smallvec::SmallVec;

use super::{bump, ReplicaInfo, SyncKey};
use crate::distro::{ClientState, EntryState, Health, NodeId, SyncItem};
use crate::model::Publish;
use crate::shard::{next_rev, Client, ClientId, PublishEntry, ServiceKey, ServiceOp, Shard};

impl Shard {
    pub(super) fn apply_sync_item(&mut self, from: &NodeId, item: SyncItem) {
        match item {
            SyncItem::Upsert { client, entry } => {
                if self.prepare_replica(from, &client, entry.rev) {
                    self.replica_put(from, &client, entry);
                    self.renew(&client);
                    self.drop_replica_if_empty(&client, None);
                } else {
                    self.refine_hold(&client, &entry.publish);
                    self.note_claim(from, &client);
                }
            }
            SyncItem::Remove {
                client,
                service,
                rev,
            } => {
                if self.clients.get(&client).is_some() && self.prepare_replica(from, &client, rev) {
                    self.replica_remove(from, &client, service, rev);
                    self.drop_replica_if_empty(&client, None);
                }
            }
            SyncItem::Full(state) => {
                let client = state.client.clone();
                let publish = state.entries.first().map(|e| e.publish.clone());
                if !self.apply_full(from, state) {
                    if let Some(publish) = publish {
                        self.refine_hold(&client, &publish);
                    }
                    self.note_claim(from, &client);
                }
            }
            SyncItem::Drop { client, rev } => {
                self.observe_rev(rev);
                self.withdraw_claim(from, &client);
                if self.accept_drop_after_pause(&client, rev) {
                    bump(&self.stats.distro.drops_after_pause, 1);
                } else if !self.clients.contains_key(&client) {
                    self.remember_removal(&client, rev + 1, self.now.mono_ms);
                } else if self.prepare_replica(from, &client, rev)
                    && !self.follow_claimant(from, &client)
                {
                    self.replica_drop(from, &client, rev);
                }
            }
        }
    }

    /// Makes `client` a replica of `origin` if `origin` may speak for it. `false`: it is
    /// ours, or held from another owner that `origin` does not replace, or it was removed
    /// at a revision at or above `rev` (I2).
    ///
    /// Who may speak for a client: a connection client has one owner for its whole life
    /// (the node holding the connection), so only that node. A heartbeat client moves with
    /// membership; its copy follows the node this node's view makes responsible, so two
    /// nodes that both believe they own it (views not yet agreeing) cannot make the copies
    /// flap between them.
    pub(super) fn prepare_replica(&mut self, origin: &NodeId, client: &ClientId, rev: u64) -> bool {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_ref() else {
            return false;
        };
        let responsible = d.members.responsible_for(client).cloned();
        let takes_over = client.is_heartbeat() && responsible.as_ref() == Some(origin);
        match self.clients.get(client) {
            None => {
                let removed = d.dropped.get(client);
                let older = removed.is_some_and(|(min, _)| rev < *min);
                // A heartbeat client removed here within a lease comes back only through
                // the member our view makes responsible, while we can hear it. Another node
                // that took it over from a stale copy (it declared the owner DOWN, we did
                // not) restamps it with fresh revisions, which would pass the memory: a dead
                // instance would come back for a whole heartbeat timeout. (A SUSPICIOUS
                // owner's stand-ins are heard: their copies are the live ones.)
                let authority_heard = responsible.as_ref().is_some_and(|r| {
                    d.members.me.as_ref() == Some(r)
                        || d.members
                            .peers
                            .iter()
                            .any(|(n, h)| n == r && *h == Health::Up)
                });
                let not_from_authority =
                    client.is_heartbeat() && removed.is_some() && !takes_over && authority_heard;
                // The same at the responsible node itself: a heartbeat client it removed as
                // its owner within a lease (expired, deregistered) is not taken back from
                // another node's copy — a stand-in that held it while we were unreachable,
                // or a node that took it over from a stale copy meanwhile. Taken back, a
                // dead instance gets a whole new deletion timeout, and a stand-in we cannot
                // reach (a one-way cut) hands it to us again after every expiry (found by
                // the simulator's silently dying HTTP clients: seeds 601 and 811 of the
                // standard sweep). A live client's next beat re-registers it here.
                let removed_as_owner = client.is_heartbeat()
                    && responsible.is_some()
                    && responsible.as_ref() == d.members.me.as_ref()
                    && d.owned_removals.contains_key(client);
                // A removal we hold back from `origin` (it was apart: `apart`) is not undone by
                // its copy from before the removal — it may be a dead client's, kept by a
                // node that did not run (a pause). A copy newer than the removal is news: the
                // client changed there since (its owner restamps what we resync).
                let held_older = client.is_heartbeat()
                    && !d.held.is_empty()
                    && self.held_from(origin, client)
                    && d.owned_removals.get(client).is_none_or(|(r, _)| rev <= *r);
                if older || not_from_authority || removed_as_owner || held_older {
                    bump(&self.stats.distro.stale, 1);
                    let removed_ms = [
                        removed.map(|(_, at)| *at),
                        d.owned_removals.get(client).map(|(_, at)| *at),
                    ]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(now_ms);
                    if client.is_heartbeat() && responsible.as_ref() == d.members.me.as_ref() {
                        // ... unless the sender was apart when it was removed: it may have
                        // had the beats, and our "nothing" waits (`apart`: no flaps).
                        let origin_c = origin.clone();
                        self.hold_refusal(&origin_c, client, removed_ms);
                        // We are responsible and removed it within a lease: the sender
                        // (handing it over to us, or a stand-in) is told so, or its copy
                        // would live on — unconfirmed, for a lease — showing a dead
                        // instance (found by the simulator). A live client's next beat
                        // re-registers it here.
                        let origin = origin.clone();
                        self.mark_for(
                            &origin,
                            SyncKey {
                                client: client.clone(),
                                service: None,
                            },
                        );
                        self.arm_sync_timer();
                    }
                    return false;
                }
                self.stats.count_client(client, 1);
                self.stats.replica_clients.fetch_add(1, Ordering::Relaxed);
                let mut c = Client::new();
                let epoch = next_rev(&mut self.clock, self.now.unix_ms);
                c.replica = Some(ReplicaInfo::new(origin.clone(), now_ms, epoch));
                self.clients.insert(client.clone(), c);
                true
            }
            Some(c) => match &c.replica {
                None if takes_over => {
                    // Our view says the sender is responsible now: hand the client over.
                    self.set_origin(client, Some(origin.clone()));
                    true
                }
                None => false,
                Some(info) if &info.origin == origin => {
                    if info.unconfirmed {
                        self.confirm(client);
                    }
                    true
                }
                Some(_) if takes_over => {
                    self.set_origin(client, Some(origin.clone()));
                    true
                }
                Some(_) => false,
            },
        }
    }

    /// Moves a client between "ours" (`None`) and a replica of `origin`, keeping its data.
    ///
    /// Taking a client over restamps its publishes with fresh revisions: the new owner's
    /// state is then newer than any copy, so peers take it whatever they held. Handing a
    /// client to another owner sets its revisions to 0: whatever the new owner says wins,
    /// and if it has nothing, verify prunes the copy (a heartbeat re-registers a live one).
    pub(super) fn set_origin(&mut self, client: &ClientId, origin: Option<NodeId>) {
        let now_ms = self.now.mono_ms;
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let old = c.replica.as_ref().map(|i| i.origin.clone());
        let mut changes: SmallVec<[(u64, u64); 4]> = SmallVec::new();
        let delta = i64::from(origin.is_some()) - i64::from(old.is_some());
        self.stats
            .replica_clients
            .fetch_add(delta, Ordering::Relaxed);
        match &origin {
            None => {
                c.replica = None;
                for e in c.publishes.iter_mut() {
                    // A client we take over gets a full beat period before it can expire.
                    e.last_beat_ms = now_ms;
                    let rev = next_rev(&mut self.clock, self.now.unix_ms);
                    changes.push((e.rev, rev));
                    e.rev = rev;
                }
                c.revision = self.clock;
            }
            Some(o) => {
                let epoch = next_rev(&mut self.clock, self.now.unix_ms);
                c.replica = Some(ReplicaInfo::new(o.clone(), now_ms, epoch));
                for e in c.publishes.iter_mut() {
                    changes.push((e.rev, 0));
                    e.rev = 0;
                }
            }
        }
        for (from, to) in changes {
            self.digest_entry(client, old.as_ref(), from, false);
            self.digest_entry(client, origin.as_ref(), to, true);
        }
    }

    /// `peer` acknowledged a batch: clients handed to it are its now.
    pub(super) fn complete_handovers(&mut self, peer: &NodeId, keys: &[SyncKey]) {
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if d.handovers.is_empty() {
            return;
        }
        let mut done = Vec::new();
        for k in keys {
            if k.service.is_none() && d.handovers.get(&k.client) == Some(peer) {
                d.handovers.remove(&k.client);
                done.push(k.client.clone());
            }
        }
        for client in done {
            let still_native = self
                .clients
                .get(&client)
                .is_some_and(|c| c.replica.is_none());
            if still_native && !self.members_is_mine(&client) {
                self.set_origin(&client, Some(peer.clone()));
                if let Some(info) = self
                    .clients
                    .get_mut(&client)
                    .and_then(|c| c.replica.as_mut())
                {
                    info.unconfirmed = true;
                }
            }
        }
    }

    /// Gives every publish of one of our clients a fresh revision.
    pub(super) fn restamp_native(&mut self, client: &ClientId) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        if c.replica.is_some() {
            return;
        }
        let mut changes: SmallVec<[(u64, u64); 4]> = SmallVec::new();
        for e in c.publishes.iter_mut() {
            let rev = next_rev(&mut self.clock, self.now.unix_ms);
            changes.push((e.rev, rev));
            e.rev = rev;
        }
        c.revision = self.clock;
        for (from, to) in changes {
            self.digest_entry(client, None, from, false);
            self.digest_entry(client, None, to, true);
        }
        // Every peer's copy is now older than ours, not only the asker's.
        self.note_native_change(client, None);
    }

    /// A heartbeat client we held as its own is gone from this node (expired, deregistered,
    /// or dropped by a peer after our pause): remembered for a lease, see `sync_item`.
    pub(in crate::shard) fn note_owned_removal(&mut self, client: &ClientId) {
        if !client.is_heartbeat() {
            return;
        }
        let (rev, now_ms) = (self.clock, self.now.mono_ms);
        if let Some(d) = self.distro.as_mut() {
            d.owned_removals.insert(client.clone(), (rev, now_ms));
        }
    }

    /// A deregistration of a heartbeat client this node does not hold: it is still loading
    /// its snapshot, or the client's data has not reached it. No copy older than this may
    /// bring the client back (the snapshot's, a late sync), and if the client is ours,
    /// peers drop theirs.
    pub(in crate::shard) fn deregistered_absent(&mut self, client: &ClientId) {
        if !client.is_heartbeat() || self.distro.is_none() {
            return;
        }
        let rev = next_rev(&mut self.clock, self.now.unix_ms);
        self.remember_removal(client, rev, self.now.mono_ms);
        if self.members_is_mine(client) {
            self.note_native_change(client, None);
        }
    }

    /// Takes over a client held as a replica (it is now ours) and tells every peer.
    pub(in crate::shard) fn adopt_if_replica(&mut self, client: &ClientId) {
        if self.clients.get(client).is_none_or(|c| c.replica.is_none()) {
            return;
        }
        self.set_origin(client, None);
        self.note_native_change(client, None);
    }

    /// The owner of a copy we handed over showed that it has the client.
    pub(super) fn confirm(&mut self, client: &ClientId) {
        if let Some(info) = self
            .clients
            .get_mut(client)
            .and_then(|c| c.replica.as_mut())
        {
            info.unconfirmed = false;
        }
    }

    pub(super) fn renew(&mut self, client: &ClientId) {
        let now_ms = self.now.mono_ms;
        if let Some(info) = self
            .clients
            .get_mut(client)
            .and_then(|c| c.replica.as_mut())
        {
            info.renewed_ms = now_ms;
        }
    }

    /// Applies one publish of a replica if it is newer than what is held (I2).
    pub(super) fn replica_put(&mut self, origin: &NodeId, client: &ClientId, entry: EntryState) {
        self.observe_rev(entry.rev);
        let service = self.interner.service(entry.service);
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let Some(info) = c.replica.as_ref() else {
            return;
        };
        let pos = c.entry(&service);
        let held = match pos {
            Ok(p) => c.publishes[p].rev,
            Err(_) => info.tombstone(&service).max(info.floor),
        };
        if entry.rev <= held {
            bump(&self.stats.distro.stale, 1);
            return;
        }
        let publish: Publish = entry
            .publish
            .iter()
            .map(|i| {
                let mut i = i.clone();
                i.cluster = self.interner.intern(&i.cluster);
                i
            })
            .collect::<Vec<_>>()
            .into();
        let old = match pos {
            Ok(p) => {
                let e = &mut c.publishes[p];
                e.publish = publish.clone();
                Some(std::mem::replace(&mut e.rev, entry.rev))
            }
            Err(p) => {
                c.publishes.insert(
                    p,
                    PublishEntry {
                        service: service.clone(),
                        publish: publish.clone(),
                        last_beat_ms: self.now.mono_ms,
                        rev: entry.rev,
                    },
                );
                None
            }
        };
        c.revision = c.revision.max(entry.rev);
        if let Some(info) = c.replica.as_mut() {
            info.tombstones.retain(|(s, _)| s != &service);
        }
        if let Some(rev) = old {
            self.digest_entry(client, Some(origin), rev, false);
        }
        self.digest_entry(client, Some(origin), entry.rev, true);
        bump(&self.stats.distro.applied, 1);
        self.send_service_op(
            service,
            ServiceOp::Upsert {
                client: client.clone(),
                publish,
            },
        );
    }

    /// Removes one publish of a replica if the removal is newer than it (I2).
    pub(super) fn replica_remove(
        &mut self,
        origin: &NodeId,
        client: &ClientId,
        service: ServiceKey,
        rev: u64,
    ) {
        self.observe_rev(rev);
        let service = self.interner.service(service);
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let Some(info) = c.replica.as_mut() else {
            return;
        };
        if rev > info.floor {
            info.set_tombstone(&service, rev);
        }
        let Ok(pos) = c.entry(&service) else {
            return;
        };
        let old = c.publishes[pos].rev;
        if old >= rev {
            bump(&self.stats.distro.stale, 1);
            return;
        }
        c.publishes.remove(pos);
        c.revision = c.revision.max(rev);
        self.digest_entry(client, Some(origin), old, false);
        bump(&self.stats.distro.applied, 1);
        self.send_service_op(
            service,
            ServiceOp::Remove {
                client: client.clone(),
            },
        );
    }

    /// Drops a replica with nothing left. `whole_removal`: the owner removed the client
    /// itself at that revision (a `Drop`), so nothing at or below it may bring it back;
    /// otherwise only what is older than the removals it saw is kept out.
    pub(super) fn drop_replica_if_empty(&mut self, client: &ClientId, whole_removal: Option<u64>) {
        let now_ms = self.now.mono_ms;
        let Some(c) = self.clients.get(client) else {
            return;
        };
        let Some(info) = c.replica.as_ref() else {
            return;
        };
        if !c.publishes.is_empty() {
            return;
        }
        let newest_removal = info.tombstones.iter().map(|(_, r)| *r).max().unwrap_or(0);
        let min_rev = match whole_removal {
            Some(rev) => rev + 1,
            None => newest_removal,
        };
        self.clients.swap_remove(client);
        self.stats.count_client(client, -1);
        self.stats.replica_clients.fetch_sub(1, Ordering::Relaxed);
        // A copy that never held anything newer than revision 0 (a hand-over waiting for
        // its owner, served in a snapshot) removed nothing: no memory, which would refuse
        // the owner's real state (found by the simulator's no-flap check: a restarted node
        // refused the live owner's copy and dropped it there).
        if min_rev > 0 {
            self.remember_removal(client, min_rev, now_ms);
        }
    }

    pub(super) fn remember_removal(&mut self, client: &ClientId, min_rev: u64, now_ms: u64) {
        if let Some(d) = self.distro.as_mut() {
            let e = d.dropped.entry(client.clone()).or_insert((0, now_ms));
            e.0 = e.0.max(min_rev);
            e.1 = now_ms;
        }
    }

    /// Removes a replica and all it publishes (expiry, or its owner no longer has it).
    pub(super) fn remove_replica(&mut self, client: &ClientId) {
        let Some(c) = self.clients.swap_remove(client) else {
            return;
        };
        self.stats.count_client(client, -1);
        if c.replica.is_some() {
            self.stats.replica_clients.fetch_sub(1, Ordering::Relaxed);
        }
        let origin = c.replica.as_ref().map(|i| i.origin.clone());
        // An older copy (a late message, another node's snapshot) must not bring the client
        // back (I2); its owner's current state may (this removal was our decision, not a
        // change of the owner).
        let newest = c.publishes.iter().map(|e| e.rev).max().unwrap_or(0);
        self.remember_removal(client, newest, self.now.mono_ms);
        for e in c.publishes {
            self.digest_entry(client, origin.as_ref(), e.rev, false);
            self.send_service_op(
                e.service,
                ServiceOp::Remove {
                    client: client.clone(),
                },
            );
        }
    }

    /// Removes every publish older than `rev`, then the client if nothing is left.
    pub(super) fn replica_drop(&mut self, from: &NodeId, client: &ClientId, rev: u64) {
        let services: Vec<(ServiceKey, u64)> = self
            .clients
            .get(client)
            .map(|c| {
                c.publishes
                    .iter()
                    .map(|e| (e.service.clone(), e.rev))
                    .collect()
            })
            .unwrap_or_default();
        for (service, r) in services {
            if r < rev {
                self.replica_remove(from, client, service, rev);
            }
        }
        self.drop_replica_if_empty(client, Some(rev));
    }

    /// Applies a client's full state: newer publishes replace, publishes it lacks that are
    /// older than the state go, newer ones stay (a later change already applied, I2).
    /// Applies a client's full state from `origin`; false when `origin` is not the node we
    /// follow for it.
    pub(super) fn apply_full(&mut self, origin: &NodeId, state: ClientState) -> bool {
        self.observe_rev(state.rev);
        if !self.prepare_replica(origin, &state.client, state.rev) {
            return false;
        }
        let client = state.client.clone();
        self.apply_full_state(origin, state);
        // A heartbeat client this node's view makes ours, handed to us by its previous
        // holder: take it over now, so it has an owner that renews and checks it.
        if client.is_heartbeat()
            && self.members_is_mine(&client)
            && self.clients.contains_key(&client)
        {
            self.adopt_if_replica(&client);
        }
        true
    }

    pub(super) fn apply_full_state(&mut self, origin: &NodeId, state: ClientState) {
        let client = state.client;
        let listed: HashSet<ServiceKey> = state.entries.iter().map(|e| e.service.clone()).collect();
        let stale: Vec<(ServiceKey, u64)> = self
            .clients
            .get(&client)
            .map(|c| {
                c.publishes
                    .iter()
                    .filter(|e| !listed.contains(&e.service) && e.rev < state.rev)
                    .map(|e| (e.service.clone(), e.rev))
                    .collect()
            })
            .unwrap_or_default();
        for (service, _) in stale {
            self.replica_remove(origin, &client, service, state.rev);
        }
        for entry in state.entries {
            self.replica_put(origin, &client, entry);
        }
        if let Some(info) = self
            .clients
            .get_mut(&client)
            .and_then(|c| c.replica.as_mut())
        {
            info.floor = info.floor.max(state.rev);
            let floor = info.floor;
            info.tombstones.retain(|(_, r)| *r > floor);
        }
        self.renew(&client);
        self.drop_replica_if_empty(&client, None);
    }
}
