//! Heartbeat health of HTTP (`ip:port`) clients: marking instances unhealthy or removing
//! them when their beats stop (Nacos's UnhealthyInstanceChecker and
//! ExpiredInstanceChecker), and not doing so after this process itself did not run.

use std::sync::atomic::Ordering;

use super::{next_rev, ServiceOp, Shard};
use crate::model::{ClientId, Publish, ServiceKey};

impl Shard {
    pub(super) fn set_health(&mut self, client_id: &ClientId, service: &ServiceKey, healthy: bool) {
        let Some(client) = self.clients.get_mut(client_id) else {
            return;
        };
        let Some(pos) = client.entry(service).ok() else {
            return;
        };
        let entry = &mut client.publishes[pos];
        if entry.publish.iter().all(|i| i.healthy == healthy) {
            return;
        }
        let publish: Publish = entry
            .publish
            .iter()
            .map(|i| i.with_health(healthy))
            .collect::<Vec<_>>()
            .into();
        entry.publish = publish.clone();
        let rev = next_rev(&mut self.clock, self.now.unix_ms);
        let old_rev = std::mem::replace(&mut entry.rev, rev);
        client.revision = rev;
        let service = entry.service.clone();
        self.native_entry_changed(client_id, &service, Some(old_rev), Some(rev));
        self.send_service_op(
            service,
            ServiceOp::Upsert {
                client: client_id.clone(),
                publish,
            },
        );
    }

    /// A peer deleted one of our heartbeat clients while we did not run (it held the
    /// client meanwhile, see `check_heartbeats`): its `Drop`, newer than our copy, wins.
    /// Returns whether it was applied.
    pub(super) fn accept_drop_after_pause(&mut self, client_id: &ClientId, rev: u64) -> bool {
        if !self.pause_stale.contains(client_id) {
            return false;
        }
        let Some(client) = self.clients.get_mut(client_id) else {
            return false;
        };
        if client.replica.is_some() || client.publishes.iter().any(|e| e.rev >= rev) {
            return false;
        }
        self.pause_stale.remove(client_id);
        let entries = std::mem::take(&mut client.publishes);
        client.revision = next_rev(&mut self.clock, self.now.unix_ms);
        for entry in entries {
            self.native_entry_changed(client_id, &entry.service, Some(entry.rev), None);
            self.send_service_op(
                entry.service,
                ServiceOp::Remove {
                    client: client_id.clone(),
                },
            );
        }
        self.drop_client_if_empty(client_id);
        true
    }

    /// Marks heartbeat instances unhealthy, or removes them, when their beats stopped (Nacos's
    /// UnhealthyInstanceChecker and ExpiredInstanceChecker).
    pub(super) fn check_heartbeats(&mut self) {
        if self.shutting_down && self.distro.is_some() {
            return;
        }
        let now_ms = self.now.mono_ms;
        let interval = self.cfg.beat_check_interval_ms;
        let gap = now_ms.saturating_sub(self.last_beat_check_ms);
        self.last_beat_check_ms = now_ms;
        if gap > 3 * interval {
            // This process did not run (SIGSTOP, a VM pause, a stalled machine): the
            // clients' beats went to other nodes or wait unread in our sockets, so silence
            // measured across the gap proves nothing. Shift every clock by the time we were
            // stopped; expired now, a live client would flap, and a dead one that a peer still
            // holds would come back with its hand-over (the chaos harness's pause scenario).
            //
            // In a cluster the members took our clients over while we were DOWN and expired
            // the dead ones: until a client is heard from again, a peer's `Drop` of it wins
            // over our copy (see `accept_drop_after_pause`); kept and listed by our verify
            // instead, it would be resynced back onto the peers that had expired it.
            let reverted = self
                .cfg
                .distro
                .as_ref()
                .is_some_and(|d| d.reverted.pause_drop);
            if self.distro.is_some() && !reverted {
                self.pause_stale = self
                    .clients
                    .iter()
                    .filter(|(id, c)| id.is_heartbeat() && c.replica.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
            }
            let stopped = gap - interval;
            self.stats
                .paused_beat_checks
                .fetch_add(1, Ordering::Relaxed);
            for client in self.clients.values_mut() {
                for entry in &mut client.publishes {
                    entry.last_beat_ms = entry.last_beat_ms.saturating_add(stopped).min(now_ms);
                }
            }
        }
        let mut unhealthy: Vec<(ClientId, ServiceKey)> = Vec::new();
        let mut expired: Vec<(ClientId, ServiceKey)> = Vec::new();
        let distro_members = self.distro_members();
        for (id, client) in &self.clients {
            // Copies of a peer's clients are expired by their owner, not here. So are the
            // clients we hold for a responsible node that did not answer (a write applied
            // here while it was unreachable) and those we are handing over: the client
            // beats one node, not necessarily us, and only the responsible node hears every
            // beat (they are forwarded to it). Held here, they are handed over as soon as the
            // responsible node answers or is declared DOWN.
            if !id.is_heartbeat()
                || client.replica.is_some()
                || distro_members.is_some_and(|m| !m.is_mine(id))
            {
                continue;
            }
            for entry in &client.publishes {
                let silent = now_ms.saturating_sub(entry.last_beat_ms);
                let Some(timing) = entry.publish.first().map(|i| i.timing()) else {
                    continue;
                };
                if silent > u64::from(timing.delete_ms) {
                    expired.push((id.clone(), entry.service.clone()));
                } else if silent > u64::from(timing.timeout_ms)
                    && entry.publish.iter().any(|i| i.healthy)
                    // Unheard of since our pause: a peer that held it meanwhile may hold its
                    // removal back for a hold (`apart`); a fresh unhealthy revision would
                    // beat that `Drop` and carry the dead instance back onto every peer
                    // (found by the chaos harness's pause scenario). It expires, or is
                    // dropped, or is heard from.
                    && !self.pause_stale.contains(id)
                {
                    unhealthy.push((id.clone(), entry.service.clone()));
                }
            }
        }
        for (id, service) in unhealthy {
            self.stats.unhealthy_marks.fetch_add(1, Ordering::Relaxed);
            self.set_health(&id, &service, false);
        }
        for (id, service) in expired {
            let Some(client) = self.clients.get_mut(&id) else {
                continue;
            };
            let Some(pos) = client.entry(&service).ok() else {
                continue;
            };
            let entry = client.publishes.remove(pos);
            client.revision = next_rev(&mut self.clock, self.now.unix_ms);
            self.native_entry_changed(&id, &entry.service, Some(entry.rev), None);
            self.stats
                .expired_instances
                .fetch_add(entry.publish.len() as u64, Ordering::Relaxed);
            let (last_beat, hold) = (
                entry.last_beat_ms,
                super::replication::hold_for(&entry.publish),
            );
            self.send_service_op(entry.service, ServiceOp::Remove { client: id.clone() });
            self.drop_client_if_empty(&id);
            // Silence here proves nothing to a member we could not hear meanwhile: its
            // removal waits for it (DISTRO.md, I1 "No flaps").
            self.hold_expiry(&id, last_beat, hold);
        }
    }
}
