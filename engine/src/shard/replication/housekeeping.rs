//! Housekeeping: the periodic Distro tick — pause detection (a stopped process must not
//! expire everything when it resumes), retries of unacknowledged sync batches, snapshot
//! progress, and the expiry of replica leases (I4).

use super::{bump, TICK_MS};
use crate::distro::{partition_of, slice_of, Health, NodeId};
use crate::shard::{ClientId, Shard, Timer};

impl Shard {
    pub(in crate::shard) fn on_distro_tick(&mut self) {
        let now_ms = self.now.mono_ms;
        if self.distro.is_none() {
            return;
        }
        self.set_timer(now_ms + TICK_MS, Timer::DistroTick);
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        // A long gap between ticks means this process was not running (SIGSTOP, a VM
        // pause): every lease looks expired, but only because we did not listen. Restart
        // the leases instead of expiring everything (I4).
        let paused = now_ms.saturating_sub(d.last_tick_ms) > d.cfg.replica_lease_ms / 2;
        d.last_tick_ms = now_ms;
        if !d.owned_removals.is_empty() {
            let lease = d.cfg.replica_lease_ms;
            d.owned_removals
                .retain(|_, (_, at)| now_ms.saturating_sub(*at) < lease);
        }
        if paused {
            d.last_expiry_ms = now_ms;
            for slices in d.renewed.values_mut() {
                slices.iter_mut().for_each(|s| *s = now_ms);
            }
            for c in self.clients.values_mut() {
                if let Some(info) = c.replica.as_mut() {
                    info.renewed_ms = now_ms;
                }
            }
        }
        // Retries: an unacknowledged batch goes back to the queue; it is rebuilt from the
        // current state when sent again (I3). The timeout is measured per peer (`flow`).
        self.retry_late_batches();
        self.drive_load();
        self.serve_snapshots();
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if now_ms.saturating_sub(d.last_expiry_ms) >= 1_000 {
            d.last_expiry_ms = now_ms;
            self.expire_replicas();
            // Once a second, like leases: a hold is seconds long.
            self.release_holds();
        }
    }

    /// Removes replicas whose owner has not confirmed them for a lease (I4 says when this
    /// must not happen: the lease is renewed by existence at the owner, not by agreement).
    pub(super) fn expire_replicas(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let lease = d.cfg.replica_lease_ms;
        let renewed = &d.renewed;
        // An owner we are connected to is alive: if its verify did not get through, it is
        // slow or its link is saturated, which must never expire its clients (I4; Nacos
        // #8408). What it deleted reaches us as a `Drop` or through verify's client lists.
        // Leases expire the copies of owners we cannot reach. A SUSPICIOUS owner may still
        // be alive (and is still responsible for its heartbeat clients in every view): its
        // copies wait until it is declared DOWN, and then a whole lease more.
        let reachable: Vec<&NodeId> = d
            .members
            .peers
            .iter()
            .filter(|(_, h)| *h != Health::Down)
            .map(|(n, _)| n)
            .collect();
        let down_since = &d.down_since;
        let expired: Vec<ClientId> = self
            .clients
            .iter()
            .filter_map(|(id, c)| {
                let info = c.replica.as_ref()?;
                if info.unconfirmed {
                    return (now_ms.saturating_sub(info.renewed_ms) > lease).then(|| id.clone());
                }
                if reachable.contains(&&info.origin) {
                    return None;
                }
                let slice_renewed = renewed
                    .get(&(info.origin.clone(), partition_of(id)))
                    .map_or(0, |s| s[slice_of(id) as usize]);
                let went_down = down_since.get(&info.origin).copied().unwrap_or(0);
                let last = info.renewed_ms.max(slice_renewed).max(went_down);
                (now_ms.saturating_sub(last) > lease).then(|| id.clone())
            })
            .collect();
        d.dropped
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= lease);
        d.claims
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= lease);
        bump(&self.stats.distro.replicas_expired, expired.len() as u64);
        for id in expired {
            self.remove_replica(&id);
        }
    }
}
