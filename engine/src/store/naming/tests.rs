//! The naming key space's rules, asserted as exact responses and effects.

use std::collections::BTreeMap;

use super::*;
use crate::store::{Store, StoreCommand, StoreEffect};

fn svc(name: &str) -> ServiceRef {
    ServiceRef {
        namespace: "public".into(),
        group: "DEFAULT_GROUP".into(),
        name: name.into(),
    }
}

fn inst(ip: &str, port: u16) -> PersistentInstance {
    PersistentInstance {
        ip: ip.into(),
        port,
        cluster: "DEFAULT".into(),
        weight: 1.0,
        healthy: true,
        enabled: true,
        metadata: BTreeMap::new(),
    }
}

fn apply(store: &mut Store, cmd: NamingCommand) -> (StoreResponse, Vec<NamingEffect>) {
    let mut effects = Vec::new();
    let response = store.apply(&StoreCommand::Naming(cmd), &mut effects);
    let effects = effects
        .into_iter()
        .filter_map(|e| match e {
            StoreEffect::Naming(e) => Some(e),
            StoreEffect::Namespace(_) => None,
            StoreEffect::Auth(_) => None,
        })
        .collect();
    (response, effects)
}

fn register(
    store: &mut Store,
    service: &str,
    i: PersistentInstance,
) -> (StoreResponse, Vec<NamingEffect>) {
    apply(
        store,
        NamingCommand::Register {
            service: svc(service),
            instance: i,
        },
    )
}

#[test]
fn a_registration_upserts_once_and_repeating_it_changes_nothing() {
    let mut store = Store::default();
    let (r, e) = register(&mut store, "db", inst("127.0.0.1", 3306));
    assert_eq!(r, StoreResponse::done(true));
    assert_eq!(
        e,
        vec![NamingEffect::InstanceUpserted {
            service: svc("db"),
            instance: inst("127.0.0.1", 3306)
        }]
    );
    assert_eq!(
        register(&mut store, "db", inst("127.0.0.1", 3306)),
        (StoreResponse::done(false), vec![])
    );
    assert_eq!(store.naming.instance_count(), 1);
}

#[test]
fn an_instance_is_keyed_by_address_so_another_cluster_moves_it() {
    let mut store = Store::default();
    register(&mut store, "db", inst("127.0.0.1", 3306));
    let mut moved = inst("127.0.0.1", 3306);
    moved.cluster = "EAST".into();
    let (r, e) = register(&mut store, "db", moved.clone());
    assert_eq!(r, StoreResponse::done(true));
    assert_eq!(
        e,
        vec![NamingEffect::InstanceUpserted {
            service: svc("db"),
            instance: moved
        }]
    );
    assert_eq!(store.naming.instance_count(), 1);
}

#[test]
fn deregistering_an_unknown_instance_is_done_and_unchanged_as_nacos_answers_ok() {
    let mut store = Store::default();
    let cmd = NamingCommand::Deregister {
        service: svc("db"),
        ip: "127.0.0.1".into(),
        port: 1,
    };
    assert_eq!(apply(&mut store, cmd), (StoreResponse::done(false), vec![]));
}

#[test]
fn deregistering_the_last_instance_drops_the_undefined_service() {
    let mut store = Store::default();
    register(&mut store, "db", inst("127.0.0.1", 3306));
    let (r, e) = apply(
        &mut store,
        NamingCommand::Deregister {
            service: svc("db"),
            ip: "127.0.0.1".into(),
            port: 3306,
        },
    );
    assert_eq!(r, StoreResponse::done(true));
    assert_eq!(
        e,
        vec![NamingEffect::InstanceRemoved {
            service: svc("db"),
            instance: inst("127.0.0.1", 3306)
        }]
    );
    assert!(store.is_empty());
    assert_eq!(store.naming.instance_count(), 0);
}

#[test]
fn a_health_verdict_for_a_deregistered_instance_never_brings_it_back() {
    let mut store = Store::default();
    let cmd = NamingCommand::SetHealth {
        service: svc("db"),
        ip: "127.0.0.1".into(),
        port: 3306,
        healthy: false,
    };
    assert_eq!(apply(&mut store, cmd), (StoreResponse::done(false), vec![]));
    assert!(store.is_empty());
}

#[test]
fn a_health_flip_changes_only_the_flag() {
    let mut store = Store::default();
    register(&mut store, "db", inst("127.0.0.1", 3306));
    let flip = NamingCommand::SetHealth {
        service: svc("db"),
        ip: "127.0.0.1".into(),
        port: 3306,
        healthy: false,
    };
    let mut sick = inst("127.0.0.1", 3306);
    sick.healthy = false;
    assert_eq!(
        apply(&mut store, flip.clone()),
        (
            StoreResponse::done(true),
            vec![NamingEffect::InstanceUpserted {
                service: svc("db"),
                instance: sick
            }]
        )
    );
    assert_eq!(
        apply(&mut store, flip),
        (StoreResponse::done(false), vec![])
    );
}

