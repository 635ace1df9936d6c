//! Property test: random operations from a few clients over a few services, on 3 shards,
//! compared after every step with a plain reference model of the Nacos semantics.
#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod harness;

use std::collections::{BTreeMap, BTreeSet};

use engine::model::{InstanceSpec, Interner};
use engine::{ClientId, Host, Instance, Metadata, OpError, OpOutcome, OpResult, ServiceKey};
use harness::{svc, Sim};
use proptest::prelude::*;

const SHARDS: usize = 3;
const SERVICES: usize = 3;
/// Clients 0..3 are connections, 3..5 are HTTP (heartbeat) clients.
const CONNS: usize = 3;
const CLIENTS: usize = 5;
const CONN_IPS: [&str; 2] = ["10.0.0.1", "10.0.0.2"];
const HTTP_IPS: [&str; 2] = ["10.0.1.1", "10.0.1.2"];
const HTTP_PORT: u16 = 8080;
const CLUSTERS: [&str; 2] = ["DEFAULT", "X"];
const BEAT_CHECK_MS: u64 = 1_000;

fn client_id(c: usize) -> ClientId {
    if c < CONNS {
        ClientId::Conn(c as u64 + 1)
    } else {
        ClientId::V4(HTTP_IPS[c - CONNS].parse().unwrap(), HTTP_PORT)
    }
}

fn service(s: usize) -> ServiceKey {
    svc(&format!("prop-{s}"))
}

/// What an instance looks like, before it is built.
#[derive(Clone, Debug)]
struct Shape {
    ip: usize,
    port: u16,
    cluster: usize,
    healthy: bool,
    /// Short preserved timeouts (interval 1 s, unhealthy 3 s, delete 6 s) instead of defaults.
    fast: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        0..2usize,
        80..82u16,
        0..2usize,
        prop::bool::weighted(0.8),
        any::<bool>(),
    )
        .prop_map(|(ip, port, cluster, healthy, fast)| Shape {
            ip,
            port,
            cluster,
            healthy,
            fast,
        })
}

fn build(ip: &str, port: u16, shape: &Shape) -> Instance {
    let metadata = if shape.fast {
        Metadata::from_pairs([
            ("preserved.heart.beat.interval", "1000"),
            ("preserved.heart.beat.timeout", "3000"),
            ("preserved.ip.delete.timeout", "6000"),
        ])
        .unwrap()
    } else {
        Metadata::default()
    };
    InstanceSpec {
        ip: ip.into(),
        port: i64::from(port),
        cluster: Some(CLUSTERS[shape.cluster].into()),
        healthy: Some(shape.healthy),
        metadata,
        ..InstanceSpec::default()
    }
    .build(&mut Interner::default())
    .unwrap()
}

/// The instance client `c` registers: connections anywhere, HTTP clients at their own address.
fn instance_of(c: usize, shape: &Shape) -> Instance {
    if c < CONNS {
        build(CONN_IPS[shape.ip], shape.port, shape)
    } else {
        build(HTTP_IPS[c - CONNS], HTTP_PORT, shape)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Register {
        client: usize,
        service: usize,
        shape: Shape,
    },
    Batch {
        conn: usize,
        service: usize,
        shapes: Vec<Shape>,
    },
    Deregister {
        client: usize,
        service: usize,
        shape: Shape,
    },
    Beat {
        http: usize,
        service: usize,
        shape: Shape,
        reregister: bool,
    },
    Subscribe {
        conn: usize,
        service: usize,
    },
    Unsubscribe {
        conn: usize,
        service: usize,
    },
    Disconnect {
        client: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CLIENTS, 0..SERVICES, shape()).prop_map(|(client, service, shape)| Op::Register { client, service, shape }),
        2 => (0..CONNS, 0..SERVICES, prop::collection::vec(shape(), 1..4))
            .prop_map(|(conn, service, shapes)| Op::Batch { conn, service, shapes }),
        2 => (0..CLIENTS, 0..SERVICES, shape()).prop_map(|(client, service, shape)| Op::Deregister { client, service, shape }),
        3 => (0..2usize, 0..SERVICES, shape(), any::<bool>())
            .prop_map(|(http, service, shape, reregister)| Op::Beat { http, service, shape, reregister }),
        1 => (0..CONNS, 0..SERVICES).prop_map(|(conn, service)| Op::Subscribe { conn, service }),
        1 => (0..CONNS, 0..SERVICES).prop_map(|(conn, service)| Op::Unsubscribe { conn, service }),
        1 => (0..CLIENTS).prop_map(|client| Op::Disconnect { client }),
        3 => prop_oneof![0..100u64, 0..4_000u64, 0..20_000u64].prop_map(|ms| Op::Advance { ms }),
    ]
}

