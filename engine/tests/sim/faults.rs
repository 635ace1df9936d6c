//! The faults the world injects: loss, duplication and jitter, partitions and one-way
//! cuts, crashes and restarts, pauses and clock skew; and the healing once the faults end.

use super::World;

impl World {
    pub(super) fn random_fault(&mut self) {
        let count = self.nodes.len();
        let roll = self.rng.below(100);
        let a = self.rng.below(count as u64) as usize;
        let b = (a + 1 + self.rng.below(count as u64 - 1) as usize) % count;
        match roll {
            0..=14 => {
                self.loss = [0.0, 0.05, 0.1, 0.3][self.rng.below(4) as usize];
                self.say(format!("loss {:.2}", self.loss));
            }
            15..=24 => {
                self.dup = [0.0, 0.05, 0.2][self.rng.below(3) as usize];
                self.jitter_ms = [2, 20, 200][self.rng.below(3) as usize];
                self.say(format!("dup {:.2} jitter {} ms", self.dup, self.jitter_ms));
            }
            25..=44 => {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
                self.say(format!("partition {a} <-> {b}"));
            }
            45..=54 => {
                self.blocked.insert((a, b));
                self.say(format!("one-way cut {a} -> {b}"));
            }
            55..=69 if !self.blocked.is_empty() => {
                self.blocked.clear();
                self.isolated = None;
                self.say("network heals".into());
            }
            70..=79 => {
                self.crash_or_restart();
                return;
            }
            85..=89 => {
                // SIGSTOP and SIGCONT: the node does nothing for a while, then carries on
                // with its clock jumped.
                if self.running(a) {
                    let pause = [2_000, 8_000, 15_000][self.rng.below(3) as usize];
                    self.nodes[a].paused_until_ms = self.now_ms + pause;
                    self.nodes[a].parked.clear();
                    self.say(format!("node {a} paused for {pause} ms"));
                    // The disturbance lasts until the node is back.
                    self.last_disturbance_ms = self.now_ms + pause;
                }
                return;
            }
            90..=93 => {
                // A quick restart (a rolling restart): back while its clients move.
                if self.nodes[a].alive && !self.scenario.late.contains(&a) {
                    let back = self.now_ms + self.rng.range(200, 2_500);
                    self.crash_node(a);
                    self.restarts.push((back, a));
                    self.say(format!("node {a} restarts at {back} ms"));
                }
                // Like a crash, not a disturbance of the network (see `crash_or_restart`).
                return;
            }
            80..=84 => {
                // Clock skew: the wall clock of a node jumps (it only feeds revisions and
                // lastRefTime; timeouts run on the monotonic clock).
                let skew = [-600_000i64, -5_000, 0, 5_000, 600_000][self.rng.below(5) as usize];
                self.nodes[a].skew_ms = skew;
                self.say(format!("node {a} wall clock skew {skew} ms"));
            }
            94..=99 if self.scenario.isolation && self.running(a) && self.isolated.is_none() => {
                // Isolation (the chaos harness's `isolate`): node a is cut from every peer
                // and from the clients, which fail over to the others; at the heal it comes
                // back as the responsible node of clients it expired meanwhile.
                for b in (0..count).filter(|b| *b != a) {
                    self.blocked.insert((a, b));
                    self.blocked.insert((b, a));
                }
                self.isolated = Some(a);
                self.say(format!("node {a} isolated"));
            }
            _ => {}
        }
        self.last_disturbance_ms = self.now_ms;
    }

