//! Snapshots: the startup load of every partition from an UP peer (I6: a node reports UP and
//! deletes nothing through verify before it is loaded), and the snapshot streams this node
//! serves to joining peers, windowed per stream and per peer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{bump, SnapshotServe, FIRST_CHUNK_TIMEOUT_MS};
use crate::distro::{partition_of, ClientState, Health, NodeId, PeerMsg};
use crate::shard::{ClientId, Shard};

impl Shard {
    /// Drives the startup load: ask an UP peer for each partition not loaded yet, move on
    /// to another peer when one stalls (I6: a node reports UP and verifies only once
    /// loaded).
    pub(super) fn drive_load(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if d.loaded {
            return;
        }
        if d.members.me.is_none() {
            return;
        }
        let up: Vec<NodeId> = d
            .members
            .peers
            .iter()
            .filter(|(_, h)| *h == Health::Up)
            .map(|(n, _)| n.clone())
            .collect();
        if d.members.peers.is_empty()
            || (up.is_empty() && now_ms.saturating_sub(d.started_ms) >= d.cfg.startup_alone_ms)
        {
            // Nobody to load from: this node starts the cluster's data.
            d.loaded = true;
            let took = now_ms.saturating_sub(d.started_ms);
            self.stats.distro.load_ms.store(took, Ordering::Relaxed);
            self.stats.distro.loaded.store(true, Ordering::Relaxed);
            return;
        }
        if up.is_empty() {
            return;
        }
        let timeout = d.cfg.snapshot_timeout_ms;
        let mut requests = Vec::new();
        for (p, load) in d.loads.iter_mut() {
            if load.done {
                continue;
            }
            // Silence after a request is quick to notice: a peer's frames arrive within a
            // tick or two. It happens when the answer went into a connection the peer still
            // held to this node's previous process (lost when the new process resets it).
            // A peer that sends other frames got the request: its first chunk may wait
            // behind its sync traffic, and asking another peer would only add a second
            // stream to the queue (found by perf/cluster.sh: with 1,100,000 instances and a
            // busy joining node every partition moved after 1 s, the abandoned streams
            // filled the peers' 64 MiB queues and the node never loaded).
            let silent = load.source.as_ref().is_none_or(|s| {
                d.frames_heard.get(s).copied().unwrap_or(0) <= load.last_progress_ms
            });
            let limit = if load.expect_seq == 0 && silent {
                timeout.min(FIRST_CHUNK_TIMEOUT_MS)
            } else {
                timeout
            };
            // A peer serves one chunk per partition in turn, a bounded number at a time, so
            // with a big snapshot a partition may wait seconds for its next chunk while the
            // peer streams the others: progress from the source counts for all its loads
            // (found by perf/cluster.sh: a node joining 1,100,000 instances on a loaded
            // machine gave up on every partition after 1 s and never finished).
            let heard = load
                .source
                .as_ref()
                .and_then(|s| d.load_heard.get(s).copied())
                .unwrap_or(0);
            let stalled = now_ms.saturating_sub(load.last_progress_ms.max(heard)) >= limit;
            let source_up = load.source.as_ref().is_some_and(|s| up.contains(s));
            if load.source.is_some() && source_up && !stalled {
                continue;
            }
            if let Some(s) = load.source.take() {
                load.tried.insert(s);
            }
            // Partitions are spread over the UP peers (each starts at its own peer), so a
            // joining node loads from all of them at once.
            let start = usize::from(*p) % up.len();
            let next = (0..up.len())
                .map(|i| &up[(start + i) % up.len()])
                .find(|n| !load.tried.contains(*n))
                .or_else(|| {
                    load.tried.clear();
                    up.get(start)
                })
                .cloned();
            if let Some(peer) = next {
                d.next_id += 1;
                load.id = d.next_id;
                load.expect_seq = 0;
                load.last_progress_ms = now_ms;
                load.source = Some(peer.clone());
                requests.push((peer, *p, load.id));
            }
        }
        for (peer, p, id) in requests {
            self.send_peer(peer, p, PeerMsg::SnapshotRequest { id });
        }
    }