#[test]
fn updating_an_unknown_instance_is_a_404_and_a_known_one_changes_its_fields() {
    let mut store = Store::default();
    let change = InstanceChange {
        weight: Some(5.0),
        ..Default::default()
    };
    let cmd = NamingCommand::Update {
        service: svc("db"),
        ip: "127.0.0.1".into(),
        port: 3306,
        change,
    };
    let (r, e) = apply(&mut store, cmd.clone());
    assert!(
        matches!(r, StoreResponse::Refused { code: 404, .. }),
        "{r:?}"
    );
    assert!(e.is_empty());
    register(&mut store, "db", inst("127.0.0.1", 3306));
    let mut heavier = inst("127.0.0.1", 3306);
    heavier.weight = 5.0;
    assert_eq!(
        apply(&mut store, cmd),
        (
            StoreResponse::done(true),
            vec![NamingEffect::InstanceUpserted {
                service: svc("db"),
                instance: heavier
            }]
        )
    );
}

#[test]
fn service_definitions_honour_post_and_put_existence_rules() {
    let mut store = Store::default();
    let change = ServiceChange {
        protect_threshold: Some(0.5),
        ..Default::default()
    };
    let put = NamingCommand::DefineService {
        service: svc("s"),
        change: change.clone(),
        must_exist: Some(true),
    };
    assert!(matches!(
        apply(&mut store, put.clone()).0,
        StoreResponse::Refused { code: 404, .. }
    ));
    let post = NamingCommand::DefineService {
        service: svc("s"),
        change,
        must_exist: Some(false),
    };
    let (r, e) = apply(&mut store, post.clone());
    assert_eq!(r, StoreResponse::done(true));
    assert_eq!(
        e,
        vec![NamingEffect::ServiceDefined {
            service: svc("s"),
            definition: Some(ServiceDefinition {
                protect_threshold: 0.5,
                metadata: BTreeMap::new(),
                selector: None
            })
        }]
    );
    assert!(matches!(
        apply(&mut store, post).0,
        StoreResponse::Refused { code: 400, .. }
    ));
    assert_eq!(apply(&mut store, put), (StoreResponse::done(false), vec![]));
}

#[test]
fn a_service_with_persistent_instances_cannot_be_deleted() {
    let mut store = Store::default();
    register(&mut store, "db", inst("127.0.0.1", 3306));
    let delete = NamingCommand::DeleteService { service: svc("db") };
    let (r, e) = apply(&mut store, delete);
    assert!(
        matches!(r, StoreResponse::Refused { code: 400, .. }),
        "{r:?}"
    );
    assert!(e.is_empty());
    assert_eq!(store.naming.instance_count(), 1);
}

#[test]
fn deleting_a_service_reports_its_definitions_gone() {
    let mut store = Store::default();
    let define = NamingCommand::DefineService {
        service: svc("s"),
        change: ServiceChange::default(),
        must_exist: None,
    };
    apply(&mut store, define);
    let cluster = NamingCommand::DefineCluster {
        service: svc("s"),
        cluster: "DEFAULT".into(),
        definition: ClusterDefinition::default(),
    };
    assert_eq!(apply(&mut store, cluster).0, StoreResponse::done(true));
    let (r, e) = apply(
        &mut store,
        NamingCommand::DeleteService { service: svc("s") },
    );
    assert_eq!(r, StoreResponse::done(true));
    assert_eq!(
        e,
        vec![
            NamingEffect::ClusterDefined {
                service: svc("s"),
                cluster: "DEFAULT".into(),
                definition: None
            },
            NamingEffect::ServiceDefined {
                service: svc("s"),
                definition: None
            }
        ]
    );
    assert!(store.is_empty());
}

#[test]
fn a_cluster_definition_may_come_before_any_instance() {
    let mut store = Store::default();
    let cluster = NamingCommand::DefineCluster {
        service: svc("later"),
        cluster: "DEFAULT".into(),
        definition: ClusterDefinition::default(),
    };
    assert_eq!(
        apply(&mut store, cluster.clone()).0,
        StoreResponse::done(true)
    );
    assert_eq!(
        apply(&mut store, cluster),
        (StoreResponse::done(false), vec![])
    );
    assert_eq!(store.len(), 1);
}

#[test]
fn replacing_the_store_reports_removals_before_upserts_and_nothing_for_what_stayed() {
    let mut store = Store::default();
    register(&mut store, "a", inst("127.0.0.1", 1));
    register(&mut store, "a", inst("127.0.0.1", 2));
    let mut next = Store::default();
    register(&mut next, "a", inst("127.0.0.1", 2));
    register(&mut next, "b", inst("127.0.0.1", 3));
    let mut effects = Vec::new();
    store.replace_with(next.clone(), &mut effects);
    assert_eq!(
        effects,
        vec![
            StoreEffect::Naming(NamingEffect::InstanceRemoved {
                service: svc("a"),
                instance: inst("127.0.0.1", 1)
            }),
            StoreEffect::Naming(NamingEffect::InstanceUpserted {
                service: svc("b"),
                instance: inst("127.0.0.1", 3)
            }),
        ]
    );
    assert_eq!(store, next);
    assert_eq!(store.naming.instance_count(), 2);
}

#[test]
fn a_decoded_space_recounts_its_instances() {
    let mut store = Store::default();
    register(&mut store, "a", inst("127.0.0.1", 1));
    let mut copy = store.clone();
    copy.naming.instance_count = 99;
    let mut fresh = Store::default();
    fresh.replace_with(copy, &mut Vec::new());
    assert_eq!(fresh.naming.instance_count(), 1);
}
