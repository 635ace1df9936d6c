//! The invariants of `DISTRO.md`, checked on the world: safety while the faults happen
//! (I2, I3, I5; I6 is checked as messages are sent, in `network.rs`), convergence (I1) and
//! quiet verify rounds (I7) once they are over, the dead clients' fate (I8); and what a
//! failing check describes, and the summary of a run.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use engine::distro::{Health, NodeId};
use engine::shard::client_shard;
use engine::{ClientId, Host, ServiceKey};

use super::clients::TruthClient;
use super::World;

/// An instance as a node answers it: (service, host, port, weight). Kept as the engine's own
/// types rather than strings: these sets are built for every node every check, and
/// formatting them was most of the simulator's time.
type Shown = (ServiceKey, Host, u16, u64);

/// The owner association (node, epoch) and revision a node last showed for a publish.
pub(super) type SeenRev = (Option<(NodeId, u64)>, u64);

/// I8: a dead client may be buried (absent from every alive node on a calm cluster) only
/// once nothing it sent can still be on its way: the longest pause (15 s, while what was
/// sent to the node waits in its socket) plus a forward's timeout and a deregistration's
/// patience (1.5 s each), rounded up.
pub(super) const BURY_AFTER_MS: u64 = 20_000;
/// I8: on a settled cluster a dead client is gone everywhere within its deletion timeout
/// plus this, counted from its death or from the moment the cluster settled, whichever is
/// later (a node that takes a client over gives it a whole deletion timeout; then the
/// removal travels).
pub(super) const DEAD_GRACE_MS: u64 = 10_000;

/// An HTTP client the world stopped keeping alive: it deregistered or died silently (I8).
#[derive(Clone, Debug)]
pub(super) struct DeadClient {
    /// When it stopped beating (its last beat was sent at or before this).
    pub(super) at_ms: u64,
    /// Its instances' deletion timeout.
    pub(super) delete_ms: u64,
    /// "deregisters" or "dies silently".
    pub(super) how: &'static str,
    /// Absent from every alive node on a calm cluster since `BURY_AFTER_MS` after its
    /// death: from then on no node may show it.
    pub(super) buried: bool,
}

impl World {
    /// Whether every alive node runs and sees every other alive node UP (nothing can be in
    /// flight to a paused node); updates `settled_since_ms`: since when, in addition, every
    /// alive node sees every other node DOWN and the alive nodes are the same (nothing moves
    /// between owners any more, and a client taken over gets a whole deletion timeout).
    fn note_calm(&mut self) -> bool {
        let nodes = &self.nodes;
        let now = self.now_ms;
        let alive: Vec<usize> = (0..nodes.len()).filter(|k| nodes[*k].alive).collect();
        let calm = alive.iter().all(|&k| {
            nodes[k].paused_until_ms <= now
                && nodes[k]
                    .seen
                    .iter()
                    .enumerate()
                    .all(|(j, (h, _, _))| j == k || !nodes[j].alive || *h == Health::Up)
        });
        let settled = calm
            && alive.iter().all(|&k| {
                nodes[k]
                    .seen
                    .iter()
                    .enumerate()
                    .all(|(j, (h, _, _))| nodes[j].alive || *h == Health::Down)
            });
        match &self.settled_since_ms {
            Some((_, set)) if settled && *set == alive => {}
            _ if settled => self.settled_since_ms = Some((now, alive)),
            _ => self.settled_since_ms = None,
        }
        calm
    }

