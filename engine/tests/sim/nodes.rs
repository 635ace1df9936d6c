//! The simulated nodes: a node's state (its shards, membership, router and the writes
//! waiting for an answer), its start and crash, and how the world drives it: draining the
//! commands its shards and router emit, executing the router's decisions, and firing its
//! timers.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::distro::membership::Membership;
use engine::distro::route::{RouteCommand, Router};
use engine::distro::{Health, Members, NodeId};
use engine::shard::client_shard;
use engine::{
    ClientId, ClientOp, Command, Now, OpResult, ReadIndex, ReplyTo, Shard, ShardConfig, ShardMsg,
};

use super::network::Payload;
use super::World;

/// Wall-clock origin (unix ms at virtual mono 0).
const UNIX_ORIGIN_MS: u64 = 1_800_000_000_000;

pub(super) struct Node {
    pub(super) id: NodeId,
    pub(super) shard_count: usize,
    pub(super) shards: Vec<Shard>,
    pub(super) index: Arc<ReadIndex>,
    pub(super) alive: bool,
    pub(super) started_ms: u64,
    pub(super) skew_ms: i64,
    pub(super) conn_prefix: u64,
    pub(super) conn_seq: u64,
    pub(super) members: Members,
    /// Health of each peer on this node's own link, since when, and when the link last
    /// worked (what the transport would say).
    pub(super) seen: Vec<(Health, u64, u64)>,
    /// The server's membership rule, fed with `seen` and the peers' reports.
    pub(super) membership: Membership,
    /// The server's routing of HTTP writes (one per node: the server has one per core,
    /// with the same view).
    pub(super) router: Router,
    /// Who waits for each write token: a client, or a peer waiting for a forward's answer.
    pub(super) waiters: BTreeMap<u64, Waiter>,
    pub(super) next_token: u64,
    /// Counts the node's starts, so that what was sent to an earlier run is lost.
    pub(super) incarnation: u64,
    /// SIGSTOP: until then the node does nothing (what is sent to it waits in its socket),
    /// and then its clock has jumped.
    pub(super) paused_until_ms: u64,
    /// What arrived while it was paused (flights waiting in its socket until
    /// `paused_until_ms`): delivered at once if the pause is cut short.
    pub(super) parked: Vec<u64>,
}

/// Who waits for the outcome of a write on a node.
#[derive(Clone, Copy, Debug)]
pub(super) enum Waiter {
    /// The HTTP client that sent it.
    Client,
    /// Node `from` forwarded it with id `id` and waits for the answer.
    Peer { from: usize, id: u64 },
}

impl Node {
    pub(super) fn now(&self, mono_ms: u64) -> Now {
        Now {
            mono_ms,
            unix_ms: (UNIX_ORIGIN_MS as i64 + mono_ms as i64 + self.skew_ms) as u64,
        }
    }
}

impl World {
    fn node_name(i: usize) -> NodeId {
        NodeId::new(&format!("10.0.0.{}:8848", i + 1))
    }

    pub(super) fn fresh_node(&mut self, i: usize, shard_count: usize) -> Node {
        let count = self.scenario.shards.len();
        let reverted = self.scenario.reverted;
        let mut membership = Membership::new(Self::node_name(i)).with_reverted(reverted);
        membership.set_peers((0..count).map(Self::node_name));
        Node {
            membership,
            router: Router::new().with_reverted(reverted),
            waiters: BTreeMap::new(),
            next_token: 0,
            incarnation: 0,
            paused_until_ms: 0,
            parked: Vec::new(),
            id: Self::node_name(i),
            shard_count,
            shards: Vec::new(),
            index: ReadIndex::new(shard_count, 1 << 20),
            alive: false,
            started_ms: 0,
            skew_ms: 0,
            conn_prefix: 0,
            conn_seq: 0,
            members: Members::default(),
            seen: vec![(Health::Down, 0, 0); count],
        }
    }

    pub(super) fn start_node(&mut self, i: usize) {
        let shard_count = self.nodes[i].shard_count;
        let mut node = self.fresh_node(i, shard_count);
        node.alive = true;
        node.started_ms = self.now_ms;
        node.conn_prefix = self.rng.range(1, 0xFF_FFFF);
        node.skew_ms = self.nodes[i].skew_ms;
        node.incarnation = self.nodes[i].incarnation + 1;
        let now = node.now(self.now_ms);
        for s in 0..shard_count {
            let cfg = ShardConfig {
                shard_count,
                distro: Some(engine::distro::DistroConfig {
                    reverted: self.scenario.reverted,
                    ..self.scenario.distro.clone()
                }),
                ..ShardConfig::default()
            };
            node.shards
                .push(Shard::new(s, cfg, node.index.clone(), now));
        }
        self.nodes[i] = node;
        self.seen_revs.retain(|(n, _, _), _| *n != i);
        self.say(format!("node {i} starts"));
        self.update_views(true);
    }

