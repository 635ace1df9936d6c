//! Read-only introspection of the Distro state, for logs, `/metrics`, the shutdown wait
//! and the simulator's invariant checks. Nothing here changes state.

use crate::distro::{Health, NodeId};
use crate::shard::{ClientId, ServiceKey, Shard};

impl Shard {
    /// Calls `f` for every publish this shard holds: client, service, revision, and the
    /// node responsible for the client (`None`: this node). For introspection and the
    /// simulator's invariant checks.
    pub fn visit_entries(
        &self,
        mut f: impl FnMut(&ClientId, &ServiceKey, u64, Option<(&NodeId, u64)>),
    ) {
        for (id, c) in &self.clients {
            let origin = c.replica.as_ref().map(|i| (&i.origin, i.epoch));
            for e in &c.publishes {
                f(id, &e.service, e.rev, origin);
            }
        }
    }

    /// A one-line description of what this shard holds about `client` (owner, revisions,
    /// removal memory); for logs and the simulator's reports.
    pub fn describe_client(&self, client: &ClientId) -> String {
        let dropped = self
            .distro
            .as_ref()
            .and_then(|d| d.dropped.get(client).copied());
        match self.clients.get(client) {
            None => format!("absent (removal memory {dropped:?})"),
            Some(c) => format!(
                "{} rev {} entries {:?} floor {:?} tombstones {:?} silent {:?} ms{}{}",
                c.replica
                    .as_ref()
                    .map_or_else(|| "ours".to_string(), |i| format!("copy of {}", i.origin)),
                c.revision,
                c.publishes
                    .iter()
                    .map(|e| (e.service.name().to_string(), e.rev))
                    .collect::<Vec<_>>(),
                c.replica.as_ref().map(|i| i.floor),
                c.replica.as_ref().map(|i| i.tombstones.len()),
                c.publishes
                    .iter()
                    .map(|e| self.now.mono_ms.saturating_sub(e.last_beat_ms))
                    .collect::<Vec<_>>(),
                match self.distro.as_ref().and_then(|d| d.handovers.get(client)) {
                    Some(to) => format!(", handing over to {to}"),
                    None => String::new(),
                },
                if self.pause_stale.contains(client) {
                    ", stale after a pause"
                } else {
                    ""
                },
            ),
        }
    }

    /// A fingerprint of what [`Shard::describe_client`] shows, except the silence (which
    /// grows every millisecond): the last beat's time stands in for it. A tracer compares
    /// fingerprints after every input and formats the description only when it changed;
    /// formatting every traced client after every input stalled a chaos node's core.
    pub fn client_fingerprint(&self, client: &ClientId) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let d = self.distro.as_ref();
        d.and_then(|d| d.dropped.get(client)).hash(&mut h);
        if let Some(c) = self.clients.get(client) {
            c.replica
                .as_ref()
                .map(|i| (&i.origin, i.floor, i.tombstones.len()))
                .hash(&mut h);
            c.revision.hash(&mut h);
            for e in &c.publishes {
                (&e.service, e.rev, e.last_beat_ms).hash(&mut h);
            }
            d.and_then(|d| d.handovers.get(client)).hash(&mut h);
            self.pause_stale.contains(client).hash(&mut h);
        }
        h.finish()
    }

    /// While the startup snapshot loads: a one-line account of the partitions still
    /// loading (for the log of a node that takes long to report UP).
    pub fn load_status(&self) -> Option<String> {
        let d = self.distro.as_ref()?;
        if d.loaded {
            return None;
        }
        let now = self.now.mono_ms;
        let pending: Vec<String> = d
            .loads
            .iter()
            .filter(|(_, l)| !l.done)
            .map(|(p, l)| {
                let heard = l
                    .source
                    .as_ref()
                    .and_then(|s| d.load_heard.get(s))
                    .map_or("never".to_string(), |t| {
                        format!("{} ms ago", now.saturating_sub(*t))
                    });
                format!(
                    "p{p} from {} chunk {} (progress {} ms ago, source heard {heard})",
                    l.source.as_ref().map_or("-".to_string(), |s| s.to_string()),
                    l.expect_seq,
                    now.saturating_sub(l.last_progress_ms),
                )
            })
            .collect();
        Some(format!(
            "{} of {} partitions loading: {}",
            pending.len(),
            d.loads.len(),
            pending
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }

    /// Changes of our clients that a peer not DOWN has not acknowledged yet: keys waiting in
    /// the merge window plus keys of batches in flight. A node that shuts down waits for
    /// this to reach zero (see [`Shard::handle_shutdown`]); DOWN peers do not count, they
    /// are repaired by verify when they come back.
    pub fn unsynced_changes(&self) -> usize {
        self.unsynced_by_peer().iter().map(|(_, n)| n).sum()
    }

    /// [`Shard::unsynced_changes`] per peer (peers with none left out), for logs.
    pub fn unsynced_by_peer(&self) -> Vec<(NodeId, usize)> {
        let Some(d) = self.distro.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<(NodeId, usize)> = d
            .links
            .iter()
            .filter(|(peer, _)| self.peer_health(peer) != Health::Down)
            .map(|(peer, parts)| {
                let n = parts
                    .values()
                    .map(|p| {
                        p.dirty.len() + p.inflight.values().map(|b| b.keys.len()).sum::<usize>()
                    })
                    .sum();
                (peer.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }

    /// The largest number of unacknowledged sync batches towards any peer (over this
    /// shard's partitions).
    pub fn max_inflight_batches(&self) -> usize {
        self.distro.as_ref().map_or(0, |d| {
            d.links
                .values()
                .map(|l| l.values().map(|p| p.inflight.len()).sum())
                .max()
                .unwrap_or(0)
        })
    }
}
