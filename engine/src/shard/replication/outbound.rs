//! Local changes, outbound: what happens when a client this node is responsible for
//! changes. Its publishes' digests are updated (verify compares them), the change is merged
//! into one queue per peer and partition, and `pump` sends the queues as sync batches
//! within a bounded in-flight window (I5). A queued key names a client (or one publish),
//! never its state: what is sent is always the current state (I3).

use super::{bump, Digest, Inflight, LinkPart, SyncKey};
use crate::distro::{
    client_seed, entry_digest, partition_of, slice_of, EntryState, Health, NodeId, PeerMsg,
    SyncItem,
};
use indexmap::IndexMap;

use crate::shard::{Client, ClientId, ServiceKey, Shard, StableHasher, Timer};

impl Shard {
    /// Digest bookkeeping of one publish of a client held as `origin` (`None`: ours).
    pub(in crate::shard) fn digest_entry(
        &mut self,
        client: &ClientId,
        origin: Option<&NodeId>,
        rev: u64,
        add: bool,
    ) {
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let digest = d
            .digests
            .entry((origin.cloned(), partition_of(client)))
            .or_insert_with(Digest::new);
        let slot = &mut digest.slices[slice_of(client) as usize];
        let value = entry_digest(client_seed(client), rev);
        *slot = if add {
            slot.wrapping_add(value)
        } else {
            slot.wrapping_sub(value)
        };
    }

    /// A publish of a client this node is responsible for changed (`old`/`new`: its
    /// revision before and after; `None` = absent).
    pub(in crate::shard) fn native_entry_changed(
        &mut self,
        client: &ClientId,
        service: &ServiceKey,
        old: Option<u64>,
        new: Option<u64>,
    ) {
        // Persistent clients reach every node through Raft: Distro never carries them.
        if self.distro.is_none() || client.is_persistent() {
            return;
        }
        if let Some(rev) = old {
            self.digest_entry(client, None, rev, false);
        }
        if let Some(rev) = new {
            self.digest_entry(client, None, rev, true);
        }
        self.note_native_change(client, Some(service.clone()));
    }

    /// Queues a change of one of our clients for every peer (`service: None` = all of it).
    pub(in crate::shard) fn note_native_change(
        &mut self,
        client: &ClientId,
        service: Option<ServiceKey>,
    ) {
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        if client.is_persistent() {
            return;
        }
        let peers: Vec<NodeId> = d.links.keys().cloned().collect();
        for peer in peers {
            self.mark_for(
                &peer,
                SyncKey {
                    client: client.clone(),
                    service: service.clone(),
                },
            );
        }
        self.arm_sync_timer();
    }

    pub(super) fn mark_for(&mut self, peer: &NodeId, key: SyncKey) {
        let partition = partition_of(&key.client);
        let stats = self.stats.clone();
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let limit = d.cfg.max_pending_keys;
        let Some(link) = d.links.get_mut(peer) else {
            return;
        };
        let part = link.entry(partition).or_default();
        if part.dirty.len() >= limit {
            // A peer away this long gets repaired by verify when it is back; the queue
            // must not grow with everything that changed meanwhile (bounded memory).
            part.dirty.clear();
            bump(&stats.distro.queue_overflows, 1);
        }
        part.dirty.insert(key);
    }

    pub(super) fn arm_sync_timer(&mut self) {
        let at = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if !d.sync_timer_set {
            d.sync_timer_set = true;
            let at = at + d.cfg.sync_delay_ms;
            self.set_timer(at, Timer::Sync);
        }
    }

    pub(in crate::shard) fn on_sync_timer(&mut self) {
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        d.sync_timer_set = false;
        let work: Vec<NodeId> = d
            .links
            .iter()
            .filter(|(_, parts)| parts.values().any(|p| !p.dirty.is_empty()))
            .map(|(n, _)| n.clone())
            .collect();
        for peer in work {
            self.pump(&peer);
        }
    }

    pub(super) fn link_part(&mut self, peer: &NodeId, partition: u16) -> Option<&mut LinkPart> {
        self.distro
            .as_mut()?
            .links
            .get_mut(peer)
            .map(|l| l.entry(partition).or_default())
    }

