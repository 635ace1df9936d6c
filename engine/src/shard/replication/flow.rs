//! Flow control of sync batches: acknowledgements, the acknowledgement timeout of each peer
//! measured from its acknowledgements, and the retries of batches that timed out.
//!
//! Why the timeout is measured rather than fixed: a batch waits behind everything queued
//! before it towards the peer, and the peer applies one message at a time. With big clients
//! and a busy peer the wait exceeded a fixed 3 s, every batch was retried while the first
//! copy was still queued, and the copies made the queue longer still — the congestion
//! collapse of issue 19 (`engine/tests/sync_flow.rs`). As TCP's RTO (RFC 6298): a smoothed
//! acknowledgement time plus four times its variation, between `sync_timeout_ms` and
//! `sync_timeout_max_ms`. A retried batch gets a new sequence number, so an acknowledgement
//! is never ambiguous: a late one of a retried batch still measures the peer (and counts as
//! a spurious retry), which is what raises the timeout of a peer that became slow.
//!
//! No exponential back-off (TCP doubles its RTO after each timeout): the peer stream is
//! reliable, so a batch is lost only with its connection, and then the sooner it is resent
//! the better. Doubling made the fault simulator's lossy links wait up to 30 s for a retry
//! while verify, which leaves clients on their way to sync, could not repair them either.

use super::{bump, NodeId};
use crate::distro::{Health, Members};
use crate::shard::Shard;

/// Retried batches remembered per peer and partition, to recognise their late
/// acknowledgements.
const RETIRED_KEPT: usize = 64;

/// Acknowledgement times towards one peer and the timeout they give (ms).
#[derive(Default, Clone, Debug)]
pub(super) struct AckClock {
    /// Smoothed acknowledgement time and its mean deviation; `None` before the first.
    srtt: Option<(u64, u64)>,
}

impl AckClock {
    /// An acknowledgement came `sample_ms` after its batch was sent.
    pub(super) fn observe(&mut self, sample_ms: u64) {
        self.srtt = Some(match self.srtt {
            None => (sample_ms, sample_ms / 2),
            Some((srtt, var)) => {
                let var = (3 * var + srtt.abs_diff(sample_ms)) / 4;
                let srtt = (7 * srtt + sample_ms) / 8;
                (srtt, var)
            }
        });
    }

    /// How long a batch may wait for its acknowledgement.
    pub(super) fn timeout(&self, floor_ms: u64, cap_ms: u64) -> u64 {
        let base = self.srtt.map_or(floor_ms, |(s, v)| s + 4 * v);
        base.clamp(floor_ms, cap_ms.max(floor_ms))
    }
}

impl Shard {
    /// Peer `from` applied batch `seq` of `partition`.
    pub(super) fn on_sync_ack(&mut self, from: &NodeId, partition: u16, seq: u64) {
        let now_ms = self.now.mono_ms;
        let stats = self.stats.clone();
        let Some(part) = self.link_part(from, partition) else {
            return;
        };
        let (sent_ms, done) = match part.inflight.remove(&seq) {
            Some(done) => (Some(done.sent_ms), Some(done)),
            None => match part.retired.remove(&seq) {
                Some(sent_ms) => {
                    bump(&stats.distro.sync_spurious_retries, 1);
                    (Some(sent_ms), None)
                }
                None => (None, None),
            },
        };
        if let (Some(sent_ms), Some(d)) = (sent_ms, self.distro.as_mut()) {
            d.ack_clocks
                .entry(from.clone())
                .or_default()
                .observe(now_ms.saturating_sub(sent_ms));
        }
        if let Some(done) = done {
            self.complete_handovers(from, &done.keys);
        }
        self.pump(from);
    }

    /// The acknowledgement timeout towards `peer` now (ms).
    pub(super) fn ack_timeout(&self, peer: &NodeId) -> u64 {
        self.distro.as_ref().map_or(0, |d| {
            d.ack_clocks
                .get(peer)
                .cloned()
                .unwrap_or_default()
                .timeout(d.cfg.sync_timeout_ms, d.cfg.sync_timeout_max_ms)
        })
    }

    /// Batches unacknowledged past their peer's timeout go back to the queue: their keys
    /// merge with what changed since, and are sent once, from the current state (I3).
    pub(super) fn retry_late_batches(&mut self) {
        let now_ms = self.now.mono_ms;
        let peers: Vec<NodeId> = match self.distro.as_ref() {
            Some(d) => d.links.keys().cloned().collect(),
            None => return,
        };
        let mut retried = 0u64;
        let mut work = Vec::new();
        for peer in peers {
            let timeout = self.ack_timeout(&peer);
            let Some(d) = self.distro.as_mut() else {
                return;
            };
            let Some(parts) = d.links.get_mut(&peer) else {
                continue;
            };
            let mut late_here = 0u64;
            let mut pending = false;
            for part in parts.values_mut() {
                let late: Vec<u64> = part
                    .inflight
                    .iter()
                    .filter(|(_, f)| now_ms.saturating_sub(f.sent_ms) >= timeout)
                    .map(|(s, _)| *s)
                    .collect();
                for seq in late {
                    if let Some(f) = part.inflight.remove(&seq) {
                        late_here += 1;
                        part.retired.insert(seq, f.sent_ms);
                        for k in f.keys {
                            part.dirty.insert(k);
                        }
                    }
                }
                while part.retired.len() > RETIRED_KEPT {
                    part.retired.pop_first();
                }
                pending |= !part.dirty.is_empty();
            }
            retried += late_here;
            if pending {
                work.push(peer);
            }
        }
        bump(&self.stats.distro.sync_retries, retried);
        for peer in work {
            self.pump(&peer);
        }
    }

