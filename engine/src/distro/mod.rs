//! Distro: how the nodes of a cluster keep each other's ephemeral clients.
//!
//! `DISTRO.md` at the repository root states the protocol and its invariants; this module is
//! its sans-IO implementation. The state lives in each [`crate::Shard`] (a shard is one core);
//! this module holds the vocabulary and the pure parts:
//!
//! # Layout
//! - [`msg`]: [`PeerMsg`], what two nodes say about one partition.
//! - [`membership`]: [`membership::Membership`], a node's view of its peers from its own
//!   links and their `Reachable` reports (who counts as UP, SUSPICIOUS, DOWN, vouched for).
//! - [`route`]: where a client write goes ([`route::Route`]) and the [`route::Router`]
//!   that keeps forwards and deferred deregistrations with their timers.
//! - here: partitions and slices of the client space, digests, the responsibility mapper,
//!   the membership view and the settings.
//!
//! The client space is cut into [`PARTITIONS`] partitions, fixed cluster-wide, so a partition
//! is handled by exactly one shard on every node whatever its core count (`partition % cores`)
//! and a peer exchange about a partition never leaves that core. Each partition is cut into
//! [`SLICES`] slices for verify: digests are compared per partition, then per slice, then per
//! client, so agreeing nodes exchange one small message per partition and round.

pub mod membership;
pub mod msg;
pub mod route;

pub use msg::{ClientHash, ClientState, EntryState, NodeId, PeerMsg, SyncItem};

use crate::model::{stable_hash, ClientId};

/// Partitions of the client space (cluster-wide constant; changing it is a protocol change).
pub const PARTITIONS: u16 = 64;
/// Verify slices per partition.
pub const SLICES: u16 = 256;

/// The partition of a client. Connection ids are chosen by the server to land on the core
/// that holds the connection, so they map by value; others by hash.
pub fn partition_of(client: &ClientId) -> u16 {
    match client {
        ClientId::Conn(id) => (id % u64::from(PARTITIONS)) as u16,
        other => (stable_hash(other) % u64::from(PARTITIONS)) as u16,
    }
}

/// The verify slice of a client within its partition.
pub fn slice_of(client: &ClientId) -> u16 {
    // Another mixing of the id than the partition's so that slices are evenly filled.
    (stable_hash(&(client, 0x5_1ce_u32)) % u64::from(SLICES)) as u16
}

/// The digest contribution of one publish of `client` at revision `rev`. Revisions are unique
/// per client and change with every change of the publish, so the sum of these over a
/// client's publishes differs as soon as one publish is missing, extra or stale.
pub fn entry_digest(client_seed: u64, rev: u64) -> u64 {
    // splitmix64 finaliser: cheap, and sums of its outputs do not cancel by accident.
    let mut z = client_seed ^ rev.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of a client's entry digests.
pub fn client_seed(client: &ClientId) -> u64 {
    stable_hash(client)
}

/// The digest of a client: the sum of its entries' digests (0 for no publishes).
pub fn client_digest(client: &ClientId, revs: impl IntoIterator<Item = u64>) -> u64 {
    let seed = client_seed(client);
    revs.into_iter()
        .fold(0u64, |acc, rev| acc.wrapping_add(entry_digest(seed, rev)))
}

/// How a node sees a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// Reachable.
    Up,
    /// Recently failed to answer; still counted for responsibility (as Nacos does).
    Suspicious,
    /// Unreachable.
    Down,
}

/// The membership as one node sees it: itself and every other member with its health.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Members {
    /// This node.
    pub me: Option<NodeId>,
    /// Every member except this node, sorted by id.
    pub peers: Vec<(NodeId, Health)>,
}

impl Members {
    /// A standalone node (no peers).
    pub fn standalone() -> Members {
        Members::default()
    }

    /// Whether there are peers at all.
    pub fn is_cluster(&self) -> bool {
        self.me.is_some() && !self.peers.is_empty()
    }

