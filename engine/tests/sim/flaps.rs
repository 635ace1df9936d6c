//! I1's "no flaps" half (DISTRO.md, I1): a node that is UP never stops listing a live HTTP
//! instance while it is together with the node its client's beats enter — across heals,
//! returns and hand-overs. Checked on every seed, on every check tick.
//!
//! "Together" is what the rule may assume: both nodes run, neither direction of their link
//! is cut, and each has seen the other UP since before the node started listing the
//! instance. A node that was apart from the beats (a cut, a pause, a restart, a loading
//! snapshot) starts over: it must list the instance again before it may not lose it. Loss
//! on the network makes "together" a matter of luck, so nothing is judged while there is
//! any (like I3).

use std::collections::{BTreeSet, HashSet};

use engine::distro::Health;
use engine::{ClientId, Host, ServiceKey};

use super::World;

/// How many flaps a seed reports in full (the rest are counted).
const REPORTED: usize = 3;

impl World {
    /// The addresses node `i` shows an instance at in `services`. Cheap on purpose: this
    /// runs on every check tick of every seed, so it reads only those services' views (a
    /// walk over the whole index visits each of its buckets).
    fn shown_addrs(&self, i: usize, services: &BTreeSet<ServiceKey>) -> HashSet<u64> {
        let mut out = HashSet::new();
        for s in services {
            if let Some(view) = self.nodes[i].index.view(s) {
                for inst in view.instances() {
                    if let Host::V4(ip) = &inst.host {
                        out.insert(u64::from(u32::from(*ip)) << 16 | u64::from(inst.port));
                    }
                }
            }
        }
        out
    }

    /// Whether node `i` may be expected to keep what it lists of a client whose beats enter
    /// at node `e`, listed since `since` (ms).
    fn together(&self, i: usize, e: usize, since: u64) -> bool {
        if i == e {
            return true;
        }
        let up_since = |a: usize, b: usize| {
            let (h, at, _) = self.nodes[a].seen[b];
            h == Health::Up && at <= since
        };
        self.running(e)
            && !self.blocked.contains(&(i, e))
            && !self.blocked.contains(&(e, i))
            && up_since(i, e)
            && up_since(e, i)
    }

    /// I1, no flaps: see the module comment.
    pub(super) fn check_flaps(&mut self) {
        let now = self.now_ms;
        if self.loss > 0.0 {
            self.listed.clear();
            return;
        }
        let services: BTreeSet<ServiceKey> = self
            .truth
            .iter()
            .filter(|(c, _)| c.is_heartbeat())
            .flat_map(|(_, t)| t.publishes.keys().cloned())
            .collect();
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            // UP: running and loaded; judged only for what it listed since it last started
            // or resumed.
            let up = self.running(i) && n.shards.iter().all(|s| s.is_loaded());
            if !up {
                self.listed.retain(|(k, _), _| *k != i);
                continue;
            }
            let fresh_since = n.started_ms.max(n.paused_until_ms);
            let shown = self.shown_addrs(i, &services);
            let live: Vec<(ClientId, u64, usize)> = self
                .truth
                .keys()
                .filter_map(|c| match c {
                    ClientId::V4(ip, port) => self.beat_entry.get(c).map(|e| {
                        (
                            c.clone(),
                            u64::from(u32::from(*ip)) << 16 | u64::from(*port),
                            *e,
                        )
                    }),
                    _ => None,
                })
                .collect();
            for (c, addr, e) in live {
                let key = (i, c);
                let since = self.listed.get(&key).copied();
                let with = match since {
                    None => self.together(i, e, now),
                    Some(s) => s >= fresh_since && self.together(i, e, s),
                };
                if !with {
                    self.listed.remove(&key);
                    continue;
                }
                match (since, shown.contains(&addr)) {
                    (None, true) => {
                        self.listed.insert(key, now);
                    }
                    (Some(s), false) => {
                        self.listed.remove(&key);
                        self.flaps += 1;
                        if self.flaps <= REPORTED && self.scenario.flaps_are_violations {
                            let c = key.1;
                            self.log.push(format!("I1 (flap) at node {i} at {now} ms:"));
                            self.describe_client(&c);
                            self.violations.push(format!(
                                "I1: node {i} stopped listing live {c} at {now} ms (listed since {s} ms; its beats enter at node {e})"
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