struct Entry {
    publish: Vec<Instance>,
    last_beat_ms: u64,
}

#[derive(Default)]
struct MClient {
    publishes: BTreeMap<usize, Entry>,
    subscriptions: BTreeSet<usize>,
}

/// The reference: which clients publish what where, with plain maps and the Nacos rules.
#[derive(Default)]
struct Model {
    clients: BTreeMap<usize, MClient>,
    now: u64,
    next_check: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            clients: BTreeMap::new(),
            now: 0,
            next_check: BEAT_CHECK_MS,
        }
    }

    fn drop_if_empty(&mut self, c: usize) {
        if self
            .clients
            .get(&c)
            .is_some_and(|m| m.publishes.is_empty() && m.subscriptions.is_empty())
        {
            self.clients.remove(&c);
        }
    }

    /// Replaces the publish; returns whether anything changed. Always counts as a beat.
    fn set_publish(&mut self, c: usize, s: usize, publish: Vec<Instance>) -> bool {
        let now = self.now;
        let client = self.clients.entry(c).or_default();
        match client.publishes.get_mut(&s) {
            Some(e) => {
                e.last_beat_ms = now;
                if e.publish == publish {
                    return false;
                }
                e.publish = publish;
            }
            None => {
                client.publishes.insert(
                    s,
                    Entry {
                        publish,
                        last_beat_ms: now,
                    },
                );
            }
        }
        true
    }

    fn deregister(&mut self, c: usize, s: usize, host: &Host, port: u16, cluster: &str) -> bool {
        let Some(client) = self.clients.get_mut(&c) else {
            return false;
        };
        let Some(e) = client.publishes.get_mut(&s) else {
            return false;
        };
        let remaining: Vec<Instance> = if e.publish.len() <= 1 {
            Vec::new()
        } else {
            e.publish
                .iter()
                .filter(|i| !i.is_at(host, port, cluster))
                .cloned()
                .collect()
        };
        if remaining.len() == e.publish.len() {
            return false;
        }
        if remaining.is_empty() {
            client.publishes.remove(&s);
        } else {
            e.publish = remaining;
        }
        self.drop_if_empty(c);
        true
    }

    /// `Some(true)` found, `Some(false)` reregistered, `None` unknown.
    fn beat(
        &mut self,
        c: usize,
        s: usize,
        host: &Host,
        port: u16,
        cluster: &str,
        rereg: Option<Instance>,
    ) -> Option<bool> {
        let now = self.now;
        if let Some(e) = self
            .clients
            .get_mut(&c)
            .and_then(|m| m.publishes.get_mut(&s))
        {
            if let Some(found) = e.publish.iter().find(|i| i.is_at(host, port, cluster)) {
                e.last_beat_ms = now;
                if !found.healthy {
                    for i in &mut e.publish {
                        i.healthy = true;
                    }
                }
                return Some(true);
            }
        }
        let inst = rereg?;
        self.set_publish(c, s, vec![inst]);
        Some(false)
    }

    fn advance(&mut self, ms: u64) {
        let target = self.now + ms;
        while self.next_check <= target {
            self.now = self.next_check;
            self.check_heartbeats();
            self.next_check += BEAT_CHECK_MS;
        }
        self.now = target;
    }

    fn check_heartbeats(&mut self) {
        let now = self.now;
        let http: Vec<usize> = self
            .clients
            .keys()
            .copied()
            .filter(|&c| c >= CONNS)
            .collect();
        for c in http {
            let client = self.clients.get_mut(&c).unwrap();
            client.publishes.retain(|_, e| {
                let timing = e.publish[0].timing();
                let silent = now - e.last_beat_ms;
                if silent > u64::from(timing.delete_ms) {
                    return false;
                }
                if silent > u64::from(timing.timeout_ms) {
                    for i in &mut e.publish {
                        i.healthy = false;
                    }
                }
                true
            });
            self.drop_if_empty(c);
        }
    }

    fn instances_of(&self, s: usize) -> Vec<(String, u16, String, bool)> {
        let mut v: Vec<_> = self
            .clients
            .values()
            .filter_map(|m| m.publishes.get(&s))
            .flat_map(|e| e.publish.iter())
            .map(|i| (i.host.to_string(), i.port, i.cluster.to_string(), i.healthy))
            .collect();
        v.sort();
        v
    }

    fn service_exists(&self, s: usize) -> bool {
        self.clients
            .values()
            .any(|m| m.publishes.contains_key(&s) || m.subscriptions.contains(&s))
    }
}

fn changed(b: bool) -> OpResult {
    Ok(if b {
        OpOutcome::Changed
    } else {
        OpOutcome::Unchanged
    })
}