    /// The members that count for responsibility (this node and peers that are UP or
    /// SUSPICIOUS), sorted.
    pub fn candidates(&self) -> Vec<&NodeId> {
        let mut out: Vec<&NodeId> = self
            .peers
            .iter()
            .filter(|(_, h)| *h != Health::Down)
            .map(|(n, _)| n)
            .chain(self.me.iter())
            .collect();
        out.sort();
        out
    }

    /// The node responsible for an HTTP (`ip:port`) client: rendezvous (highest random
    /// weight) hashing of the address over the candidates. `None` when standalone (this node
    /// is responsible).
    ///
    /// Rendezvous rather than `hash % members`: when one member goes down (or one node
    /// wrongly believes it is down, as in an asymmetric partition) only that member's clients
    /// move, each to its second choice. With a modulo, most clients would change owner and
    /// nodes whose views differ would disagree about most clients instead of a few.
    pub fn responsible_for(&self, client: &ClientId) -> Option<&NodeId> {
        let key = stable_hash(&(client, 0xd15_u32));
        let mut best: Option<(u64, &NodeId)> = None;
        let mut count = 0;
        for node in self
            .peers
            .iter()
            .filter(|(_, h)| *h != Health::Down)
            .map(|(n, _)| n)
            .chain(self.me.iter())
        {
            count += 1;
            let weight = mix64(key ^ mix64(stable_hash(node)));
            let better = best.is_none_or(|(w, b)| weight > w || (weight == w && node < b));
            if better {
                best = Some((weight, node));
            }
        }
        if count <= 1 {
            return self.me.as_ref();
        }
        best.map(|(_, n)| n)
    }

    /// Whether this node is responsible for `client`. Connection clients belong to the node
    /// holding the connection, so they are always "ours" when they are here natively.
    pub fn is_mine(&self, client: &ClientId) -> bool {
        if !client.is_heartbeat() {
            return true;
        }
        match (self.responsible_for(client), &self.me) {
            (Some(r), Some(me)) => r == me,
            _ => true,
        }
    }
}

/// Distro settings.
#[derive(Clone, Debug)]
pub struct DistroConfig {
    /// How long changes wait to be merged into one batch per peer (ms). Nacos: 1000.
    pub sync_delay_ms: u64,
    /// An unacknowledged batch is retried (with the clients' current state) after its
    /// acknowledgement timeout: an estimate from the measured acknowledgement times (as
    /// TCP's RTO), never below this (ms).
    pub sync_timeout_ms: u64,
    /// ... and never above this (ms).
    pub sync_timeout_max_ms: u64,
    /// Sync batches in flight per peer (over a shard's partitions) before new changes wait
    /// (backpressure). Everything towards a peer shares one ordered stream, so this also
    /// bounds how long a snapshot chunk or an answer waits behind sync traffic.
    pub max_inflight_batches: usize,
    /// Items per sync batch.
    pub max_batch_items: usize,
    /// Instances per sync batch: a batch closes at whichever limit comes first (one item is
    /// never split), so a batch of big publishes stays about a megabyte.
    pub max_batch_instances: usize,
    /// Instances in unacknowledged sync batches towards one peer, over all the shards of
    /// this node (each shard takes its share): what bounds the peer's backlog whatever the
    /// size of the clients. At least one batch is always in flight.
    pub max_inflight_instances: usize,
    /// Verify interval (ms). Nacos: 5000.
    pub verify_interval_ms: u64,
    /// A replica whose owner has not confirmed it for this long is removed (ms).
    pub replica_lease_ms: u64,
    /// Clients per snapshot chunk.
    pub snapshot_chunk_clients: usize,
    /// Instances per snapshot chunk (a chunk closes at whichever limit comes first; one
    /// client is never split). Keeps chunks of big connection clients a few MB at most.
    pub snapshot_chunk_instances: usize,
    /// Snapshot chunks in flight.
    pub snapshot_window: u64,
    /// Snapshot chunks in flight to one requesting peer, over all its partitions.
    pub snapshot_peer_window: u64,
    /// A snapshot that makes no progress for this long is asked of another peer (ms).
    pub snapshot_timeout_ms: u64,
    /// A starting node with no reachable peer for this long starts empty (ms).
    pub startup_alone_ms: u64,
    /// Pending changes per peer and partition beyond which the queue is dropped and verify
    /// repairs the peer instead (bounded memory for a long-dead peer).
    pub max_pending_keys: usize,
    /// Rules of the shards turned off, for mutation tests only (see
    /// [`membership::Reverted`]); the server always runs with the default, every rule on.
    pub reverted: membership::Reverted,
}

