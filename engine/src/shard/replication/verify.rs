//! Verify: the periodic anti-entropy exchange that repairs what sync missed (lost batches,
//! overflowed queues, a peer that was DOWN). Roots, then per-slice digests, then client
//! lists of the differing slices; the copy holder asks for what differs (`Resync`) and
//! prunes what its owner no longer lists. A listing renews leases by existence (I4).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{bump, Digest, SyncKey, LIST_CHUNK};
use crate::distro::{
    client_digest, partition_of, slice_of, ClientHash, Health, NodeId, PeerMsg, SLICES,
};
use crate::shard::{ClientId, Shard, Timer};

impl Shard {
    pub(in crate::shard) fn on_verify_timer(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let at = now_ms + d.cfg.verify_interval_ms;
        self.set_timer(at, Timer::Verify);
        // A heartbeat client may have become ours by a write routed on an older view; hand
        // back what this node's view gives to another member before vouching for it.
        self.rebalance_heartbeat_clients(None);
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        // Sent while the snapshot is still loading too: peers must keep renewing the
        // clients this node holds (its connections are alive). What a loading node must not
        // do is make peers delete what it does not know yet; see `on_slice_digests`.
        d.round += 1;
        let round = d.round;
        let mut msgs = Vec::new();
        for (peer, health) in &d.members.peers {
            if *health == Health::Down {
                continue;
            }
            for p in &d.partitions {
                let root = d.digests.get(&(None, *p)).map_or(0, Digest::root);
                msgs.push((peer.clone(), *p, root));
            }
        }
        bump(&self.stats.distro.verify_sent, msgs.len() as u64);
        let clock = self.clock;
        for (peer, p, root) in msgs {
            self.send_peer(peer, p, PeerMsg::Digest { round, root, clock });
        }
    }