/// Applies `op` to both, checking the reply where the model predicts it.
fn step(sim: &mut Sim, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Register {
            client,
            service: s,
            shape,
        } => {
            let inst = instance_of(*client, shape);
            let r = sim.register(&client_id(*client), &service(*s), inst.clone());
            prop_assert_eq!(r, changed(model.set_publish(*client, *s, vec![inst])));
        }
        Op::Batch {
            conn,
            service: s,
            shapes,
        } => {
            let insts: Vec<Instance> = shapes.iter().map(|sh| instance_of(*conn, sh)).collect();
            let r = sim.batch(&client_id(*conn), &service(*s), insts.clone());
            prop_assert_eq!(r, changed(model.set_publish(*conn, *s, insts)));
        }
        Op::Deregister {
            client,
            service: s,
            shape,
        } => {
            let inst = instance_of(*client, shape);
            let r = sim.deregister(
                &client_id(*client),
                &service(*s),
                &inst.host.to_string(),
                inst.port,
                &inst.cluster,
            );
            prop_assert_eq!(
                r,
                changed(model.deregister(*client, *s, &inst.host, inst.port, &inst.cluster))
            );
        }
        Op::Beat {
            http,
            service: s,
            shape,
            reregister,
        } => {
            let c = CONNS + http;
            let inst = instance_of(c, shape);
            let r = sim.beat(&service(*s), &inst, *reregister);
            let expected = model.beat(
                c,
                *s,
                &inst.host,
                inst.port,
                &inst.cluster,
                reregister.then(|| inst.clone()),
            );
            match expected {
                Some(true) => prop_assert!(
                    matches!(r, Ok(OpOutcome::Beat { .. })),
                    "beat of a known instance: {:?}",
                    r
                ),
                Some(false) => prop_assert_eq!(
                    r,
                    Ok(OpOutcome::Beat {
                        interval_ms: inst.timing().interval_ms
                    })
                ),
                None => prop_assert!(
                    matches!(r, Err(OpError::NotFound(_))),
                    "beat of an unknown instance: {:?}",
                    r
                ),
            }
        }
        Op::Subscribe { conn, service: s } => {
            prop_assert_eq!(
                sim.subscribe(*conn as u64 + 1, &service(*s), ""),
                Ok(OpOutcome::Changed)
            );
            model
                .clients
                .entry(*conn)
                .or_default()
                .subscriptions
                .insert(*s);
        }
        Op::Unsubscribe { conn, service: s } => {
            let r = sim.unsubscribe(*conn as u64 + 1, &service(*s));
            let was = model
                .clients
                .get_mut(conn)
                .is_some_and(|m| m.subscriptions.remove(s));
            model.drop_if_empty(*conn);
            prop_assert_eq!(r, changed(was));
        }
        Op::Disconnect { client } => {
            let r = sim.disconnect(&client_id(*client));
            prop_assert_eq!(r, changed(model.clients.remove(client).is_some()));
        }
        Op::Advance { ms } => {
            sim.advance(*ms);
            model.advance(*ms);
        }
    }
    Ok(())
}

fn compare(sim: &Sim, model: &Model) -> Result<(), TestCaseError> {
    prop_assert!(
        sim.misroutes.is_empty(),
        "sends to a non-owner shard: {:?}",
        sim.misroutes
    );
    for s in 0..SERVICES {
        let key = service(s);
        prop_assert_eq!(
            sim.instances(&key),
            model.instances_of(s),
            "instances of service {}",
            s
        );
        prop_assert_eq!(
            sim.view(&key).is_some(),
            model.service_exists(s),
            "existence of service {}",
            s
        );
        if let Some(v) = sim.view(&key) {
            prop_assert_eq!(v.instance_count, v.instances().count());
        }
    }
    let dir = sim.directory();
    let t = sim.totals();
    prop_assert_eq!(
        t.instances,
        dir.values().sum::<usize>() as i64,
        "stats.instances vs views"
    );
    prop_assert_eq!(t.services, dir.len() as i64, "stats.services vs directory");
    prop_assert_eq!(
        t.clients,
        model.clients.len() as i64,
        "stats.clients vs model"
    );
    prop_assert_eq!(sim.client_count(), model.clients.len());
    let subs: usize = model.clients.values().map(|m| m.subscriptions.len()).sum();
    prop_assert_eq!(t.subscriptions, subs as i64, "stats.subscriptions vs model");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_matches_the_reference_model_after_every_step(ops in prop::collection::vec(op(), 1..60)) {
        let mut sim = Sim::new(SHARDS);
        let mut model = Model::new();
        for op in &ops {
            step(&mut sim, &mut model, op)?;
            compare(&sim, &model)?;
        }
        // Finally let every heartbeat client expire: only connection clients remain.
        sim.advance(60_000);
        model.advance(60_000);
        compare(&sim, &model)?;
        prop_assert!(model.clients.keys().all(|&c| c < CONNS));
    }
}