    pub(super) fn crash_node(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        self.nodes[i].alive = false;
        self.nodes[i].shards.clear();
        // Its connections die with it; their clients are gone (they would reconnect
        // elsewhere as new clients).
        self.truth.retain(|_, c| c.node != Some(i));
        self.last_disturbance_ms = self.now_ms;
        self.say(format!("node {i} crashes"));
    }

    /// Alive and not paused.
    pub(super) fn running(&self, i: usize) -> bool {
        self.nodes[i].alive && self.nodes[i].paused_until_ms <= self.now_ms
    }

    /// The nodes that answer clients now (alive and not paused).
    pub(super) fn alive_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.running(*i)).collect()
    }

    pub(super) fn node_of(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.id == id)
    }

    /// Drains a node's commands: shard messages are delivered at once (in order), peer
    /// messages go to the network.
    pub(super) fn collect(&mut self, i: usize) {
        loop {
            let mut any = false;
            for s in 0..self.nodes[i].shards.len() {
                while let Some(cmd) = self.nodes[i].shards[s].poll_command() {
                    any = true;
                    match cmd {
                        Command::Send { shard, msg } => {
                            let now = self.nodes[i].now(self.now_ms);
                            self.nodes[i].shards[shard].handle(now, msg);
                        }
                        Command::Peer { to, partition, msg } => {
                            self.transmit(i, s, to, partition, msg)
                        }
                        Command::RelayBeat { to, client, op } => {
                            self.send(i, &to, Payload::RelayBeat { client, op })
                        }
                        Command::Reply { to, result } => self.complete(i, to.token, result),
                        Command::Push { .. } => {}
                    }
                }
            }
            while let Some(cmd) = self.nodes[i].router.poll_command() {
                any = true;
                self.execute_route(i, cmd);
            }
            let now = self.nodes[i].now(self.now_ms);
            for s in 0..self.nodes[i].shards.len() {
                self.nodes[i].shards[s].flush(now);
            }
            if !any {
                break;
            }
        }
    }

    /// Executes what node `i`'s router decided.
    fn execute_route(&mut self, i: usize, cmd: RouteCommand) {
        match cmd {
            RouteCommand::Apply {
                token, client, op, ..
            } => {
                let n = self.nodes[i].shard_count;
                let shard = client_shard(&client, n);
                let now = self.nodes[i].now(self.now_ms);
                let reply = Some(ReplyTo { shard, token });
                self.nodes[i].shards[shard].handle(now, ShardMsg::Client { client, op, reply });
            }
            RouteCommand::Forward {
                to,
                token,
                client,
                op,
            } => self.send(
                i,
                &to,
                Payload::Forward {
                    id: token,
                    client,
                    op,
                },
            ),
            RouteCommand::RelayBeat { client, op } => {
                self.beat_relayed(i, client, op, true);
            }
        }
    }

    pub(super) fn beat_relayed(
        &mut self,
        i: usize,
        client: ClientId,
        op: ClientOp,
        to_claimants: bool,
    ) {
        let n = self.nodes[i].shard_count;
        let now = self.nodes[i].now(self.now_ms);
        self.nodes[i].shards[client_shard(&client, n)].handle(
            now,
            ShardMsg::BeatRelayed {
                client,
                op,
                to_claimants,
            },
        );
    }

    /// The write of `token` on node `i` has its outcome.
    pub(super) fn complete(&mut self, i: usize, token: u64, result: OpResult) {
        match self.nodes[i].waiters.remove(&token) {
            Some(Waiter::Peer { from, id }) => {
                self.put_on_wire(i, from, Payload::ForwardReply { id, result })
            }
            Some(Waiter::Client) => {
                if let Some((client, _)) = self.http_pending.remove(&(i, token)) {
                    if !self.truth.contains_key(&client) {
                        self.say(format!("{client}: node {i} answers {result:?}"));
                    }
                    self.http_busy.remove(&client);
                }
            }
            None => {}
        }
    }

    pub(super) fn new_token(&mut self, i: usize, waiter: Waiter) -> u64 {
        let node = &mut self.nodes[i];
        node.next_token += 1;
        node.waiters.insert(node.next_token, waiter);
        node.next_token
    }

    pub(super) fn fire_timers(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.running(i) {
                continue;
            }
            let now = self.nodes[i].now(self.now_ms);
            let mut fired = false;
            if self.nodes[i]
                .router
                .poll_timeout()
                .is_some_and(|t| t <= self.now_ms)
            {
                self.nodes[i].router.handle_timeout(self.now_ms);
                fired = true;
            }
            for s in 0..self.nodes[i].shards.len() {
                if self.nodes[i].shards[s]
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now_ms)
                {
                    self.nodes[i].shards[s].handle_timeout(now);
                    fired = true;
                }
            }
            if fired {
                self.collect(i);
            }
        }
    }
}