    /// Which alive nodes show an instance of each dead client.
    fn dead_shown(&self) -> std::collections::BTreeMap<ClientId, Vec<usize>> {
        let mut shown: std::collections::BTreeMap<ClientId, Vec<usize>> = Default::default();
        let dead = &self.dead;
        for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].alive) {
            self.for_each_view(i, |view| {
                for inst in view.instances() {
                    let id = ClientId::for_address(&inst.host, inst.port);
                    if dead.contains_key(&id) {
                        let nodes = shown.entry(id).or_default();
                        if nodes.last() != Some(&i) {
                            nodes.push(i);
                        }
                    }
                }
            });
        }
        shown
    }

    /// When a dead client must be gone from every node of a settled cluster (I8).
    fn dead_deadline_ms(&self, d: &DeadClient) -> Option<u64> {
        let (since, _) = self.settled_since_ms.as_ref()?;
        // Some copies of a dead client are removed by a lease, not by a `Drop`: those of a
        // member that went DOWN, whose new owner never had the client (I4), and those handed
        // to a new owner that has not confirmed them (DISTRO.md, "An unconfirmed handover
        // proves nothing").
        let lease = self.scenario.distro.replica_lease_ms;
        // And a removal held back from a member that was apart, or held by an owner when a
        // member returned, waits one hold more (two beat intervals + 1 s; DISTRO.md, "Silence
        // is not death to a member that was apart"): found by seed 930 of the short sweep,
        // an owner's hold after a partition healed kept a dead client 10 s past the
        // deadline without it.
        let hold = 2 * super::clients::BEAT_MS + 1_000;
        Some(d.at_ms.max(*since) + d.delete_ms.max(lease) + hold + DEAD_GRACE_MS)
    }

    /// I8, the dead stay dead: a heartbeat client that deregistered or died silently at t
    /// is, on a settled cluster, gone from every node by max(t, settled since) + its
    /// deletion timeout + `DEAD_GRACE_MS`; and once it is absent from every alive node of a calm
    /// cluster (at t + `BURY_AFTER_MS` or later), no node shows it again, faults or not.
    pub(super) fn check_dead(&mut self) {
        let calm = self.note_calm();
        self.watch();
        if self.dead.is_empty() {
            return;
        }
        let now = self.now_ms;
        let shown = self.dead_shown();
        let ids: Vec<ClientId> = self.dead.keys().cloned().collect();
        for c in ids {
            let d = self.dead[&c].clone();
            let on = shown.get(&c).cloned().unwrap_or_default();
            if d.buried && !on.is_empty() {
                let text = format!(
                    "I8: {c} came back on nodes {on:?}: it {} at {} ms and was gone from every node",
                    d.how, d.at_ms
                );
                self.dead.remove(&c);
                self.log.push(format!("I8 at {now} ms:"));
                self.describe_client(&c);
                self.violations.push(text);
            } else if !d.buried && on.is_empty() && calm && now >= d.at_ms + BURY_AFTER_MS {
                self.say(format!("{c} is gone from every node"));
                if let Some(d) = self.dead.get_mut(&c) {
                    d.buried = true;
                }
            } else if !on.is_empty() && self.dead_deadline_ms(&d).is_some_and(|t| now >= t) {
                let text = format!(
                    "I8: nodes {on:?} still show {c}, which {} at {} ms (deletion timeout {} ms, settled since {:?} ms)",
                    d.how,
                    d.at_ms,
                    d.delete_ms,
                    self.settled_since_ms.as_ref().map(|(t, _)| *t)
                );
                self.dead.remove(&c);
                self.log.push(format!("I8 at {now} ms:"));
                self.describe_client(&c);
                self.violations.push(text);
            }
        }
    }

    /// `DISTRO_WATCH=ip:port` (replays): logs every change of what each node holds of
    /// that client.
    fn watch(&mut self) {
        if !self.verbose {
            return;
        }
        let Some(addr) = std::env::var("DISTRO_WATCH").ok() else {
            return;
        };
        let Some((ip, port)) = addr.split_once(':') else {
            return;
        };
        let ip: Ipv4Addr = ip.parse().expect("DISTRO_WATCH=ip:port");
        let port: u16 = port.parse().expect("DISTRO_WATCH=ip:port");
        let c = ClientId::for_address(&Host::V4(ip), port);
        for k in 0..self.nodes.len() {
            let n = &self.nodes[k];
            let text = if n.alive {
                let shard = client_shard(&c, n.shard_count);
                // The time since the last beat changes all the time: not part of a change.
                let text = n.shards[shard].describe_client(&c);
                let stable = text.split(" silent").next().unwrap_or("").to_string();
                (
                    stable,
                    format!("{text} (responsible {:?})", n.members.responsible_for(&c)),
                )
            } else {
                ("down".to_string(), "down".to_string())
            };
            if self.watched.get(&k) != Some(&text.0) {
                self.watched.insert(k, text.0);
                self.say(format!("watch node {k}: {}", text.1));
            }
        }
    }

    /// Runs `f` on node `i`'s view of each service the simulation uses (clients publish to
    /// no other). Read one by one rather than with `ReadIndex::for_each`, which walks every
    /// bucket (1,024 per shard, nearly all empty here): that walk, twice per check, was a
    /// quarter of the simulator's time.
    fn for_each_view(&self, i: usize, mut f: impl FnMut(&engine::view::ServiceView)) {
        for key in &self.services {
            self.nodes[i].index.read(key, |view| {
                if let Some(view) = view {
                    f(view)
                }
            });
        }
    }

    /// What a node answers: (service, ip, port, weight) for every instance it shows.
    fn visible(&self, i: usize) -> BTreeSet<Shown> {
        let mut out = BTreeSet::new();
        self.for_each_view(i, |view| {
            for inst in view.instances() {
                out.insert((
                    view.key.clone(),
                    inst.host.clone(),
                    inst.port,
                    inst.weight as u64,
                ));
            }
        });
        out
    }

    fn truth_set(&self, filter: impl Fn(&ClientId, &TruthClient, u64) -> bool) -> BTreeSet<Shown> {
        let mut out = BTreeSet::new();
        for (c, t) in &self.truth {
            for (s, (inst, at)) in &t.publishes {
                if filter(c, t, *at) {
                    out.insert((s.clone(), inst.host.clone(), inst.port, inst.weight as u64));
                }
            }
        }
        out
    }

    /// Safety, checked while faults happen:
    /// - I2: a publish's revision never goes down on any node;
    /// - I3: a gRPC instance registered a while ago is visible on every node that has been
    ///   able to reach its owner throughout (no loss, no expiry of live instances); a live
    ///   HTTP instance is visible on every running node whenever the running nodes have seen
    ///   each other UP for a while — also while a crashed node is still being declared DOWN
    ///   and its clients move;
    /// - I5: in-flight sync batches per peer (per shard) stay within the window.
    pub fn check_safety(&mut self) {
        let max_inflight = self.scenario.distro.max_inflight_batches;
        let grace =
            self.scenario.distro.verify_interval_ms + self.scenario.distro.sync_timeout_ms + 2_000;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let mut revs = Vec::new();
            for s in &self.nodes[i].shards {
                s.visit_entries(|c, svc, rev, origin| {
                    revs.push((
                        c.clone(),
                        svc.clone(),
                        rev,
                        origin.map(|(n, e)| (n.clone(), e)),
                    ))
                });
                if s.max_inflight_batches() > max_inflight {
                    self.violations.push(format!(
                        "I5: node {i} has {} batches in flight (limit {max_inflight})",
                        s.max_inflight_batches()
                    ));
                }
            }
            for (c, svc, rev, origin) in revs {
                if rev == 0 {
                    // A copy handed to a new owner, waiting for its state (DISTRO.md, I2).
                    continue;
                }
                let prev = self
                    .seen_revs
                    .entry((i, c.clone(), svc.clone()))
                    .or_insert((origin.clone(), 0));
                // Revisions are compared per owner: a client handed to another owner takes
                // that owner's state (DISTRO.md, I2).
                if prev.0 == origin && rev < prev.1 {
                    self.violations.push(format!(
                        "I2: node {i} went back from revision {} to {rev} for {c} in {svc:?} (owner {origin:?})",
                        prev.1
                    ));
                }
                *prev = (origin, rev);
            }
        }
        self.check_dead();
        self.check_flaps();
        // I3 applies only on a lossless network (loss makes "reachable" a matter of luck).
        if self.loss > 0.0 || self.now_ms < self.last_disturbance_ms.saturating_add(grace) {
            return;
        }
        for i in 0..self.nodes.len() {
            if !self.running(i) || self.now_ms < self.nodes[i].started_ms + grace {
                continue;
            }
            let visible = self.visible(i);
            let now = self.now_ms;
            let nodes = &self.nodes;
            // Every running node has seen every running peer UP for a while. Stopped nodes
            // may still be SUSPICIOUS for some and DOWN for others: their heartbeat clients
            // move meanwhile, and must stay visible while they do.
            let calm_cluster = (0..nodes.len()).filter(|k| nodes[*k].alive).all(|k| {
                nodes[k].seen.iter().enumerate().all(|(j, (h, since, _))| {
                    j == k || !nodes[j].alive || (*h == Health::Up && since + grace <= now)
                })
            });
            // Or this node is a hub: it and every running node have seen each other UP for a
            // while, whatever the links between the others (a one-way cut, a partition that
            // leaves this node in the middle). A client beats some running node, that node
            // reaches this one, and this one reaches the owner: the beats reach the owner
            // (forwarded, or detoured through this node), and the owner's state reaches
            // this node (DISTRO.md, "Writes while the owner is SUSPICIOUS").
            let up_for_a_while = |a: usize, b: usize| {
                let (h, since, _) = nodes[a].seen[b];
                h == Health::Up && since + grace <= now
            };
            let hub = (0..nodes.len())
                .filter(|k| *k != i && self.running(*k))
                .all(|k| up_for_a_while(i, k) && up_for_a_while(k, i));
            let calm_cluster = calm_cluster || hub;
            let expected = self.truth_set(|c, t, at| {
                // Heartbeat clients: on a cluster where every node has seen every other UP
                // for a while, they are everywhere (their beats reach their owner).
                let Some(owner) = t.node else {
                    return c.is_heartbeat() && calm_cluster && at + grace <= now;
                };
                !c.is_heartbeat()
                    && at + grace <= now
                    && nodes[owner].alive
                    && (owner == i
                        || (nodes[i].seen[owner].0 == Health::Up
                            && nodes[i].seen[owner].1 + grace <= now
                            && nodes[owner].seen[i].0 == Health::Up))
            });
            let missing: Vec<_> = expected.difference(&visible).take(3).cloned().collect();
            if !missing.is_empty() {
                let text = format!("I3: node {i} misses");
                if !self.violations.iter().any(|v| v.starts_with(&text)) {
                    self.log
                        .push(format!("I3 at node {i} at {} ms:", self.now_ms));
                    self.describe(&missing);
                }
                if self.violations.iter().any(|v| v.starts_with(&text)) {
                    continue;
                }
                self.violations.push(format!(
                    "I3: node {i} misses live instances of reachable owners, e.g. {missing:?}"
                ));
            }
        }
    }

    fn describe(&mut self, tuples: &[Shown]) {
        for (svc, host, port, _) in tuples {
            let owner = self.truth.iter().find(|(_, t)| {
                t.publishes
                    .iter()
                    .any(|(s, (inst, _))| s == svc && &inst.host == host && inst.port == *port)
            });
            if let Some((c, t)) = owner {
                let c = c.clone();
                let label = format!("  {c} (connection on {:?}) {svc:?}:", t.node);
                self.describe_client_as(&c, label);
            }
        }
    }

    /// Every alive node's state of client `c`, into the log.
    pub(super) fn describe_client(&mut self, c: &ClientId) {
        self.describe_client_as(c, format!("  {c}:"));
    }

    fn describe_client_as(&mut self, c: &ClientId, label: String) {
        let mut lines = vec![label];
        for (k, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            let shard = client_shard(c, n.shard_count);
            let distro = &n.shards[shard].stats().distro;
            lines.push(format!(
                "    node {k} (loaded {}, expired {}, pruned {}): {}",
                n.shards.iter().all(|s| s.is_loaded()),
                distro
                    .replicas_expired
                    .load(std::sync::atomic::Ordering::Relaxed),
                distro
                    .replicas_pruned
                    .load(std::sync::atomic::Ordering::Relaxed),
                n.shards[shard].describe_client(c)
            ));
        }
        self.log.push(lines.join("\n"));
    }

    /// I1: every node shows exactly the live instances.
    pub fn check_converged(&mut self) {
        let truth = self.truth_set(|_, _, _| true);
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            // A dead client may still be shown until its I8 deadline.
            let dying: BTreeSet<ClientId> = self
                .dead
                .iter()
                .filter(|(_, d)| self.dead_deadline_ms(d).is_none_or(|t| self.now_ms < t))
                .map(|(c, _)| c.clone())
                .collect();
            let visible: BTreeSet<_> = self
                .visible(i)
                .into_iter()
                .filter(|(_, host, port, _)| !dying.contains(&ClientId::for_address(host, *port)))
                .collect();
            let missing: Vec<_> = truth.difference(&visible).take(3).cloned().collect();
            let extra: Vec<_> = visible.difference(&truth).take(3).cloned().collect();
            if !missing.is_empty() || !extra.is_empty() {
                let all: Vec<_> = missing.iter().chain(extra.iter()).cloned().collect();
                self.describe(&all);
                self.violations.push(format!(
                    "I1: node {i} did not converge: {} missing (e.g. {missing:?}), {} extra (e.g. {extra:?})",
                    truth.difference(&visible).count(),
                    visible.difference(&truth).count()
                ));
            }
        }
    }

    /// I7: once nodes agree, a verify round is one digest per partition and peer, and
    /// nothing else.
    pub fn check_quiet_verify(&mut self) {
        // Nodes agree once nothing changes any more; dead clients keep changing things
        // (unhealthy marks, expiry, the copies that follow) until their deletion timeouts,
        // long after the last write. A window with more than digests in which something
        // still changed (or in the window before) is tried again, up to four windows: a
        // disagreement that changes nothing, or keeps changing, fails.
        let mut tries = 0;
        let mut changes = self.changes();
        let (before, after) = loop {
            let before = self.traffic;
            let at_start = self.changes();
            // Two whole intervals: every node's verify timer fires exactly twice.
            let until = self.now_ms + 2 * self.scenario.distro.verify_interval_ms;
            self.run_until(until);
            let after = self.traffic;
            tries += 1;
            if Self::verify_extra(&before, &after) == 0 || changes == self.changes() || tries == 4 {
                break (before, after);
            }
            changes = at_start;
        };
        let extra = Self::verify_extra(&before, &after);
        if extra > 0 {
            // Dead clients still held somewhere are the usual suspects.
            let held: Vec<ClientId> = self.dead_shown().into_keys().collect();
            for c in held {
                self.describe_client(&c);
            }
            self.violations.push(format!(
                "I7: agreeing nodes exchanged more than digests in a verify round: {:?} -> {:?}",
                before, after
            ));
        }
        if let Ok(wanted) = std::env::var("DISTRO_CLIENT") {
            let ids: Vec<ClientId> = self
                .truth
                .keys()
                .filter(|c| c.to_string().starts_with(&wanted))
                .cloned()
                .collect();
            for c in ids {
                eprintln!("{c}:");
                self.print_client_on_every_node(&c);
            }
        }
        if let Ok(addr) = std::env::var("DISTRO_ADDR") {
            // A client the truth no longer knows (a deregistered one that stayed).
            if let Some((ip, port)) = addr.split_once(':') {
                let ip: Ipv4Addr = ip.parse().expect("DISTRO_ADDR=ip:port");
                let port: u16 = port.parse().expect("DISTRO_ADDR=ip:port");
                self.print_client_on_every_node(&ClientId::for_address(&Host::V4(ip), port));
            }
        }
        let digests = after.digest - before.digest;
        let alive = self.alive_nodes().len() as u64;
        let expected = 2 * alive * (alive - 1) * u64::from(engine::distro::PARTITIONS);
        if digests != expected {
            self.violations.push(format!(
                "I7: expected {expected} digests in one round, saw {digests}"
            ));
        }
    }

    /// Traffic beyond digests between two counts.
    fn verify_extra(before: &super::Traffic, after: &super::Traffic) -> u64 {
        (after.slice_digests - before.slice_digests)
            + (after.slice_clients - before.slice_clients)
            + (after.resync - before.resync)
            + (after.sync - before.sync)
    }

    /// Changes so far: sync batches and resyncs sent, heartbeat instances marked unhealthy
    /// or expired, replicas pruned or expired on the alive nodes.
    fn changes(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let t = &self.traffic;
        let counted: u64 = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .flat_map(|n| n.shards.iter())
            .map(|s| {
                let st = s.stats();
                st.expired_instances.load(Relaxed)
                    + st.unhealthy_marks.load(Relaxed)
                    + st.distro.replicas_pruned.load(Relaxed)
                    + st.distro.replicas_expired.load(Relaxed)
            })
            .sum();
        t.sync + t.sync_of_dead + t.resync + counted
    }

    /// What each running node holds of `c` and whom it makes responsible (for replays).
    fn print_client_on_every_node(&self, c: &ClientId) {
        for (k, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            let shard = client_shard(c, n.shard_count);
            eprintln!(
                "  node {k} sees responsible {:?}: {}",
                n.members.responsible_for(c),
                n.shards[shard].describe_client(c)
            );
        }
    }

    /// Counts of what every node holds, for reports.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.alive {
                parts.push(format!("node {i}: {} instances", self.visible(i).len()));
            }
        }
        format!(
            "truth {} instances; {}; flaps (I1) {}",
            self.truth_set(|_, _, _| true).len(),
            parts.join(", "),
            self.flaps
        )
    }
}