    /// Sends what is pending for `peer`, as far as the in-flight window allows (I5: bounded
    /// in-flight data per peer), one batch per partition in turn.
    ///
    /// The window is counted in instances as well as batches: a batch of 512 big publishes
    /// carried 51,200 instances, 16 of them eight seconds of a busy peer's work, and every
    /// one timed out while still queued (issue 19). A batch closes at `max_batch_items` items
    /// or `max_batch_instances` instances; the batches in flight towards a peer hold at most
    /// this shard's share of `max_inflight_instances` (one batch always may go).
    ///
    /// Why one window per peer rather than per partition: everything towards a peer shares
    /// one ordered QUIC stream, and a window of 8 batches for each of 64 partitions let a
    /// backlog of 262,144 changes sit in that stream, ahead of the snapshot chunks a joining
    /// peer waits for (a join took 17.8 s instead of 3.5 s).
    pub(super) fn pump(&mut self, peer: &NodeId) {
        if self.peer_health(peer) == Health::Down {
            return;
        }
        let now_ms = self.now.mono_ms;
        let shards = self.cfg.shard_count.max(1);
        let (max_inflight, max_items, max_batch_instances, window) = match self.distro.as_ref() {
            Some(d) => (
                d.cfg.max_inflight_batches,
                d.cfg.max_batch_items.max(1),
                d.cfg.max_batch_instances.max(1),
                (d.cfg.max_inflight_instances / shards).max(1),
            ),
            None => return,
        };
        loop {
            let Some(d) = self.distro.as_mut() else {
                return;
            };
            let Some(parts) = d.links.get_mut(peer) else {
                return;
            };
            let (batches, instances) = parts.values().fold((0, 0), |(b, i), p| {
                (
                    b + p.inflight.len(),
                    i + p.inflight.values().map(|f| f.instances).sum::<usize>(),
                )
            });
            if batches >= max_inflight || (batches > 0 && instances >= window) {
                return;
            }
            // Round robin: the partition after the one that sent last goes first.
            let after = d.pump_cursor.get(peer).copied();
            let next = after
                .and_then(|a| {
                    parts
                        .range(a + 1..)
                        .find(|(_, p)| !p.dirty.is_empty())
                        .map(|(k, _)| *k)
                })
                .or_else(|| {
                    parts
                        .iter()
                        .find(|(_, p)| !p.dirty.is_empty())
                        .map(|(k, _)| *k)
                });
            let Some(partition) = next else {
                return;
            };
            d.pump_cursor.insert(peer.clone(), partition);
            let Some(part) = parts.get_mut(&partition) else {
                return;
            };
            // The batch: keys in order until either limit (at least one key).
            let room = max_batch_instances.min(window.saturating_sub(instances).max(1));
            let mut take = 0;
            let mut batch_instances = 0;
            for key in part.dirty.iter().take(max_items) {
                let weight = key_weight(&self.clients, key);
                if take > 0 && batch_instances + weight > room {
                    break;
                }
                take += 1;
                batch_instances += weight;
            }
            let keys: Vec<SyncKey> = part.dirty.drain(..take).collect();
            let seq = part.next_seq;
            part.next_seq += 1;
            let items: Vec<SyncItem> = keys
                .iter()
                .filter_map(|k| self.sync_item(peer, k))
                .collect();
            if items.is_empty() {
                // Nothing to say for these keys (held removals, clients no longer ours).
                continue;
            }
            let Some(part) = self.link_part(peer, partition) else {
                return;
            };
            part.inflight.insert(
                seq,
                Inflight {
                    keys,
                    instances: batch_instances,
                    sent_ms: now_ms,
                },
            );
            bump(&self.stats.distro.sync_batches, 1);
            bump(&self.stats.distro.sync_items, items.len() as u64);
            bump(&self.stats.distro.sync_instances, batch_instances as u64);
            self.send_peer(peer.clone(), partition, PeerMsg::Sync { seq, items });
        }
    }

    /// The current state behind a pending key: always the newest, never what it was when
    /// the change was queued (a retry sends the current state, I3).
    pub(super) fn sync_item(&self, peer: &NodeId, key: &SyncKey) -> Option<SyncItem> {
        let Some(client) = self.clients.get(&key.client) else {
            // Held back from a member that was apart: it may have had the beats (`apart`).
            if self.held_from(peer, &key.client) {
                return None;
            }
            // Gone. Only its owner announces that: a heartbeat client we handed over and then
            // lost as a copy is not ours to delete everywhere. One we removed as its owner
            // is, even if it belongs to another member by now: that member may have been
            // away (paused, partitioned) while we held the client, and without our `Drop`
            // its stale copy would bring the dead instance back (the chaos harness's pause
            // scenario: the resumed node listed the client, and the peer that had expired
            // it took it back).
            if key.client.is_heartbeat() && !self.members_is_mine(&key.client) {
                let removed = self
                    .distro
                    .as_ref()
                    .and_then(|d| d.owned_removals.get(&key.client));
                return removed.map(|(rev, _)| SyncItem::Drop {
                    client: key.client.clone(),
                    rev: *rev,
                });
            }
            return Some(SyncItem::Drop {
                client: key.client.clone(),
                rev: self.clock,
            });
        };
        if client.replica.is_some() {
            // No longer ours: its new owner replicates it.
            return None;
        }
        match &key.service {
            None => Some(SyncItem::Full(Self::client_state(&key.client, client))),
            Some(service) => match client.entry(service) {
                Ok(pos) => {
                    let e = &client.publishes[pos];
                    Some(SyncItem::Upsert {
                        client: key.client.clone(),
                        entry: EntryState {
                            service: e.service.clone(),
                            rev: e.rev,
                            publish: e.publish.clone(),
                        },
                    })
                }
                Err(_) => Some(SyncItem::Remove {
                    client: key.client.clone(),
                    service: service.clone(),
                    rev: self.clock,
                }),
            },
        }
    }
}

/// What sending `key` weighs in the window: the instances its current state carries (one
/// for a removal, a drop or an empty state).
fn key_weight(clients: &IndexMap<ClientId, Client, StableHasher>, key: &SyncKey) -> usize {
    let Some(client) = clients.get(&key.client) else {
        return 1;
    };
    let n = match &key.service {
        None => client.publishes.iter().map(|e| e.publish.len()).sum(),
        Some(service) => client
            .entry(service)
            .map_or(0, |pos| client.publishes[pos].publish.len()),
    };
    n.max(1)
}
