//! A tiny deterministic driver of N shards for the engine's integration tests.
//!
//! It plays the part of the server: it owns the shards, a virtual clock and a FIFO queue of
//! inter-shard messages. Client operations are handed to the client's owner shard (as if the
//! request had been accepted on `accept` core and forwarded), every `Command::Send` is queued
//! for its target, replies and pushes are collected, every shard is flushed after each delivery
//! round, and advancing the clock fires every timer deadline in order.
//!
//! The harness also checks what the engine emits: every `Send` must name the owner shard of its
//! message and never the sender itself; violations are recorded in [`Sim::misroutes`].

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use engine::model::{InstanceSpec, Interner};
use engine::shard::{client_shard, InstancePatch};
use engine::{
    ClientId, ClientOp, Command, Host, Instance, Metadata, Now, OpResult, ReadIndex, ReplyTo,
    ServiceKey, ServiceOp, ServiceView, Shard, ShardConfig, ShardMsg,
};

/// Wall-clock origin of the virtual clock (unix ms at mono 0).
pub const UNIX_ORIGIN_MS: u64 = 1_700_000_000_000;

/// A push as the driver would send it.
#[derive(Debug, Clone)]
pub struct PushRecord {
    /// Virtual mono time at which the push was emitted.
    pub at_ms: u64,
    /// Subscriber connection id.
    pub subscriber: u64,
    /// Its cluster filter.
    pub clusters: String,
    /// The pushed view.
    pub view: Arc<ServiceView>,
}

/// Summed shard counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub instances: i64,
    pub services: i64,
    pub clients: i64,
    pub subscriptions: i64,
    pub pushes: u64,
    pub expired_instances: u64,
    pub unhealthy_marks: u64,
}

/// The driver.
pub struct Sim {
    pub shards: Vec<Shard>,
    pub index: Arc<ReadIndex>,
    pub cfg: ShardConfig,
    pub now: Now,
    queue: VecDeque<(usize, usize, ShardMsg)>,
    replies: BTreeMap<u64, OpResult>,
    pub pushes: Vec<PushRecord>,
    pub misroutes: Vec<String>,
    /// Number of `Command::Send`s delivered so far.
    pub sends: usize,
    next_token: u64,
}

impl Sim {
    /// `shard_count` shards with the default config.
    pub fn new(shard_count: usize) -> Sim {
        Sim::with_config(ShardConfig {
            shard_count,
            ..ShardConfig::default()
        })
    }