    pub(super) fn on_digest(&mut self, from: NodeId, partition: u16, round: u64, root: u64) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let key = (Some(from.clone()), partition);
        let mine = d.digests.get(&key);
        let my_root = mine.map_or(0, Digest::root);
        if my_root == root {
            bump(&self.stats.distro.verify_matched, 1);
            let slices = d
                .renewed
                .entry((from, partition))
                .or_insert_with(|| vec![0; SLICES as usize].into_boxed_slice());
            slices.iter_mut().for_each(|s| *s = now_ms);
            return;
        }
        bump(&self.stats.distro.verify_differed, 1);
        let slices = mine.map_or_else(|| vec![0; SLICES as usize], |m| m.slices.to_vec());
        self.send_peer(from, partition, PeerMsg::SliceDigests { round, slices });
    }

    pub(super) fn on_slice_digests(
        &mut self,
        from: NodeId,
        partition: u16,
        round: u64,
        theirs: &[u64],
    ) {
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        if theirs.len() != SLICES as usize {
            return;
        }
        let empty = Digest::new();
        let mine = d.digests.get(&(None, partition)).unwrap_or(&empty);
        let mut matched = Vec::new();
        let mut differ: BTreeMap<u16, Vec<ClientHash>> = BTreeMap::new();
        for (i, (a, b)) in mine.slices.iter().zip(theirs).enumerate() {
            if a == b {
                matched.push(i as u16);
            } else {
                differ.insert(i as u16, Vec::new());
            }
        }
        if !differ.is_empty() {
            for (id, c) in &self.clients {
                if c.replica.is_some()
                    || c.publishes.is_empty()
                    || id.is_persistent()
                    || partition_of(id) != partition
                {
                    continue;
                }
                if let Some(list) = differ.get_mut(&slice_of(id)) {
                    list.push(ClientHash {
                        client: id.clone(),
                        state_hash: client_digest(id, c.publishes.iter().map(|e| e.rev)),
                    });
                }
            }
        }
        // Removals held back from this peer: listed as present while the hold lasts, so its
        // copies are renewed, not pruned (`apart`).
        for (slice, hash) in self.held_listing(&from, partition, |s| differ.contains_key(&s)) {
            if let Some(list) = differ.get_mut(&slice) {
                list.push(hash);
            }
        }
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        // A node still loading its snapshot may not know all the clients it is responsible
        // for (heartbeat clients it held before a restart): `as_of = 0` tells the peer to
        // renew what is listed and delete nothing (I6).
        let as_of = if d.loaded { self.clock } else { 0 };
        // Split long lists so no message grows with the number of clients.
        let mut msgs: Vec<PeerMsg> = Vec::new();
        let mut lists: Vec<(u16, Vec<ClientHash>)> = Vec::new();
        let mut count = 0;
        for (slice, list) in differ {
            for chunk in list.chunks(LIST_CHUNK).map(<[ClientHash]>::to_vec).chain(
                // An empty slice must still be listed: its replicas are all stale.
                std::iter::once(Vec::new()).filter(|_| list.is_empty()),
            ) {
                count += chunk.len();
                lists.push((slice, chunk));
                if count >= LIST_CHUNK {
                    msgs.push(PeerMsg::SliceClients {
                        round,
                        as_of,
                        matched: std::mem::take(&mut matched),
                        lists: std::mem::take(&mut lists),
                    });
                    count = 0;
                }
            }
        }
        if !lists.is_empty() || !matched.is_empty() || msgs.is_empty() {
            msgs.push(PeerMsg::SliceClients {
                round,
                as_of,
                matched,
                lists,
            });
        }
        for m in msgs {
            self.send_peer(from.clone(), partition, m);
        }
    }

    pub(super) fn on_slice_clients(
        &mut self,
        from: NodeId,
        partition: u16,
        as_of: u64,
        matched: &[u16],
        lists: Vec<(u16, Vec<ClientHash>)>,
    ) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let renewed = d
            .renewed
            .entry((from.clone(), partition))
            .or_insert_with(|| vec![0; SLICES as usize].into_boxed_slice());
        for s in matched {
            if let Some(slot) = renewed.get_mut(*s as usize) {
                *slot = now_ms;
            }
        }
        self.observe_rev(as_of);
        let mut listed_slices: HashSet<u16> = HashSet::new();
        let mut listed: HashSet<ClientId> = HashSet::new();
        let mut resync = Vec::new();
        let mut claims = Vec::new();
        for (slice, list) in lists {
            listed_slices.insert(slice);
            for ClientHash { client, state_hash } in list {
                if partition_of(&client) != partition || slice_of(&client) != slice {
                    continue;
                }
                let held = self.clients.get(&client).map(|c| {
                    (
                        c.replica.as_ref().map(|i| i.origin.clone()),
                        client_digest(&client, c.publishes.iter().map(|e| e.rev)),
                    )
                });
                // A removal we remember is not cleared here: the resync below makes the
                // owner restamp the client above its clock, which has seen ours (digests
                // carry clocks), so its answer passes the memory while stale copies do not.
                if client.is_heartbeat()
                    && matches!(&held, Some((Some(origin), _)) if origin != &from)
                {
                    claims.push(client.clone());
                }
                if matches!(&held, Some((Some(origin), _)) if origin == &from) {
                    self.confirm(&client);
                }
                match held {
                    Some((Some(origin), hash)) if origin == from && hash == state_hash => {}
                    // Ours: we are responsible and will tell it ours; nothing to ask.
                    Some((None, _)) if self.members_is_mine(&client) => {}
                    _ => resync.push(client.clone()),
                }
                // It exists at its owner: it is alive, whatever we hold of it (renewing on
                // existence, not on equality, is what keeps a slow sync from expiring live
                // clients — I4).
                self.renew(&client);
                listed.insert(client);
            }
        }
        let unlisted = self.unlisted_replicas(&from, partition, as_of, &listed_slices, &listed);
        let orphans = self.orphaned_replicas(&from, partition, as_of, &listed_slices, &listed);
        for client in claims {
            self.note_claim(&from, &client);
        }
        for (client, responsible) in orphans {
            // `from` no longer holds it and is not responsible for it any more: the copy now
            // follows the member our view makes responsible, at revision 0, so that member's
            // verify decides — its state replaces the copy, or its lists prune it. Kept as
            // `from`'s, nobody could ever remove it while `from` is up (found by the
            // simulator: a dead client handed from `from` to a member that had already
            // expired it stayed on the other nodes for good).
            bump(&self.stats.distro.orphans_rehomed, 1);
            self.set_origin(&client, Some(responsible));
        }
        bump(&self.stats.distro.replicas_pruned, unlisted.len() as u64);
        for id in unlisted {
            self.remove_replica(&id);
        }
        for chunk in resync.chunks(LIST_CHUNK) {
            self.send_peer(
                from.clone(),
                partition,
                PeerMsg::Resync {
                    clients: chunk.to_vec(),
                },
            );
        }
    }

    /// The replicas of `from` that `on_slice_clients` prunes after reading its lists.
    pub(super) fn unlisted_replicas(
        &self,
        from: &NodeId,
        partition: u16,
        as_of: u64,
        listed_slices: &HashSet<u16>,
        listed: &HashSet<ClientId>,
    ) -> Vec<ClientId> {
        // Replicas of `from` in the listed slices that it does not list are gone there. A
        // heartbeat client's existence is decided by the node our view makes responsible:
        // while views disagree (a member just went DOWN for one node but not yet for
        // another), a node that handed the client over no longer lists it, yet it lives.
        let members = self
            .distro
            .as_ref()
            .map(|d| d.members.clone())
            .unwrap_or_default();
        self.clients
            .iter()
            .filter(|(id, c)| {
                c.replica
                    .as_ref()
                    .is_some_and(|i| &i.origin == from && !i.unconfirmed)
                    && (!id.is_heartbeat()
                        || members.responsible_for(id) == Some(from)
                        || c.replica.as_ref().is_some_and(|i| i.by_claim))
                    && partition_of(id) == partition
                    && listed_slices.contains(&slice_of(id))
                    && !listed.contains(*id)
                    && as_of > 0
                    && c.publishes.iter().all(|e| e.rev <= as_of)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Heartbeat copies of `from` in its listed slices that it does not list, although our
    /// view makes another member, UP, responsible for them (`unlisted_replicas` leaves them:
    /// `from` may have handed them over), with that member. Copies we handed to `from`
    /// ourselves (unconfirmed) too: `from` is no longer the member to confirm them. Not
    /// copies we follow by a claim (views disagree; `from`'s lists decide those).
    pub(super) fn orphaned_replicas(
        &self,
        from: &NodeId,
        partition: u16,
        as_of: u64,
        listed_slices: &HashSet<u16>,
        listed: &HashSet<ClientId>,
    ) -> Vec<(ClientId, NodeId)> {
        let Some(d) = self.distro.as_ref() else {
            return Vec::new();
        };
        if as_of == 0 {
            return Vec::new();
        }
        let members = &d.members;
        self.clients
            .iter()
            .filter(|(id, c)| {
                id.is_heartbeat()
                    && c.replica
                        .as_ref()
                        .is_some_and(|i| &i.origin == from && !i.by_claim)
                    && partition_of(id) == partition
                    && listed_slices.contains(&slice_of(id))
                    && !listed.contains(*id)
            })
            .filter_map(|(id, _)| {
                let responsible = members.responsible_for(id)?;
                let up = members
                    .peers
                    .iter()
                    .any(|(n, h)| n == responsible && *h == Health::Up);
                (responsible != from && up).then(|| (id.clone(), responsible.clone()))
            })
            .collect()
    }

    /// A peer holds copies of our clients that differ from ours (its verify found them):
    /// send it our current state of each.
    pub(super) fn on_resync(&mut self, from: NodeId, partition: u16, clients: Vec<ClientId>) {
        let stats = self.stats.clone();
        bump(&stats.distro.resyncs, clients.len() as u64);
        // A client with a change on its way to the peer differs because the peer has not
        // applied it yet. Resending its full state (restamped, to every peer) would only add
        // to the backlog that made it late: with big clients, verify rounds behind a sync
        // backlog doubled what was sent (issue 19, `engine/tests/sync_flow.rs`). Just sent,
        // or queued: nothing to do. In a batch older than `sync_timeout_ms`: the peer
        // asking for a client of it is the evidence that it was lost, so the batch is
        // retired at once, its keys queued again for this peer, rather than after the
        // peer's measured timeout (found by the simulator, seed 36 of the short sweep: acks
        // held up by a paused peer had raised that timeout to 15 s, a batch lost after the
        // pause held the window that long, and the queued repair waited behind it).
        // If the copy still differs once its changes are applied, the next round asks again.
        let underway = self.clients_underway(&from, partition);
        for client in clients {
            match underway.get(&client) {
                Some(Underway::OnItsWay) => {
                    bump(&stats.distro.resyncs_underway, 1);
                    continue;
                }
                Some(Underway::Late(seqs)) => {
                    bump(&stats.distro.resyncs_underway, 1);
                    self.retire_lost_batches(&from, partition, seqs.clone());
                    continue;
                }
                None => {}
            }
            if partition_of(&client) == partition {
                // The peer's copy disagrees with ours and ours is authoritative:
                // re-issue it as the newest state, so that it replaces the copy even
                // if the copy carries revisions from a clock that ran ahead.
                // Not a client unheard of since this process stopped running: the
                // peer held it meanwhile and may have seen it die, and its `Drop`
                // (stamped then) must still beat our copy when it arrives after
                // this request. Our state goes out with its old revisions; the
                // client's next beat makes it ours again (found by the chaos
                // harness's pause scenario: the Resync overtook the Drop, and the
                // dead instance came back on every peer for 5 s).
                if !self.pause_stale.contains(&client) {
                    self.restamp_native(&client);
                }
                self.mark_for(
                    &from,
                    SyncKey {
                        client,
                        service: None,
                    },
                );
            }
        }
        self.pump(&from);
    }

    /// Clients of `partition` with changes on their way to `peer`: in a batch sent less
    /// than `sync_timeout_ms` ago or queued (on its way), or only in older batches (late:
    /// maybe lost). The floor, not the peer's measured timeout, tells them apart: that can
    /// be far longer (30 s), and the fault simulator's lossy links found repairs skipped
    /// that long (I3's grace is one verify interval plus one sync timeout).
    fn clients_underway(&self, peer: &NodeId, partition: u16) -> HashMap<ClientId, Underway> {
        let now_ms = self.now.mono_ms;
        let mut out: HashMap<ClientId, Underway> = HashMap::new();
        let Some(d) = self.distro.as_ref() else {
            return out;
        };
        let Some(part) = d.links.get(peer).and_then(|l| l.get(&partition)) else {
            return out;
        };
        for (seq, f) in &part.inflight {
            let fresh = now_ms.saturating_sub(f.sent_ms) < d.cfg.sync_timeout_ms;
            for k in &f.keys {
                let entry = out
                    .entry(k.client.clone())
                    .or_insert_with(|| Underway::Late(Vec::new()));
                match entry {
                    Underway::Late(_) if fresh => *entry = Underway::OnItsWay,
                    Underway::Late(seqs) => {
                        if seqs.last() != Some(seq) {
                            seqs.push(*seq)
                        }
                    }
                    Underway::OnItsWay => {}
                }
            }
        }
        for k in &part.dirty {
            out.insert(k.client.clone(), Underway::OnItsWay);
        }
        out
    }
}

/// What a resync finds of a client's changes towards the asking peer.
enum Underway {
    /// In a batch just sent, or queued: the peer will have it.
    OnItsWay,
    /// Only in batches older than `sync_timeout_ms`, which may be lost: these batches.
    Late(Vec<u64>),
}