    /// Batches `seqs` of `partition` towards `peer` are lost (the peer asked for a client
    /// only they carry, long after they were sent): their keys go back to the queue, to be
    /// sent once from the current state, and the window they held is free again.
    pub(super) fn retire_lost_batches(&mut self, peer: &NodeId, partition: u16, seqs: Vec<u64>) {
        let Some(part) = self.link_part(peer, partition) else {
            return;
        };
        let mut retired = 0u64;
        for seq in seqs {
            if let Some(f) = part.inflight.remove(&seq) {
                retired += 1;
                part.retired.insert(seq, f.sent_ms);
                for k in f.keys {
                    part.dirty.insert(k);
                }
            }
        }
        while part.retired.len() > RETIRED_KEPT {
            part.retired.pop_first();
        }
        bump(&self.stats.distro.sync_retries, retired);
    }

    /// Peer `peer` asked for a snapshot of `partition`: it has started (again) and loads.
    /// What is in flight to it there went to its earlier run, or is covered by the snapshot:
    /// the batches are retired at once (their keys queued, and then dropped where the
    /// snapshot carries them) and its acknowledgement times start over. Waiting for their
    /// timeout held the window — a restart is quick enough that the link never looked
    /// lost — for as long as the timeout the earlier run's slowness had measured (found by
    /// the fault simulator, seed 322 of the standard sweep: 25 s without a batch to the
    /// restarted node, a live instance missing there all that time).
    pub(super) fn retire_batches_to_a_restarted_peer(&mut self, peer: &NodeId, partition: u16) {
        if let Some(d) = self.distro.as_mut() {
            d.ack_clocks.remove(peer);
        }
        let seqs: Vec<u64> = self
            .link_part(peer, partition)
            .map(|p| p.inflight.keys().copied().collect())
            .unwrap_or_default();
        self.retire_lost_batches(peer, partition, seqs);
    }

    /// Peers whose link stopped working (UP in `old`, not now): batches in flight to them
    /// went with the connection (the transport re-sends nothing it handed to a lost one),
    /// so they are queued again at once rather than after their timeout, and the peer's
    /// acknowledgement times start over: acknowledgements held up by a pause or a dead
    /// link measured the outage, not the peer, and would have kept a later loss waiting up
    /// to `sync_timeout_max_ms` (found by the fault simulator: a peer paused for 8 s).
    pub(super) fn requeue_lost_links(&mut self, old: &Members) {
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let lost: Vec<NodeId> = old
            .peers
            .iter()
            .filter(|(n, h)| {
                *h == Health::Up
                    && d.members
                        .peers
                        .iter()
                        .any(|(m, now)| m == n && *now != Health::Up)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for peer in lost {
            d.ack_clocks.remove(&peer);
            let Some(parts) = d.links.get_mut(&peer) else {
                continue;
            };
            for part in parts.values_mut() {
                for (seq, f) in std::mem::take(&mut part.inflight) {
                    part.retired.insert(seq, f.sent_ms);
                    for k in f.keys {
                        part.dirty.insert(k);
                    }
                }
                while part.retired.len() > RETIRED_KEPT {
                    part.retired.pop_first();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AckClock;

    #[test]
    fn the_timeout_follows_acknowledgement_times_between_floor_and_cap() {
        let mut c = AckClock::default();
        assert_eq!(
            c.timeout(3_000, 30_000),
            3_000,
            "the floor before any sample"
        );
        for _ in 0..20 {
            c.observe(50);
        }
        assert_eq!(c.timeout(3_000, 30_000), 3_000, "fast peers keep the floor");
        for _ in 0..20 {
            c.observe(5_000);
        }
        let t = c.timeout(3_000, 30_000);
        assert!(
            (5_000..=8_000).contains(&t),
            "a slow peer's timeout follows it: {t}"
        );
        c.observe(60_000);
        assert_eq!(c.timeout(3_000, 30_000), 30_000, "never above the cap");
        for _ in 0..40 {
            c.observe(50);
        }
        assert_eq!(
            c.timeout(3_000, 30_000),
            3_000,
            "and back down when it is fast again"
        );
    }
}