    /// Shards built from `cfg` (one per `cfg.shard_count`), clock at mono 0.
    pub fn with_config(cfg: ShardConfig) -> Sim {
        let index = ReadIndex::new(cfg.shard_count, 1 << 20);
        let now = Now {
            mono_ms: 0,
            unix_ms: UNIX_ORIGIN_MS,
        };
        let shards = (0..cfg.shard_count)
            .map(|id| Shard::new(id, cfg.clone(), index.clone(), now))
            .collect();
        Sim {
            shards,
            index,
            cfg,
            now,
            queue: VecDeque::new(),
            replies: BTreeMap::new(),
            pushes: Vec::new(),
            misroutes: Vec::new(),
            sends: 0,
            next_token: 1,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard that owns `client`.
    pub fn client_owner(&self, client: &ClientId) -> usize {
        client_shard(client, self.shard_count())
    }

    /// The shard that owns `service`.
    pub fn service_owner(&self, service: &ServiceKey) -> usize {
        self.index.owner_of(service)
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Runs `op` for `client` on its owner shard, delivers everything that follows and returns
    /// the reply. The reply goes to the last shard (the "accepting core").
    pub fn client(&mut self, client: &ClientId, op: ClientOp) -> OpResult {
        let owner = self.client_owner(client);
        self.client_on(owner, client, op)
    }

    /// Like [`Sim::client`] but hands the message to shard `to`, owner or not.
    pub fn client_on(&mut self, to: usize, client: &ClientId, op: ClientOp) -> OpResult {
        let token = self.token();
        let reply = Some(ReplyTo {
            shard: self.shard_count() - 1,
            token,
        });
        self.queue.push_back((
            usize::MAX,
            to,
            ShardMsg::Client {
                client: client.clone(),
                op,
                reply,
            },
        ));
        self.run();
        self.replies
            .remove(&token)
            .expect("a reply to every request")
    }

    /// Hands every op to its client's owner at once and delivers them together, so the shards
    /// flush them as one batch (as a busy core does); returns the replies in order.
    pub fn clients_at_once(&mut self, ops: Vec<(ClientId, ClientOp)>) -> Vec<OpResult> {
        let mut tokens = Vec::with_capacity(ops.len());
        for (client, op) in ops {
            let token = self.token();
            tokens.push(token);
            let reply = Some(ReplyTo {
                shard: self.shard_count() - 1,
                token,
            });
            let to = self.client_owner(&client);
            self.queue
                .push_back((usize::MAX, to, ShardMsg::Client { client, op, reply }));
        }
        self.run();
        tokens
            .into_iter()
            .map(|t| self.replies.remove(&t).expect("a reply to every request"))
            .collect()
    }

    /// Runs a service op on the service's owner and returns the reply.
    pub fn service(&mut self, service: &ServiceKey, op: ServiceOp) -> OpResult {
        let owner = self.service_owner(service);
        self.service_on(owner, service, op)
    }

    /// Like [`Sim::service`] but on shard `to`, owner or not.
    pub fn service_on(&mut self, to: usize, service: &ServiceKey, op: ServiceOp) -> OpResult {
        let token = self.token();
        let reply = Some(ReplyTo { shard: 0, token });
        self.queue.push_back((
            usize::MAX,
            to,
            ShardMsg::Service {
                service: service.clone(),
                op,
                reply,
            },
        ));
        self.run();
        self.replies
            .remove(&token)
            .expect("a reply to every request")
    }

    /// Collects the commands of every shard: sends are queued (and checked), replies and
    /// pushes recorded.
    fn collect(&mut self) {
        for from in 0..self.shards.len() {
            while let Some(cmd) = self.shards[from].poll_command() {
                match cmd {
                    Command::Send { shard, msg } => {
                        let expected = match &msg {
                            ShardMsg::Client { client, .. }
                            | ShardMsg::BeatRelayed { client, .. } => {
                                client_shard(client, self.cfg.shard_count)
                            }
                            ShardMsg::Service { service, .. } => self.index.owner_of(service),
                        };
                        if shard != expected || shard == from || shard >= self.shards.len() {
                            self.misroutes.push(format!(
                                "shard {from} sent to {shard} (owner {expected}): {msg:?}"
                            ));
                        }
                        self.queue.push_back((from, shard, msg));
                    }
                    Command::Peer { to, .. } | Command::RelayBeat { to, .. } => {
                        self.misroutes
                            .push(format!("standalone shard {from} sent to peer {to}"));
                    }
                    Command::Reply { to, result } => {
                        let prev = self.replies.insert(to.token, result);
                        assert!(prev.is_none(), "two replies for token {}", to.token);
                    }
                    Command::Push {
                        subscriber,
                        clusters,
                        view,
                    } => self.pushes.push(PushRecord {
                        at_ms: self.now.mono_ms,
                        subscriber,
                        clusters: clusters.to_string(),
                        view,
                    }),
                }
            }
        }
    }

    /// Delivers queued messages in rounds until nothing is left; flushes every shard after each
    /// round.
    pub fn run(&mut self) {
        let mut rounds = 0;
        loop {
            self.collect();
            if self.queue.is_empty() {
                break;
            }
            rounds += 1;
            assert!(rounds < 1_000, "messages keep bouncing between shards");
            let batch: Vec<_> = self.queue.drain(..).collect();
            for (from, to, msg) in batch {
                if from != usize::MAX {
                    self.sends += 1;
                }
                self.shards[to].handle(self.now, msg);
            }
            for s in &mut self.shards {
                s.flush(self.now);
            }
        }
    }

    /// Moves the virtual clock forward by `ms`, firing every timer deadline on the way in
    /// order and delivering what they cause.
    pub fn advance(&mut self, ms: u64) {
        let target = self.now.mono_ms + ms;
        loop {
            let next = self.shards.iter().filter_map(|s| s.poll_timeout()).min();
            match next {
                Some(at) if at <= target => {
                    self.set_clock(at.max(self.now.mono_ms));
                    let now = self.now;
                    for s in &mut self.shards {
                        if s.poll_timeout().is_some_and(|t| t <= now.mono_ms) {
                            s.handle_timeout(now);
                        }
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.set_clock(target);
    }

    /// The process does not run for `ms` (SIGSTOP, a VM pause): the clock moves, no timer
    /// fires; the next `advance` fires the overdue ones at once.
    pub fn stall(&mut self, ms: u64) {
        self.set_clock(self.now.mono_ms + ms);
    }

    fn set_clock(&mut self, mono_ms: u64) {
        self.now = Now {
            mono_ms,
            unix_ms: UNIX_ORIGIN_MS + mono_ms,
        };
    }

    /// The published view of `service`, read through shard `via`'s handle on the index.
    pub fn view_via(&self, via: usize, service: &ServiceKey) -> Option<Arc<ServiceView>> {
        self.shards[via].index().view(service)
    }

    /// The published view of `service`.
    pub fn view(&self, service: &ServiceKey) -> Option<Arc<ServiceView>> {
        self.index.view(service)
    }

    /// `(host, port, cluster, healthy)` of every instance of `service`, sorted; empty if absent.
    pub fn instances(&self, service: &ServiceKey) -> Vec<(String, u16, String, bool)> {
        let mut v: Vec<_> = self
            .index
            .read(service, |view| {
                view.map(|v| {
                    v.instances()
                        .map(|i| (i.host.to_string(), i.port, i.cluster.to_string(), i.healthy))
                        .collect()
                })
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every service in the index with its instance count.
    pub fn directory(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        self.index.for_each(|v| {
            out.insert(format!("{:?}", v.key), v.instance_count);
        });
        out
    }

    /// Counters summed over shards.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in &self.shards {
            let st = s.stats();
            t.instances += st.instances.load(Ordering::Relaxed);
            t.services += st.services.load(Ordering::Relaxed);
            t.clients += st.clients.load(Ordering::Relaxed);
            t.subscriptions += st.subscriptions.load(Ordering::Relaxed);
            t.pushes += st.pushes.load(Ordering::Relaxed);
            t.expired_instances += st.expired_instances.load(Ordering::Relaxed);
            t.unhealthy_marks += st.unhealthy_marks.load(Ordering::Relaxed);
        }
        t
    }

    /// Sum of `client_count()` over shards.
    pub fn client_count(&self) -> usize {
        self.shards.iter().map(|s| s.client_count()).sum()
    }

    /// Pushes recorded so far, taken.
    pub fn take_pushes(&mut self) -> Vec<PushRecord> {
        std::mem::take(&mut self.pushes)
    }

    // ---- conveniences for common operations ----

    pub fn register(
        &mut self,
        client: &ClientId,
        service: &ServiceKey,
        instance: Instance,
    ) -> OpResult {
        self.client(
            client,
            ClientOp::Register {
                service: service.clone(),
                instance,
            },
        )
    }

    pub fn batch(
        &mut self,
        client: &ClientId,
        service: &ServiceKey,
        instances: Vec<Instance>,
    ) -> OpResult {
        self.client(
            client,
            ClientOp::BatchRegister {
                service: service.clone(),
                instances,
            },
        )
    }

    pub fn deregister(
        &mut self,
        client: &ClientId,
        service: &ServiceKey,
        ip: &str,
        port: u16,
        cluster: &str,
    ) -> OpResult {
        self.client(
            client,
            ClientOp::Deregister {
                service: service.clone(),
                host: Host::parse(ip).unwrap(),
                port,
                cluster: cluster.into(),
            },
        )
    }

    pub fn beat(
        &mut self,
        service: &ServiceKey,
        instance: &Instance,
        reregister: bool,
    ) -> OpResult {
        let client = ClientId::for_address(&instance.host, instance.port);
        self.client(
            &client,
            ClientOp::Beat {
                service: service.clone(),
                host: instance.host.clone(),
                port: instance.port,
                cluster: instance.cluster.clone(),
                reregister: reregister.then(|| instance.clone()),
            },
        )
    }

    pub fn update(
        &mut self,
        client: &ClientId,
        service: &ServiceKey,
        instance: &Instance,
        patch: InstancePatch,
    ) -> OpResult {
        self.client(
            client,
            ClientOp::Update {
                service: service.clone(),
                host: instance.host.clone(),
                port: instance.port,
                cluster: instance.cluster.clone(),
                patch,
            },
        )
    }

    pub fn subscribe(&mut self, conn: u64, service: &ServiceKey, clusters: &str) -> OpResult {
        self.client(
            &ClientId::Conn(conn),
            ClientOp::Subscribe {
                service: service.clone(),
                clusters: clusters.into(),
            },
        )
    }

    pub fn unsubscribe(&mut self, conn: u64, service: &ServiceKey) -> OpResult {
        self.client(
            &ClientId::Conn(conn),
            ClientOp::Unsubscribe {
                service: service.clone(),
            },
        )
    }

    pub fn disconnect(&mut self, client: &ClientId) -> OpResult {
        self.client(client, ClientOp::Disconnect)
    }
}

/// A service in the public namespace and default group.
pub fn svc(name: &str) -> ServiceKey {
    ServiceKey::new("", "", name).unwrap()
}

/// A valid instance at `ip:port` in the default cluster.
pub fn inst(ip: &str, port: u16) -> Instance {
    spec(ip, port).build(&mut Interner::default()).unwrap()
}

/// A valid instance at `ip:port` in `cluster`.
pub fn inst_in(ip: &str, port: u16, cluster: &str) -> Instance {
    InstanceSpec {
        cluster: Some(cluster.into()),
        ..spec(ip, port)
    }
    .build(&mut Interner::default())
    .unwrap()
}

/// An instance with metadata pairs (preserved keys set its timing).
pub fn inst_with_meta(ip: &str, port: u16, meta: &[(&str, &str)]) -> Instance {
    InstanceSpec {
        metadata: Metadata::from_pairs(meta.iter().copied()).unwrap(),
        ..spec(ip, port)
    }
    .build(&mut Interner::default())
    .unwrap()
}

/// The spec of a default instance at `ip:port`.
pub fn spec(ip: &str, port: u16) -> InstanceSpec {
    InstanceSpec {
        ip: ip.into(),
        port: i64::from(port),
        ..InstanceSpec::default()
    }
}

/// The HTTP (heartbeat) client of an instance.
pub fn http_client(instance: &Instance) -> ClientId {
    ClientId::for_address(&instance.host, instance.port)
}

/// A connection id owned by shard `shard` of `shard_count` (the server picks ids that way).
pub fn conn_on(shard: usize, shard_count: usize, n: u64) -> ClientId {
    ClientId::Conn(n * shard_count as u64 + shard as u64)
}

/// A service name owned by shard `shard`, distinct per `n`.
pub fn svc_owned_by(index: &ReadIndex, shard: usize, n: usize) -> ServiceKey {
    (0..)
        .map(|i| svc(&format!("svc-{shard}-{n}-{i}")))
        .find(|k| index.owner_of(k) == shard)
        .unwrap()
}
