//! A service's view is cut into runs of publishers that successive views share. Random
//! batches of registrations, batch registrations, deregistrations and disconnections over one
//! service with hundreds of publishers, each batch flushed at once, are compared with a plain
//! model; the runs must stay within their bounds, and a change must leave most runs shared.
#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod harness;

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::view::RUN_MAX;
use engine::{ClientId, ClientOp, Host, OpResult, ServiceKey, ServiceView};
use harness::{inst, svc, Sim};
use proptest::prelude::*;

const CLIENTS: u64 = 700;

#[derive(Clone, Debug)]
enum Op {
    Register { client: u64, port: u16 },
    Batch { client: u64, ports: Vec<u16> },
    Deregister { client: u64, port: u16 },
    Disconnect { client: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let client = 1..=CLIENTS;
    prop_oneof![
        4 => (client.clone(), 1..4u16).prop_map(|(client, port)| Op::Register { client, port }),
        1 => (client.clone(), prop::collection::vec(1..4u16, 1..3))
            .prop_map(|(client, ports)| Op::Batch { client, ports }),
        2 => (client.clone(), 1..4u16).prop_map(|(client, port)| Op::Deregister { client, port }),
        1 => client.prop_map(|client| Op::Disconnect { client }),
    ]
}

/// The address every instance of `client` uses: one host per client, the port varies.
fn host(client: u64) -> String {
    format!("10.{}.{}.1", client / 250, client % 250)
}

fn instances(view: &ServiceView) -> Vec<(String, u16)> {
    let mut v: Vec<_> = view
        .instances()
        .map(|i| (i.host.to_string(), i.port))
        .collect();
    v.sort();
    v
}

/// Connections 1..=n each register one instance (port 9) in `service`, one flush each.
fn register_one_each(sim: &mut Sim, service: &ServiceKey, n: u64) {
    for c in 1..=n {
        sim.register(&ClientId::Conn(c), service, inst(&host(c), 9))
            .unwrap();
    }
}

fn check_runs(view: &ServiceView) {
    for run in view.runs() {
        assert!(!run.is_empty(), "an empty run in the view");
        assert!(run.len() <= RUN_MAX, "a run of {} publishers", run.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn batched_changes_over_many_runs_match_the_model(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..80), 1..40)
    ) {
        let mut sim = Sim::new(2);
        let service = svc("runs");
        // Model: per client, its current instances (ports); a registration replaces them.
        let mut model: BTreeMap<u64, Vec<u16>> = BTreeMap::new();
        // Start from 500 publishers so every batch lands in a service of several runs.
        let seed: Vec<_> = (1..=500u64)
            .map(|c| {
                model.insert(c, vec![9]);
                (ClientId::Conn(c), ClientOp::Register {
                    service: service.clone(),
                    instance: inst(&host(c), 9),
                })
            })
            .collect();
        sim.clients_at_once(seed);
        for batch in batches {
            let mut ops = Vec::new();
            for op in batch {
                let (client, op) = match op {
                    Op::Register { client, port } => {
                        model.insert(client, vec![port]);
                        (client, ClientOp::Register {
                            service: service.clone(),
                            instance: inst(&host(client), port),
                        })
                    }
                    Op::Batch { client, mut ports } => {
                        ports.sort();
                        ports.dedup();
                        model.insert(client, ports.clone());
                        let instances = ports.iter().map(|p| inst(&host(client), *p)).collect();
                        (client, ClientOp::BatchRegister { service: service.clone(), instances })
                    }
                    Op::Deregister { client, port } => {
                        // One publish per client and service (Nacos): a single instance goes
                        // whatever port is named; from a batch, only the matching one.
                        if let Some(ports) = model.get_mut(&client) {
                            if ports.len() == 1 {
                                ports.clear();
                            }
                            ports.retain(|p| *p != port);
                            if ports.is_empty() {
                                model.remove(&client);
                            }
                        }
                        (client, ClientOp::Deregister {
                            service: service.clone(),
                            host: Host::parse(&host(client)).unwrap(),
                            port,
                            cluster: "DEFAULT".into(),
                        })
                    }
                    Op::Disconnect { client } => {
                        model.remove(&client);
                        (client, ClientOp::Disconnect)
                    }
                };
                ops.push((ClientId::Conn(client), op));
            }
            for reply in sim.clients_at_once(ops) {
                prop_assert!(matches!(reply, OpResult::Ok(_)), "{reply:?}");
            }
            let mut expected: Vec<(String, u16)> = model
                .iter()
                .flat_map(|(c, ports)| ports.iter().map(|p| (host(*c), *p)))
                .collect();
            expected.sort();
            match sim.view(&service) {
                Some(view) => {
                    check_runs(&view);
                    prop_assert_eq!(view.instance_count, expected.len());
                    prop_assert_eq!(instances(&view), expected);
                }
                None => prop_assert!(expected.is_empty(), "the service vanished"),
            }
        }
    }
}

#[test]
fn one_registration_in_a_large_service_rebuilds_one_run() {
    let mut sim = Sim::new(1);
    let service = svc("large");
    register_one_each(&mut sim, &service, 2_000);
    let before = sim.view(&service).unwrap();
    check_runs(&before);
    assert!(
        before.runs().len() >= 2_000 / RUN_MAX,
        "{} runs",
        before.runs().len()
    );
    for (client, port) in [(1_000, 10), (1, 11), (2_000, 12), (2_001, 13)] {
        let before = sim.view(&service).unwrap();
        sim.register(&ClientId::Conn(client), &service, inst(&host(client), port))
            .unwrap();
        let after = sim.view(&service).unwrap();
        check_runs(&after);
        let shared = after
            .runs()
            .iter()
            .filter(|run| before.runs().iter().any(|old| Arc::ptr_eq(old, run)))
            .count();
        // The run the client falls into is rebuilt (and may split in two); no other is.
        assert!(
            shared + 2 >= after.runs().len() && shared + 1 >= before.runs().len(),
            "client {client}: {shared} of {} runs shared",
            after.runs().len()
        );
    }
    assert_eq!(sim.view(&service).unwrap().instance_count, 2_001);
}

#[test]
fn deregistering_most_publishers_leaves_no_trail_of_tiny_runs() {
    let mut sim = Sim::new(1);
    let service = svc("shrinking");
    register_one_each(&mut sim, &service, 1_000);
    // One by one, as clients leave in practice: every run shrinks through the join rule.
    for c in (1..=1_000u64).filter(|c| c % 50 != 0) {
        sim.disconnect(&ClientId::Conn(c)).unwrap();
    }
    let view = sim.view(&service).unwrap();
    check_runs(&view);
    assert_eq!(view.instance_count, 20);
    assert!(
        view.runs().len() <= 2,
        "20 publishers left in {} runs",
        view.runs().len()
    );
}