    pub(super) fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        partition: u16,
        id: u64,
        seq: u64,
        clients: Vec<(NodeId, ClientState)>,
        done: bool,
    ) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let me = d.members.me.clone();
        let Some(load) = d.loads.get_mut(&partition) else {
            return;
        };
        if load.done || load.id != id || load.source.as_ref() != Some(&from) {
            return;
        }
        if seq != load.expect_seq {
            // Lost or reordered chunk: start over with this peer (the next tick asks again).
            load.last_progress_ms = 0;
            return;
        }
        load.expect_seq += 1;
        load.last_progress_ms = now_ms;
        if done {
            load.done = true;
        }
        d.load_heard.insert(from.clone(), now_ms);
        bump(&self.stats.distro.snapshot_received, clients.len() as u64);
        for (origin, state) in clients {
            if Some(&origin) == me.as_ref() {
                // Our own clients from before a restart: connection clients died with the
                // process; heartbeat clients are ours again if we are still responsible.
                if state.client.is_heartbeat() && self.members_is_mine(&state.client) {
                    self.restore_native(state);
                }
                continue;
            }
            self.apply_full(&origin, state);
        }
        self.send_peer(from, partition, PeerMsg::SnapshotAck { id, seq });
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        if d.loads.values().all(|l| l.done) {
            d.loaded = true;
            let took = now_ms.saturating_sub(d.started_ms);
            self.stats.distro.load_ms.store(took, Ordering::Relaxed);
            self.stats.distro.loaded.store(true, Ordering::Relaxed);
            // The snapshot may hold heartbeat clients this node is now responsible for
            // (they moved while it was away): take them over at once.
            self.rebalance_heartbeat_clients(None);
        }
    }

    /// Re-creates a heartbeat client of ours from a peer's copy (after our restart).
    pub(super) fn restore_native(&mut self, state: ClientState) {
        self.observe_rev(state.rev);
        if self.clients.contains_key(&state.client) {
            return;
        }
        let origin = self
            .distro
            .as_ref()
            .and_then(|d| d.members.me.clone())
            .unwrap_or_else(|| NodeId::new("?"));
        // Apply as a replica of ourselves, then adopt it: one code path for the data.
        if self.prepare_replica(&origin, &state.client, state.rev) {
            let client = state.client.clone();
            for entry in state.entries {
                self.replica_put(&origin, &client, entry);
            }
            self.adopt_if_replica(&client);
        }
    }

    /// Sends snapshot chunks while each stream's window allows.
    pub(super) fn serve_snapshots(&mut self) {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return;
        };
        let window = d.cfg.snapshot_window;
        let chunk = d.cfg.snapshot_chunk_clients.max(1);
        let chunk_instances = d.cfg.snapshot_chunk_instances.max(1);
        let stall = d.cfg.snapshot_timeout_ms;
        let me = d.members.me.clone().unwrap_or_else(|| NodeId::new("?"));
        // A stream whose reader vanished (chunks sent, no ack for a while) is given up; one
        // waiting for its turn behind the reader's other partitions is not.
        d.serving.retain(|s| {
            !s.finished && (s.next_seq == s.acked || now_ms.saturating_sub(s.last_ms) < stall)
        });
        let peer_window = d.cfg.snapshot_peer_window.max(1);
        let mut serving = std::mem::take(&mut d.serving);
        let mut msgs = Vec::new();
        // Chunks in flight per requesting peer, over all its partitions: a joining node asks
        // for every partition at once, and 64 windows of big chunks would overflow the peer
        // queue (dropped chunks restart their partition). Streams take turns, one chunk each.
        let mut in_flight: HashMap<NodeId, u64> = HashMap::new();
        for s in &serving {
            *in_flight.entry(s.to.clone()).or_default() += s.next_seq.saturating_sub(s.acked);
        }
        let mut progressed = true;
        while progressed {
            progressed = false;
            for s in serving.iter_mut() {
                if s.finished || s.next_seq >= s.acked + window {
                    continue;
                }
                let used = in_flight.entry(s.to.clone()).or_default();
                if *used >= peer_window {
                    continue;
                }
                *used += 1;
                progressed = true;
                let mut out = Vec::new();
                let mut instances = 0;
                while out.len() < chunk && instances < chunk_instances {
                    let Some(id) = s.pending.pop() else {
                        break;
                    };
                    if let Some(c) = self.clients.get(&id) {
                        if !c.publishes.is_empty() {
                            let origin = c
                                .replica
                                .as_ref()
                                .map_or_else(|| me.clone(), |i| i.origin.clone());
                            let mut state = Self::client_state(&id, c);
                            instances +=
                                state.entries.iter().map(|e| e.publish.len()).sum::<usize>();
                            if let Some(info) = c.replica.as_ref() {
                                // A copy is complete only up to its last full state; its
                                // newest revision may come from a single publish.
                                state.rev = info.floor;
                            }
                            out.push((origin, state));
                        }
                    }
                }
                let done = s.pending.is_empty();
                bump(&self.stats.distro.snapshot_sent, out.len() as u64);
                msgs.push((
                    s.to.clone(),
                    s.partition,
                    PeerMsg::SnapshotChunk {
                        id: s.id,
                        seq: s.next_seq,
                        clients: out,
                        done,
                    },
                ));
                s.next_seq += 1;
                s.last_ms = now_ms;
                if done {
                    s.finished = true;
                }
            }
        }
        serving.retain(|s| !s.finished);
        if let Some(d) = self.distro.as_mut() {
            d.serving = serving;
        }
        for (to, p, m) in msgs {
            self.send_peer(to, p, m);
        }
    }

    /// A peer asks for a snapshot of `partition` (it is loading): start a stream.
    pub(super) fn on_snapshot_request(&mut self, from: NodeId, partition: u16, id: u64) {
        let now_ms = self.now.mono_ms;
        self.retire_batches_to_a_restarted_peer(&from, partition);
        let mut pending: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(c, state)| {
                partition_of(c) == partition && !state.publishes.is_empty() && !c.is_persistent()
            })
            .map(|(c, _)| c.clone())
            .collect();
        pending.reverse();
        if let Some(d) = self.distro.as_mut() {
            // The snapshot carries the current state of every client we hold, so
            // pending changes of those clients would reach the peer twice (with a
            // joining node, every change made while it was away). Removals stay:
            // the snapshot does not list what is gone, and so do hand-overs: they
            // complete when the peer acknowledges a sync of them.
            if let Some(part) = d.links.get_mut(&from).and_then(|l| l.get_mut(&partition)) {
                let (clients, handovers) = (&self.clients, &d.handovers);
                part.dirty.retain(|k| {
                    !clients.contains_key(&k.client) || handovers.contains_key(&k.client)
                });
            }
            d.serving
                .retain(|s| !(s.to == from && s.partition == partition));
            d.serving.push(SnapshotServe {
                to: from.clone(),
                partition,
                id,
                pending,
                next_seq: 0,
                acked: 0,
                finished: false,
                last_ms: now_ms,
            });
        }
        self.serve_snapshots();
    }

    /// A peer acknowledged snapshot chunk `seq` of stream `id`: the window moves on.
    pub(super) fn on_snapshot_ack(&mut self, from: NodeId, partition: u16, id: u64, seq: u64) {
        let now_ms = self.now.mono_ms;
        if let Some(d) = self.distro.as_mut() {
            if let Some(s) = d
                .serving
                .iter_mut()
                .find(|s| s.to == from && s.partition == partition && s.id == id)
            {
                s.acked = s.acked.max(seq + 1);
                s.last_ms = now_ms;
            }
        }
        self.serve_snapshots();
    }
}