impl Default for DistroConfig {
    fn default() -> Self {
        DistroConfig {
            sync_delay_ms: 20,
            sync_timeout_ms: 3_000,
            sync_timeout_max_ms: 30_000,
            max_inflight_batches: 16,
            max_batch_items: 512,
            max_batch_instances: 8_192,
            max_inflight_instances: 131_072,
            verify_interval_ms: 5_000,
            replica_lease_ms: 30_000,
            snapshot_chunk_clients: 2_000,
            snapshot_chunk_instances: 8_000,
            snapshot_window: 4,
            snapshot_peer_window: 16,
            snapshot_timeout_ms: 3_000,
            startup_alone_ms: 3_000,
            max_pending_keys: 1_000_000,
            reverted: membership::Reverted::default(),
        }
    }
}

/// The splitmix64 finalizer: spreads the bits of a combined key (rendezvous weights).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn members(me: &str, peers: &[(&str, Health)]) -> Members {
        Members {
            me: Some(NodeId::new(me)),
            peers: peers.iter().map(|(n, h)| (NodeId::new(n), *h)).collect(),
        }
    }

    #[test]
    fn every_node_picks_the_same_responsible_member() {
        let a = members("a:1", &[("b:1", Health::Up), ("c:1", Health::Up)]);
        let b = members("b:1", &[("a:1", Health::Up), ("c:1", Health::Suspicious)]);
        let mut owners = std::collections::HashMap::new();
        for port in 0..300u16 {
            let c = ClientId::V4(Ipv4Addr::new(10, 0, 0, 1), port);
            let ra = a.responsible_for(&c).cloned();
            assert_eq!(ra, b.responsible_for(&c).cloned());
            *owners.entry(ra).or_insert(0) += 1;
        }
        assert_eq!(owners.len(), 3, "every member gets clients: {owners:?}");
    }

    #[test]
    fn a_member_going_down_moves_only_its_own_clients() {
        let all = members(
            "a:1",
            &[
                ("b:1", Health::Up),
                ("c:1", Health::Up),
                ("d:1", Health::Up),
            ],
        );
        let without_c = members(
            "a:1",
            &[
                ("b:1", Health::Up),
                ("c:1", Health::Down),
                ("d:1", Health::Up),
            ],
        );
        let (mut moved, mut of_c) = (0, 0);
        for port in 0..2000u16 {
            let c = ClientId::V4(Ipv4Addr::new(10, 0, 1, 1), port);
            let before = all
                .responsible_for(&c)
                .cloned()
                .expect("a cluster has an owner");
            let after = without_c
                .responsible_for(&c)
                .cloned()
                .expect("a cluster has an owner");
            if before.as_str() == "c:1" {
                of_c += 1;
                assert_ne!(after.as_str(), "c:1");
            } else {
                assert_eq!(before, after, "{c:?} moved although its owner stayed up");
            }
            moved += usize::from(before != after);
        }
        assert_eq!(moved, of_c);
        assert!((350..650).contains(&of_c), "a quarter each: {of_c}");
    }

    #[test]
    fn down_members_are_not_responsible() {
        let a = members("a:1", &[("b:1", Health::Down)]);
        for port in 0..50u16 {
            let c = ClientId::V4(Ipv4Addr::new(10, 0, 0, 1), port);
            assert!(a.is_mine(&c));
        }
    }

    #[test]
    fn client_digest_changes_with_any_revision() {
        let c = ClientId::Conn(7);
        let d = client_digest(&c, [1, 2, 3]);
        assert_eq!(d, client_digest(&c, [3, 1, 2]));
        assert_ne!(d, client_digest(&c, [1, 2]));
        assert_ne!(d, client_digest(&c, [1, 2, 4]));
        assert_ne!(d, client_digest(&ClientId::Conn(8), [1, 2, 3]));
    }
}