    /// `Scenario::episodes`: one fault at a time, held for a while on an otherwise lossless
    /// network, then healed, then a quiet gap. Called on every action tick during the
    /// faults; `episode_until_ms` is when the current episode (or gap) ends.
    pub(super) fn episode_step(&mut self) {
        if self.now_ms < self.episode_until_ms {
            return;
        }
        if self.in_episode {
            self.in_episode = false;
            self.blocked.clear();
            self.episode_until_ms = self.now_ms + self.rng.range(1_000, 4_000);
            self.last_disturbance_ms = self.now_ms;
            self.say("episode ends: network heals".into());
            return;
        }
        let count = self.nodes.len();
        let a = self.rng.below(count as u64) as usize;
        let b = (a + 1 + self.rng.below(count as u64 - 1) as usize) % count;
        // Held long enough for the nodes on either side to declare each other DOWN (3 s
        // idle timeout + 6 s), for a fast client to expire (6 s), and for I3 to be checked
        // once its grace (10 s) is over.
        let hold = self.rng.range(6_000, 25_000);
        self.in_episode = true;
        self.episode_until_ms = self.now_ms + hold;
        match self.rng.below(6) {
            // A one-way cut: a's frames to b are lost, b's reach a (QUIC sees the link
            // fail both ways; b's reports and syncs still arrive, a's detours matter).
            0 | 1 => {
                self.blocked.insert((a, b));
                self.say(format!("episode: one-way cut {a} -> {b} for {hold} ms"));
            }
            2 => {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
                self.say(format!("episode: partition {a} <-> {b} for {hold} ms"));
            }
            // SIGSTOP, then SIGCONT with the clock jumped.
            3 if self.running(a) => {
                let pause = [8_000, 15_000][self.rng.below(2) as usize];
                self.nodes[a].paused_until_ms = self.now_ms + pause;
                self.nodes[a].parked.clear();
                self.episode_until_ms = self.now_ms + pause + 1_000;
                self.say(format!("episode: node {a} paused for {pause} ms"));
                self.last_disturbance_ms = self.now_ms + pause;
                return;
            }
            // A crash and a restart while its clients are being handed over: around the
            // time the others declare it DOWN (3 s + 6 s), or quickly.
            4 | 5 if self.nodes[a].alive => {
                let back = if self.rng.chance(0.3) {
                    self.rng.range(200, 2_500)
                } else {
                    self.rng.range(7_000, 12_000)
                };
                self.crash_node(a);
                self.restarts.push((self.now_ms + back, a));
                self.episode_until_ms = self.now_ms + back + 1_000;
                self.say(format!("episode: node {a} crashes, back in {back} ms"));
                return;
            }
            _ => {
                self.in_episode = false;
                self.episode_until_ms = self.now_ms + 500;
                return;
            }
        }
        self.last_disturbance_ms = self.now_ms;
    }

    /// Crashes a running node or restarts a crashed one. Not a disturbance of the network:
    /// I3 keeps being checked while a crashed node is being declared DOWN and its clients
    /// move (a restarted node is judged once it has run for a grace period, and the others
    /// once they have seen it UP for one).
    pub(super) fn crash_or_restart(&mut self) {
        let count = self.nodes.len();
        let a = self.rng.below(count as u64) as usize;
        if self.scenario.late.contains(&a) && self.now_ms < self.scenario.join_at_ms {
            return;
        }
        if self.nodes[a].alive {
            self.crash_node(a);
        } else {
            self.start_node(a);
        }
    }

    pub(super) fn heal(&mut self) {
        self.blocked.clear();
        self.isolated = None;
        self.loss = 0.0;
        self.dup = 0.0;
        self.jitter_ms = 2;
        self.restarts.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused_until_ms > self.now_ms {
                // SIGCONT now: what waits in its socket is read now, in order, not when the
                // pause would have ended (the node runs meanwhile).
                for seq in std::mem::take(&mut self.nodes[i].parked) {
                    self.net.push(std::cmp::Reverse((self.now_ms + 1, seq)));
                }
            }
            self.nodes[i].paused_until_ms = self.nodes[i].paused_until_ms.min(self.now_ms);
            if !self.nodes[i].alive {
                self.start_node(i);
            }
        }
        self.last_disturbance_ms = self.now_ms;
        self.say("faults end: network healed, every node running".into());
    }
}
