//! Registry behaviour end to end through a deterministic driver of 1, 2 and 4 shards.
#![allow(clippy::unwrap_used)]

extern crate nacelle_engine as engine;

mod harness;

use engine::model::{InstanceSpec, Interner};
use engine::shard::InstancePatch;
use engine::{ClientId, Instance, Metadata, OpError, OpOutcome, ServiceOp};
use harness::*;

/// Generates one test per shard count (1, 2, 4) from a `fn(usize)`.
macro_rules! per_shard_count {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn with_one_shard() {
                    super::$name(1)
                }
                #[test]
                fn with_two_shards() {
                    super::$name(2)
                }
                #[test]
                fn with_four_shards() {
                    super::$name(4)
                }
            }
        )*
    };
}

per_shard_count!(
    a_registered_instance_is_readable_through_the_index_from_every_shard,
    a_batch_registration_replaces_the_clients_previous_publish,
    re_registering_an_identical_instance_changes_nothing_and_pushes_nothing,
    several_changes_within_the_push_delay_make_one_push_of_the_latest_view_per_subscriber,
    a_push_carries_the_full_view_and_the_subscribers_cluster_filter,
    deregistering_the_last_instance_removes_the_service_from_the_index,
    deregistering_from_a_batch_removes_only_the_matching_instance,
    a_single_instance_publish_is_withdrawn_whatever_address_the_deregister_names,
    disconnect_removes_every_instance_and_subscription_of_the_client,
    a_heartbeat_instance_turns_unhealthy_after_its_timeout_and_is_removed_after_its_delete_timeout,
    a_process_that_did_not_run_counts_no_silence_across_the_gap,
    preserved_metadata_keys_set_each_instances_own_timeouts,
    a_beat_restores_health_and_keeps_the_instance_alive,
    a_beat_of_an_unknown_instance_is_not_found_unless_it_carries_the_instance_to_reregister,
    the_protect_threshold_answers_every_instance_when_too_few_are_healthy,
    healthy_only_queries_never_reach_a_protect_threshold_below_one,
    the_protect_threshold_counts_only_enabled_instances_of_the_selected_clusters,
    the_cluster_filter_selects_only_the_named_clusters,
    service_configure_and_delete_follow_the_nacos_rules,
    an_explicitly_created_service_outlives_its_instances_until_deleted,
    a_subscriber_only_service_exists_while_subscribed,
    an_update_patches_the_instance_and_an_identical_patch_changes_nothing,
    stats_counters_match_the_published_views,
    client_messages_sent_to_a_non_owner_shard_are_refused,
    writes_to_services_spread_over_every_shard_are_all_published,
    one_subscriber_leaving_pushes_nothing_to_the_others,
    the_configured_limits_refuse_oversized_requests,
);

/// The checks every test ends with: routing was right and counters agree with the views.
fn check(sim: &Sim) {
    assert!(
        sim.misroutes.is_empty(),
        "misrouted sends: {:#?}",
        sim.misroutes
    );
    let dir = sim.directory();
    let t = sim.totals();
    assert_eq!(
        t.instances,
        dir.values().sum::<usize>() as i64,
        "stats.instances vs views {dir:?}"
    );
    assert_eq!(
        t.services,
        dir.len() as i64,
        "stats.services vs directory {dir:?}"
    );
    assert_eq!(
        t.clients,
        sim.client_count() as i64,
        "stats.clients vs client_count"
    );
}

fn healthy(v: &[(String, u16, String, bool)]) -> Vec<bool> {
    v.iter().map(|i| i.3).collect()
}

fn addr(ip: &str, port: u16) -> (String, u16, String, bool) {
    (ip.into(), port, "DEFAULT".into(), true)
}

fn inst_full(ip: &str, port: u16, cluster: &str, healthy: bool, enabled: bool) -> Instance {
    InstanceSpec {
        cluster: Some(cluster.into()),
        healthy: Some(healthy),
        enabled: Some(enabled),
        ..spec(ip, port)
    }
    .build(&mut Interner::default())
    .unwrap()
}

fn a_registered_instance_is_readable_through_the_index_from_every_shard(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("orders");
    let c = ClientId::Conn(7);
    assert_eq!(
        sim.register(&c, &s, inst("10.0.0.1", 8080)),
        Ok(OpOutcome::Changed)
    );
    for via in 0..n {
        let view = sim.view_via(via, &s).expect("visible from every shard");
        assert_eq!(view.instance_count, 1);
        let i = view.instances().next().unwrap();
        assert_eq!(
            (i.host.to_string(), i.port, &*i.cluster),
            ("10.0.0.1".to_string(), 8080, "DEFAULT")
        );
        assert!(view.revision > 0);
        assert!(
            view.last_ref_ms >= UNIX_ORIGIN_MS,
            "lastRefTime is the wall clock of the change"
        );
    }
    // Nacos clients drop a ServiceInfo whose lastRefTime went backwards: it never does.
    let before = sim.view(&s).unwrap().last_ref_ms;
    sim.register(&c, &s, inst("10.0.0.1", 8081)).unwrap();
    assert!(sim.view(&s).unwrap().last_ref_ms >= before);
    assert!(sim.view(&svc("other")).is_none());
    // Read through the closure API too.
    assert_eq!(sim.index.read(&s, |v| v.map(|v| v.instance_count)), Some(1));
    assert_eq!(
        sim.index
            .read(&svc("missing"), |v| v.map(|v| v.instance_count)),
        None
    );
    let t = sim.totals();
    assert_eq!((t.instances, t.services, t.clients), (1, 1, 1));
    check(&sim);
}

fn a_batch_registration_replaces_the_clients_previous_publish(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("batch");
    let c = ClientId::Conn(1);
    let other = ClientId::Conn(2);
    sim.register(&other, &s, inst("10.9.9.9", 1)).unwrap();
    sim.register(&c, &s, inst("10.0.0.1", 80)).unwrap();
    assert_eq!(
        sim.batch(&c, &s, vec![inst("10.0.0.2", 80), inst("10.0.0.3", 80)]),
        Ok(OpOutcome::Changed)
    );
    assert_eq!(
        sim.instances(&s),
        vec![
            addr("10.0.0.2", 80),
            addr("10.0.0.3", 80),
            addr("10.9.9.9", 1)
        ]
    );
    assert_eq!(
        sim.batch(&c, &s, vec![inst("10.0.0.4", 80)]),
        Ok(OpOutcome::Changed)
    );
    assert_eq!(
        sim.instances(&s),
        vec![addr("10.0.0.4", 80), addr("10.9.9.9", 1)]
    );
    // A single registration replaces a batch as well.
    sim.batch(&c, &s, vec![inst("10.0.0.5", 80), inst("10.0.0.6", 80)])
        .unwrap();
    sim.register(&c, &s, inst("10.0.0.7", 80)).unwrap();
    assert_eq!(
        sim.instances(&s),
        vec![addr("10.0.0.7", 80), addr("10.9.9.9", 1)]
    );
    assert!(matches!(
        sim.batch(&c, &s, vec![]),
        Err(OpError::Invalid(_))
    ));
    assert_eq!(
        sim.instances(&s),
        vec![addr("10.0.0.7", 80), addr("10.9.9.9", 1)]
    );
    assert_eq!(sim.totals().instances, 2);
    check(&sim);
}

fn re_registering_an_identical_instance_changes_nothing_and_pushes_nothing(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("idem");
    let c = ClientId::Conn(3);
    sim.subscribe(10, &s, "").unwrap();
    sim.register(&c, &s, inst("10.0.0.1", 80)).unwrap();
    sim.advance(1_000);
    assert_eq!(sim.take_pushes().len(), 1);
    let rev = sim.view(&s).unwrap().revision;
    assert_eq!(
        sim.register(&c, &s, inst("10.0.0.1", 80)),
        Ok(OpOutcome::Unchanged)
    );
    assert_eq!(
        sim.batch(&c, &s, vec![inst("10.0.0.1", 80)]),
        Ok(OpOutcome::Unchanged)
    );
    sim.advance(1_000);
    assert!(sim.take_pushes().is_empty());
    assert_eq!(sim.view(&s).unwrap().revision, rev);
    // A real change does push.
    sim.register(&c, &s, inst("10.0.0.1", 81)).unwrap();
    sim.advance(1_000);
    assert_eq!(sim.take_pushes().len(), 1);
    check(&sim);
}

fn several_changes_within_the_push_delay_make_one_push_of_the_latest_view_per_subscriber(n: usize) {
    let mut sim = Sim::new(n);
    let delay = sim.cfg.push_delay_ms;
    let s = svc("merge");
    sim.subscribe(100, &s, "").unwrap();
    sim.subscribe(101, &s, "").unwrap();
    let (a, b) = (ClientId::Conn(1), ClientId::Conn(2));
    let t0 = sim.now.mono_ms;
    sim.register(&a, &s, inst("10.0.0.1", 80)).unwrap();
    sim.advance(delay / 5);
    sim.register(&b, &s, inst("10.0.0.2", 80)).unwrap();
    sim.advance(delay / 5);
    sim.deregister(&a, &s, "10.0.0.1", 80, "DEFAULT").unwrap();
    sim.advance(delay / 5);
    sim.register(&b, &s, inst("10.0.0.3", 80)).unwrap();
    assert!(
        sim.pushes.is_empty(),
        "nothing is pushed before the merge delay"
    );
    sim.advance(delay * 10);
    let pushes = sim.take_pushes();
    let mut subs: Vec<u64> = pushes.iter().map(|p| p.subscriber).collect();
    subs.sort_unstable();
    assert_eq!(subs, vec![100, 101], "one push per subscriber: {pushes:?}");
    let current = sim.view(&s).unwrap();
    for p in &pushes {
        assert_eq!(
            p.at_ms,
            t0 + delay,
            "pushed one merge delay after the first change"
        );
        assert_eq!(p.view.revision, current.revision, "the latest view");
        let got: Vec<_> = p.view.instances().map(|i| i.host.to_string()).collect();
        assert_eq!(got, vec!["10.0.0.3"]);
    }
    assert_eq!(sim.totals().pushes, 2);
    // The next change after the push starts a new merge window.
    sim.register(&a, &s, inst("10.0.0.4", 80)).unwrap();
    sim.advance(delay - 1);
    assert!(sim.pushes.is_empty());
    sim.advance(1);
    assert_eq!(sim.take_pushes().len(), 2);
    check(&sim);
}

fn a_push_carries_the_full_view_and_the_subscribers_cluster_filter(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("full");
    sim.subscribe(55, &s, "A,B").unwrap();
    sim.batch(
        &ClientId::Conn(1),
        &s,
        vec![inst_in("10.0.0.1", 80, "A"), inst_in("10.0.0.2", 80, "C")],
    )
    .unwrap();
    sim.register(&ClientId::Conn(2), &s, inst("10.0.0.3", 80))
        .unwrap();
    sim.advance(1_000);
    let pushes = sim.take_pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].subscriber, 55);
    assert_eq!(pushes[0].clusters, "A,B");
    assert_eq!(
        pushes[0].view.instance_count, 3,
        "the full view; the driver applies the filter"
    );
    // Re-subscribing with another filter changes the filter of later pushes.
    sim.subscribe(55, &s, "C").unwrap();
    assert_eq!(sim.totals().subscriptions, 1);
    sim.register(&ClientId::Conn(2), &s, inst("10.0.0.4", 80))
        .unwrap();
    sim.advance(1_000);
    let pushes = sim.take_pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].clusters, "C");
    check(&sim);
}

fn deregistering_the_last_instance_removes_the_service_from_the_index(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("gone");
    let c = ClientId::Conn(5);
    sim.register(&c, &s, inst("10.0.0.1", 80)).unwrap();
    assert_eq!(
        sim.deregister(&c, &s, "10.0.0.1", 80, "DEFAULT"),
        Ok(OpOutcome::Changed)
    );
    assert!(sim.view(&s).is_none());
    for via in 0..n {
        assert!(sim.view_via(via, &s).is_none());
    }
    assert_eq!(sim.totals(), Totals::default());
    assert_eq!(sim.client_count(), 0);
    assert_eq!(
        sim.deregister(&c, &s, "10.0.0.1", 80, "DEFAULT"),
        Ok(OpOutcome::Unchanged)
    );
    assert_eq!(
        sim.deregister(&ClientId::Conn(6), &svc("never"), "10.0.0.1", 80, "DEFAULT"),
        Ok(OpOutcome::Unchanged)
    );
    assert!(sim.directory().is_empty());
    check(&sim);
}

fn deregistering_from_a_batch_removes_only_the_matching_instance(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("batch-dereg");
    let c = ClientId::Conn(9);
    sim.batch(
        &c,
        &s,
        vec![
            inst("10.0.0.1", 80),
            inst("10.0.0.2", 80),
            inst_in("10.0.0.2", 80, "X"),
        ],
    )
    .unwrap();
    assert_eq!(
        sim.deregister(&c, &s, "10.0.0.2", 80, "DEFAULT"),
        Ok(OpOutcome::Changed)
    );
    assert_eq!(
        sim.instances(&s),
        vec![
            addr("10.0.0.1", 80),
            ("10.0.0.2".into(), 80, "X".into(), true)
        ]
    );
    assert_eq!(
        sim.deregister(&c, &s, "10.0.0.9", 80, "DEFAULT"),
        Ok(OpOutcome::Unchanged)
    );
    assert_eq!(sim.totals().instances, 2);
    check(&sim);
}

fn a_single_instance_publish_is_withdrawn_whatever_address_the_deregister_names(n: usize) {
    // Nacos keeps one publish per client and service; deregister removes it (as
    // EphemeralClientOperationServiceImpl.deregisterInstance does).
    let mut sim = Sim::new(n);
    let s = svc("one-publish");
    let c = ClientId::Conn(11);
    sim.register(&c, &s, inst_in("10.0.0.1", 80, "A")).unwrap();
    assert_eq!(
        sim.deregister(&c, &s, "10.0.0.1", 80, "B"),
        Ok(OpOutcome::Changed)
    );
    assert!(sim.view(&s).is_none());
    check(&sim);
}

fn disconnect_removes_every_instance_and_subscription_of_the_client(n: usize) {
    let mut sim = Sim::new(n);
    let c = ClientId::Conn(21);
    let other = ClientId::Conn(22);
    let (s1, s2, s3, s4) = (svc("d1"), svc("d2"), svc("d3"), svc("d4"));
    sim.register(&c, &s1, inst("10.0.0.1", 80)).unwrap();
    sim.batch(&c, &s2, vec![inst("10.0.0.1", 81), inst("10.0.0.1", 82)])
        .unwrap();
    sim.register(&c, &s3, inst("10.0.0.1", 83)).unwrap();
    sim.register(&other, &s3, inst("10.0.0.2", 83)).unwrap();
    sim.subscribe(21, &s3, "").unwrap();
    sim.subscribe(21, &s4, "").unwrap();
    sim.subscribe(22, &s4, "").unwrap();
    let t = sim.totals();
    assert_eq!(
        (t.instances, t.services, t.clients, t.subscriptions),
        (5, 4, 2, 3)
    );
    assert_eq!(sim.disconnect(&c), Ok(OpOutcome::Changed));
    assert!(sim.view(&s1).is_none());
    assert!(sim.view(&s2).is_none());
    assert_eq!(sim.instances(&s3), vec![addr("10.0.0.2", 83)]);
    assert_eq!(
        sim.view(&s4).unwrap().instance_count,
        0,
        "still subscribed by the other client"
    );
    let t = sim.totals();
    assert_eq!(
        (t.instances, t.services, t.clients, t.subscriptions),
        (1, 2, 1, 1)
    );
    assert_eq!(sim.disconnect(&c), Ok(OpOutcome::Unchanged));
    assert_eq!(sim.disconnect(&other), Ok(OpOutcome::Changed));
    assert!(sim.directory().is_empty());
    assert_eq!(sim.totals(), Totals::default());
    check(&sim);
}

fn a_heartbeat_instance_turns_unhealthy_after_its_timeout_and_is_removed_after_its_delete_timeout(
    n: usize,
) {
    let mut sim = Sim::new(n);
    let s = svc("beats");
    let i = inst("10.0.0.1", 8080);
    let c = http_client(&i);
    sim.subscribe(77, &s, "").unwrap();
    sim.register(&c, &s, i.clone()).unwrap();
    sim.advance(1_000);
    sim.take_pushes();
    // Defaults: unhealthy when silent for more than 15 s, removed after more than 30 s; the
    // check runs every beat_check_interval_ms (1 s).
    sim.advance(14_000);
    assert_eq!(healthy(&sim.instances(&s)), vec![true]);
    sim.advance(1_000);
    assert_eq!(healthy(&sim.instances(&s)), vec![false]);
    assert_eq!(sim.totals().unhealthy_marks, 1);
    sim.advance(100);
    let pushes = sim.take_pushes();
    assert_eq!(pushes.len(), 1, "the health change is pushed");
    assert!(!pushes[0].view.instances().next().unwrap().healthy);
    sim.advance(13_900);
    assert_eq!(
        sim.instances(&s).len(),
        1,
        "not yet past the delete timeout"
    );
    assert_eq!(sim.totals().unhealthy_marks, 1, "marked once");
    sim.advance(1_000);
    assert!(sim.instances(&s).is_empty());
    let t = sim.totals();
    assert_eq!(
        (t.expired_instances, t.instances, t.clients),
        (1, 0, 1),
        "only the subscriber client is left"
    );
    assert_eq!(
        sim.view(&s).unwrap().instance_count,
        0,
        "kept for its subscriber"
    );
    sim.advance(100);
    assert_eq!(sim.take_pushes().len(), 1, "the removal is pushed");
    sim.unsubscribe(77, &s).unwrap();
    assert!(sim.view(&s).is_none());
    assert_eq!(sim.totals().clients, 0);
    check(&sim);
}

fn a_process_that_did_not_run_counts_no_silence_across_the_gap(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("paused");
    let i = inst("10.0.0.1", 8080);
    let c = http_client(&i);
    sim.register(&c, &s, i.clone()).unwrap();
    sim.advance(10_000);
    // Stopped for 40 s (beyond the 30 s delete timeout), then the overdue check runs: the
    // client's beats went elsewhere or wait unread, so only the 10 s we ran count.
    sim.stall(40_000);
    sim.advance(1);
    assert_eq!(
        healthy(&sim.instances(&s)),
        vec![true],
        "kept across the gap"
    );
    sim.advance(4_000);
    assert_eq!(
        healthy(&sim.instances(&s)),
        vec![true],
        "silent 14 s of running time"
    );
    sim.advance(2_000);
    assert_eq!(
        healthy(&sim.instances(&s)),
        vec![false],
        "silent 16 s: unhealthy"
    );
    sim.advance(15_000);
    assert!(sim.instances(&s).is_empty(), "silent 31 s: removed");
    assert_eq!(sim.totals().expired_instances, 1);
    check(&sim);
}

fn preserved_metadata_keys_set_each_instances_own_timeouts(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("timing");
    let fast = inst_with_meta(
        "10.0.0.1",
        80,
        &[
            ("preserved.heart.beat.interval", "1000"),
            ("preserved.heart.beat.timeout", "3000"),
            ("preserved.ip.delete.timeout", "6000"),
        ],
    );
    assert_eq!(fast.timing().interval_ms, 1000);
    let slow = inst("10.0.0.2", 80);
    sim.register(&http_client(&fast), &s, fast.clone()).unwrap();
    sim.register(&http_client(&slow), &s, slow.clone()).unwrap();
    assert_eq!(
        sim.beat(&s, &fast, false),
        Ok(OpOutcome::Beat { interval_ms: 1000 })
    );
    assert_eq!(
        sim.beat(&s, &slow, false),
        Ok(OpOutcome::Beat { interval_ms: 5000 })
    );
    sim.advance(3_000);
    assert_eq!(healthy(&sim.instances(&s)), vec![true, true]);
    sim.advance(1_000);
    assert_eq!(healthy(&sim.instances(&s)), vec![false, true]);
    sim.advance(2_000);
    assert_eq!(sim.instances(&s).len(), 2);
    sim.advance(1_000);
    assert_eq!(sim.instances(&s), vec![addr("10.0.0.2", 80)]);
    check(&sim);
}

fn a_beat_restores_health_and_keeps_the_instance_alive(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("revive");
    let i = inst("10.0.0.1", 80);
    sim.register(&http_client(&i), &s, i.clone()).unwrap();
    sim.advance(16_000);
    assert_eq!(healthy(&sim.instances(&s)), vec![false]);
    let rev = sim.view(&s).unwrap().revision;
    assert_eq!(
        sim.beat(&s, &i, false),
        Ok(OpOutcome::Beat { interval_ms: 5000 })
    );
    assert_eq!(healthy(&sim.instances(&s)), vec![true]);
    assert!(sim.view(&s).unwrap().revision > rev);
    // Beating every 5 s keeps it healthy for a long time, with no further view change.
    let rev = sim.view(&s).unwrap().revision;
    for _ in 0..20 {
        sim.advance(5_000);
        assert_eq!(
            sim.beat(&s, &i, false),
            Ok(OpOutcome::Beat { interval_ms: 5000 })
        );
    }
    assert_eq!(healthy(&sim.instances(&s)), vec![true]);
    assert_eq!(
        sim.view(&s).unwrap().revision,
        rev,
        "healthy beats change nothing"
    );
    // A re-registration counts as a beat, too.
    sim.advance(10_000);
    assert_eq!(
        sim.register(&http_client(&i), &s, i.clone()),
        Ok(OpOutcome::Unchanged)
    );
    sim.advance(10_000);
    assert_eq!(healthy(&sim.instances(&s)), vec![true]);
    check(&sim);
}

fn a_beat_of_an_unknown_instance_is_not_found_unless_it_carries_the_instance_to_reregister(
    n: usize,
) {
    let mut sim = Sim::new(n);
    let s = svc("lost");
    let i = inst("10.0.0.1", 80);
    assert!(matches!(sim.beat(&s, &i, false), Err(OpError::NotFound(_))));
    assert!(sim.view(&s).is_none());
    assert_eq!(
        sim.client_count(),
        0,
        "a refused beat leaves no client behind"
    );
    assert_eq!(
        sim.beat(&s, &i, true),
        Ok(OpOutcome::Beat { interval_ms: 5000 })
    );
    assert_eq!(sim.instances(&s), vec![addr("10.0.0.1", 80)]);
    // A beat naming another cluster does not match the registered instance.
    let other_cluster = inst_in("10.0.0.1", 80, "X");
    assert!(matches!(
        sim.beat(&s, &other_cluster, false),
        Err(OpError::NotFound(_))
    ));
    // After expiry it is unknown again.
    sim.advance(31_000);
    assert!(sim.view(&s).is_none());
    assert!(matches!(sim.beat(&s, &i, false), Err(OpError::NotFound(_))));
    check(&sim);
}

fn protect_service(
    sim: &mut Sim,
    name: &str,
    threshold: f32,
    instances: Vec<Instance>,
) -> engine::ServiceKey {
    let s = svc(name);
    let r = sim.service(
        &s,
        ServiceOp::Configure {
            protect_threshold: Some(threshold),
            metadata: None,
            must_exist: Some(false),
        },
    );
    assert_eq!(r, Ok(OpOutcome::Changed));
    if !instances.is_empty() {
        sim.batch(&ClientId::Conn(1), &s, instances).unwrap();
    }
    s
}

fn the_protect_threshold_answers_every_instance_when_too_few_are_healthy(n: usize) {
    let mut sim = Sim::new(n);
    let quarter = protect_service(
        &mut sim,
        "quarter",
        0.5,
        vec![
            inst_full("10.0.0.1", 80, "DEFAULT", true, true),
            inst_full("10.0.0.2", 80, "DEFAULT", false, true),
            inst_full("10.0.0.3", 80, "DEFAULT", false, true),
            inst_full("10.0.0.4", 80, "DEFAULT", false, true),
        ],
    );
    let v = sim.view(&quarter).unwrap();
    assert_eq!(v.protect_threshold, 0.5);
    let sel = v.select(&[], false, true);
    assert_eq!(sel.instances.len(), 4);
    assert!(sel.reach_protection, "1/4 healthy <= 0.5");
    // Exactly at the threshold still trips it (<=).
    let half = protect_service(
        &mut sim,
        "half",
        0.5,
        vec![
            inst_full("10.0.0.1", 80, "DEFAULT", true, true),
            inst_full("10.0.0.2", 80, "DEFAULT", false, true),
        ],
    );
    assert!(
        sim.view(&half)
            .unwrap()
            .select(&[], false, true)
            .reach_protection
    );
    let mostly = protect_service(
        &mut sim,
        "mostly",
        0.5,
        vec![
            inst_full("10.0.0.1", 80, "DEFAULT", true, true),
            inst_full("10.0.0.2", 80, "DEFAULT", true, true),
            inst_full("10.0.0.3", 80, "DEFAULT", false, true),
        ],
    );
    assert!(
        !sim.view(&mostly)
            .unwrap()
            .select(&[], false, true)
            .reach_protection
    );
    // Default threshold 0: trips only when no selected instance is healthy.
    let s0 = svc("zero");
    sim.batch(
        &ClientId::Conn(2),
        &s0,
        vec![
            inst_full("10.0.0.1", 80, "DEFAULT", false, true),
            inst_full("10.0.0.2", 80, "DEFAULT", false, true),
        ],
    )
    .unwrap();
    let v0 = sim.view(&s0).unwrap();
    assert_eq!(v0.protect_threshold, 0.0);
    assert!(v0.select(&[], false, true).reach_protection);
    sim.batch(
        &ClientId::Conn(2),
        &s0,
        vec![
            inst_full("10.0.0.1", 80, "DEFAULT", true, true),
            inst_full("10.0.0.2", 80, "DEFAULT", false, true),
        ],
    )
    .unwrap();
    assert!(
        !sim.view(&s0)
            .unwrap()
            .select(&[], false, true)
            .reach_protection
    );
    // An empty selection never trips it.
    let empty = protect_service(&mut sim, "empty", 1.0, vec![]);
    let v = sim.view(&empty).unwrap();
    let sel = v.select(&[], false, true);
    assert!(sel.instances.is_empty() && !sel.reach_protection);
    check(&sim);
}

fn healthy_only_queries_never_reach_a_protect_threshold_below_one(n: usize) {
    let mut sim = Sim::new(n);
    let mixed = vec![
        inst_full("10.0.0.1", 80, "DEFAULT", true, true),
        inst_full("10.0.0.2", 80, "DEFAULT", false, true),
        inst_full("10.0.0.3", 80, "DEFAULT", false, true),
    ];
    let s = protect_service(&mut sim, "ho", 0.99, mixed.clone());
    let v = sim.view(&s).unwrap();
    let sel = v.select(&[], true, true);
    assert_eq!(sel.instances.len(), 1);
    assert!(sel.instances[0].healthy);
    assert!(!sel.reach_protection);
    assert!(v.select(&[], false, true).reach_protection);
    // All unhealthy and healthyOnly: nothing selected, no protection.
    let s_dead = protect_service(
        &mut sim,
        "dead",
        0.5,
        vec![inst_full("10.0.0.1", 80, "DEFAULT", false, true)],
    );
    let v = sim.view(&s_dead).unwrap();
    let sel = v.select(&[], true, true);
    assert!(sel.instances.is_empty() && !sel.reach_protection);
    // Threshold 1: the ratio over the healthy-only result is 1 <= 1.
    let s_one = protect_service(&mut sim, "one", 1.0, mixed);
    let v = sim.view(&s_one).unwrap();
    let sel = v.select(&[], true, true);
    assert_eq!(sel.instances.len(), 1);
    assert!(sel.reach_protection);
    check(&sim);
}

fn the_protect_threshold_counts_only_enabled_instances_of_the_selected_clusters(n: usize) {
    let mut sim = Sim::new(n);
    let s = protect_service(
        &mut sim,
        "scoped",
        0.5,
        vec![
            inst_full("10.0.0.1", 80, "A", true, false),
            inst_full("10.0.0.2", 80, "A", true, false),
            inst_full("10.0.0.3", 80, "A", false, true),
            inst_full("10.0.0.4", 80, "B", true, true),
            inst_full("10.0.0.5", 80, "B", true, true),
        ],
    );
    let v = sim.view(&s).unwrap();
    // Enabled only in A: 0 of 1 healthy -> protection.
    let sel = v.select(&["A"], false, true);
    assert_eq!(sel.instances.len(), 1);
    assert!(sel.reach_protection);
    // Disabled included in A: 2 of 3 healthy -> none.
    let sel = v.select(&["A"], false, false);
    assert_eq!(sel.instances.len(), 3);
    assert!(!sel.reach_protection);
    // B alone is healthy.
    assert!(!v.select(&["B"], false, true).reach_protection);
    // Everything enabled: 2 of 3 healthy.
    let sel = v.select(&[], false, true);
    assert_eq!(sel.instances.len(), 3);
    assert!(!sel.reach_protection);
    check(&sim);
}

fn the_cluster_filter_selects_only_the_named_clusters(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("clusters");
    sim.batch(
        &ClientId::Conn(4),
        &s,
        vec![
            inst_in("10.0.0.1", 80, "A"),
            inst_in("10.0.0.2", 80, "B"),
            inst("10.0.0.3", 80),
        ],
    )
    .unwrap();
    sim.register(&ClientId::Conn(5), &s, inst_in("10.0.0.4", 80, "A"))
        .unwrap();
    let v = sim.view(&s).unwrap();
    let hosts = |clusters: &[&str]| {
        let mut h: Vec<String> = v
            .select(clusters, false, true)
            .instances
            .iter()
            .map(|i| i.host.to_string())
            .collect();
        h.sort();
        h
    };
    assert_eq!(hosts(&["A"]), vec!["10.0.0.1", "10.0.0.4"]);
    assert_eq!(hosts(&["A", "B"]), vec!["10.0.0.1", "10.0.0.2", "10.0.0.4"]);
    assert_eq!(hosts(&["DEFAULT"]), vec!["10.0.0.3"]);
    assert_eq!(hosts(&[]).len(), 4);
    assert!(hosts(&["nope"]).is_empty());
    check(&sim);
}

fn service_configure_and_delete_follow_the_nacos_rules(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("managed");
    let put = |t: f32| ServiceOp::Configure {
        protect_threshold: Some(t),
        metadata: None,
        must_exist: Some(true),
    };
    let post = |t: f32| ServiceOp::Configure {
        protect_threshold: Some(t),
        metadata: None,
        must_exist: Some(false),
    };
    assert!(
        matches!(sim.service(&s, put(0.1)), Err(OpError::NotFound(_))),
        "PUT of an absent service"
    );
    assert!(sim.view(&s).is_none());
    assert!(
        matches!(sim.service(&s, post(1.5)), Err(OpError::Invalid(_))),
        "threshold above 1"
    );
    assert!(
        matches!(sim.service(&s, post(-0.1)), Err(OpError::Invalid(_))),
        "threshold below 0"
    );
    assert!(
        matches!(sim.service(&s, post(f32::NAN)), Err(OpError::Invalid(_))),
        "threshold NaN"
    );
    assert!(sim.view(&s).is_none(), "refused configures create nothing");
    assert_eq!(sim.totals().services, 0);
    let meta = Metadata::from_pairs([("team", "core")]).unwrap();
    let r = sim.service(
        &s,
        ServiceOp::Configure {
            protect_threshold: Some(0.3),
            metadata: Some(meta.clone()),
            must_exist: Some(false),
        },
    );
    assert_eq!(r, Ok(OpOutcome::Changed));
    let v = sim.view(&s).unwrap();
    assert_eq!(
        (v.protect_threshold, v.instance_count, v.metadata.json()),
        (0.3, 0, r#"{"team":"core"}"#)
    );
    assert!(
        matches!(sim.service(&s, post(0.2)), Err(OpError::Conflict(_))),
        "POST of an existing service"
    );
    assert_eq!(sim.service(&s, put(0.7)), Ok(OpOutcome::Changed));
    let v = sim.view(&s).unwrap();
    assert_eq!(v.protect_threshold, 0.7);
    assert_eq!(v.metadata, meta, "metadata kept when not given");
    // Upsert (no must_exist) works either way.
    let upsert = ServiceOp::Configure {
        protect_threshold: None,
        metadata: None,
        must_exist: None,
    };
    assert_eq!(
        sim.service(&svc("upserted"), upsert.clone()),
        Ok(OpOutcome::Changed)
    );
    assert_eq!(
        sim.service(&svc("upserted"), upsert),
        Ok(OpOutcome::Changed)
    );
    // A service that exists only through its instances conflicts with POST but accepts PUT.
    let implicit = svc("implicit");
    sim.register(&ClientId::Conn(1), &implicit, inst("10.0.0.1", 80))
        .unwrap();
    assert!(matches!(
        sim.service(&implicit, post(0.2)),
        Err(OpError::Conflict(_))
    ));
    assert_eq!(sim.service(&implicit, put(0.4)), Ok(OpOutcome::Changed));
    assert_eq!(sim.view(&implicit).unwrap().protect_threshold, 0.4);
    assert_eq!(
        sim.view(&implicit).unwrap().instance_count,
        1,
        "configure keeps the instances"
    );
    // Delete rules.
    assert!(
        matches!(
            sim.service(&implicit, ServiceOp::Delete),
            Err(OpError::Conflict(_))
        ),
        "has instances"
    );
    assert!(matches!(
        sim.service(&svc("absent"), ServiceOp::Delete),
        Err(OpError::NotFound(_))
    ));
    assert_eq!(sim.service(&s, ServiceOp::Delete), Ok(OpOutcome::Changed));
    assert!(sim.view(&s).is_none(), "a deleted empty service is gone");
    assert!(matches!(
        sim.service(&s, ServiceOp::Delete),
        Err(OpError::NotFound(_))
    ));
    check(&sim);
}

fn an_explicitly_created_service_outlives_its_instances_until_deleted(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("explicit");
    sim.service(
        &s,
        ServiceOp::Configure {
            protect_threshold: None,
            metadata: None,
            must_exist: Some(false),
        },
    )
    .unwrap();
    let c = ClientId::Conn(3);
    sim.register(&c, &s, inst("10.0.0.1", 80)).unwrap();
    sim.deregister(&c, &s, "10.0.0.1", 80, "DEFAULT").unwrap();
    let v = sim
        .view(&s)
        .expect("explicit services survive having no instances");
    assert_eq!(v.instance_count, 0);
    assert_eq!(sim.totals().services, 1);
    sim.service(&s, ServiceOp::Delete).unwrap();
    assert!(sim.view(&s).is_none());
    // Deleting a subscribed service keeps it for the subscriber until it leaves.
    sim.service(
        &s,
        ServiceOp::Configure {
            protect_threshold: None,
            metadata: None,
            must_exist: Some(false),
        },
    )
    .unwrap();
    sim.subscribe(8, &s, "").unwrap();
    sim.service(&s, ServiceOp::Delete).unwrap();
    assert!(sim.view(&s).is_some());
    sim.unsubscribe(8, &s).unwrap();
    assert!(sim.view(&s).is_none());
    check(&sim);
}

fn a_subscriber_only_service_exists_while_subscribed(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("watched");
    assert_eq!(sim.subscribe(12, &s, ""), Ok(OpOutcome::Changed));
    let v = sim
        .view(&s)
        .expect("the empty view of a subscribed service is published");
    assert_eq!(v.instance_count, 0);
    let t = sim.totals();
    assert_eq!((t.services, t.subscriptions, t.clients), (1, 1, 1));
    assert_eq!(sim.unsubscribe(12, &s), Ok(OpOutcome::Changed));
    assert_eq!(sim.unsubscribe(12, &s), Ok(OpOutcome::Unchanged));
    assert!(sim.view(&s).is_none());
    assert_eq!(sim.totals(), Totals::default());
    check(&sim);
}

fn an_update_patches_the_instance_and_an_identical_patch_changes_nothing(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("patch");
    let c = ClientId::Conn(6);
    let i = inst("10.0.0.1", 80);
    sim.register(&c, &s, i.clone()).unwrap();
    let patch = InstancePatch {
        weight: Some(3.0),
        enabled: Some(false),
        ..InstancePatch::default()
    };
    assert_eq!(
        sim.update(&c, &s, &i, patch.clone()),
        Ok(OpOutcome::Changed)
    );
    let v = sim.view(&s).unwrap();
    let got = v.instances().next().unwrap();
    assert_eq!((got.weight, got.enabled), (3.0, false));
    assert_eq!(sim.update(&c, &s, &i, patch), Ok(OpOutcome::Unchanged));
    let bad = InstancePatch {
        metadata: Some(Metadata::from_pairs([("preserved.heart.beat.timeout", "10")]).unwrap()),
        ..InstancePatch::default()
    };
    assert!(
        matches!(sim.update(&c, &s, &i, bad), Err(OpError::Invalid(_))),
        "timeout below the interval"
    );
    assert!(matches!(
        sim.update(&c, &s, &inst("10.0.0.9", 80), InstancePatch::default()),
        Err(OpError::NotFound(_))
    ));
    assert!(matches!(
        sim.update(&ClientId::Conn(99), &s, &i, InstancePatch::default()),
        Err(OpError::NotFound(_))
    ));
    check(&sim);
}

fn stats_counters_match_the_published_views(n: usize) {
    let mut sim = Sim::new(n);
    let services: Vec<_> = (0..6).map(|k| svc(&format!("stat-{k}"))).collect();
    for (k, s) in services.iter().enumerate() {
        let c = ClientId::Conn(k as u64);
        let batch: Vec<_> = (0..=k as u16).map(|p| inst("10.1.0.1", 1000 + p)).collect();
        sim.batch(&c, s, batch).unwrap();
        sim.subscribe(100 + k as u64, s, "").unwrap();
        check(&sim);
    }
    let t = sim.totals();
    assert_eq!(
        (t.instances, t.services, t.clients, t.subscriptions),
        (21, 6, 12, 6)
    );
    for k in 0..3 {
        sim.disconnect(&ClientId::Conn(k)).unwrap();
        check(&sim);
    }
    let t = sim.totals();
    assert_eq!(
        (t.instances, t.services, t.clients, t.subscriptions),
        (15, 6, 9, 6)
    );
    for k in 0..3 {
        sim.disconnect(&ClientId::Conn(100 + k)).unwrap();
    }
    let t = sim.totals();
    assert_eq!(
        (t.instances, t.services, t.clients, t.subscriptions),
        (15, 3, 6, 3)
    );
    // Heartbeat clients count as clients too.
    let h = inst("10.2.0.1", 80);
    sim.register(&http_client(&h), &services[0], h.clone())
        .unwrap();
    assert_eq!(sim.totals().clients, 7);
    sim.advance(31_000);
    let t = sim.totals();
    assert_eq!(
        (t.instances, t.services, t.clients, t.expired_instances),
        (15, 3, 6, 1)
    );
    check(&sim);
}

fn client_messages_sent_to_a_non_owner_shard_are_refused(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("misrouted");
    let c = ClientId::Conn(40);
    let owner = sim.client_owner(&c);
    for wrong in (0..n).filter(|&w| w != owner) {
        let r = sim.client_on(
            wrong,
            &c,
            engine::ClientOp::Register {
                service: s.clone(),
                instance: inst("10.0.0.1", 80),
            },
        );
        assert!(
            matches!(r, Err(OpError::Invalid(_))),
            "shard {wrong} refused: {r:?}"
        );
        let r = sim.client_on(wrong, &c, engine::ClientOp::Disconnect);
        assert!(matches!(r, Err(OpError::Invalid(_))));
    }
    assert!(sim.view(&s).is_none());
    assert_eq!(sim.client_count(), 0);
    assert_eq!(
        sim.client_on(
            owner,
            &c,
            engine::ClientOp::Register {
                service: s.clone(),
                instance: inst("10.0.0.1", 80)
            }
        ),
        Ok(OpOutcome::Changed)
    );
    assert_eq!(sim.view(&s).unwrap().instance_count, 1);
    check(&sim);
}

fn writes_to_services_spread_over_every_shard_are_all_published(n: usize) {
    let mut sim = Sim::new(n);
    let mut expected = 0;
    for owner in 0..n {
        for k in 0..3 {
            let s = svc_owned_by(&sim.index, owner, k);
            for client_shard in 0..n {
                let c = conn_on(client_shard, n, k as u64 + 1);
                sim.register(
                    &c,
                    &s,
                    inst(&format!("10.3.{owner}.{client_shard}"), 9000 + k as u16),
                )
                .unwrap();
                expected += 1;
            }
            assert_eq!(sim.view(&s).unwrap().instance_count, n);
        }
    }
    assert_eq!(sim.totals().instances, expected);
    if n > 1 {
        assert!(sim.sends > 0, "cross-shard writes travel as messages");
    }
    check(&sim);
}

fn one_subscriber_leaving_pushes_nothing_to_the_others(n: usize) {
    let mut sim = Sim::new(n);
    let s = svc("shared");
    sim.register(&ClientId::Conn(1), &s, inst("10.0.0.1", 80))
        .unwrap();
    sim.subscribe(2, &s, "").unwrap();
    sim.subscribe(3, &s, "").unwrap();
    sim.advance(1_000);
    let rev = sim.view(&s).unwrap().revision;
    sim.take_pushes();
    assert_eq!(sim.unsubscribe(3, &s), Ok(OpOutcome::Changed));
    sim.advance(1_000);
    assert_eq!(sim.view(&s).unwrap().revision, rev);
    assert!(
        sim.take_pushes().is_empty(),
        "subscriber 2 got a push of an unchanged view"
    );
    assert_eq!(sim.totals().subscriptions, 1);
    check(&sim);
}

fn the_configured_limits_refuse_oversized_requests(n: usize) {
    let mut sim = Sim::with_config(engine::ShardConfig {
        shard_count: n,
        max_batch_instances: 3,
        max_services_per_client: 2,
        ..engine::ShardConfig::default()
    });
    let c = ClientId::Conn(1);
    let four: Vec<_> = (0..4).map(|p| inst("10.0.0.1", 80 + p)).collect();
    assert!(matches!(
        sim.batch(&c, &svc("big"), four.clone()),
        Err(OpError::Invalid(_))
    ));
    assert!(sim.view(&svc("big")).is_none());
    assert_eq!(
        sim.batch(&c, &svc("big"), four[..3].to_vec()),
        Ok(OpOutcome::Changed)
    );
    assert_eq!(
        sim.register(&c, &svc("second"), inst("10.0.0.1", 80)),
        Ok(OpOutcome::Changed)
    );
    assert!(matches!(
        sim.register(&c, &svc("third"), inst("10.0.0.1", 80)),
        Err(OpError::Invalid(_))
    ));
    assert!(sim.view(&svc("third")).is_none());
    assert_eq!(
        sim.register(&c, &svc("second"), inst("10.0.0.1", 81)),
        Ok(OpOutcome::Changed),
        "replacing is fine"
    );
    sim.subscribe(1, &svc("w1"), "").unwrap();
    sim.subscribe(1, &svc("w2"), "").unwrap();
    assert!(matches!(
        sim.subscribe(1, &svc("w3"), ""),
        Err(OpError::Invalid(_))
    ));
    assert!(sim.view(&svc("w3")).is_none());
    assert_eq!(sim.totals().subscriptions, 2);
    check(&sim);
}

// ---- engine bugs found while writing these tests ----

/// A `ShardMsg::Service` delivered to a shard that does not own the service is applied there:
/// that shard creates a ServiceState and writes the owner's ReadIndex bucket, breaking "only
/// the owner shard ever writes its buckets" (and a later write through the real owner
/// replaces the directory entry, so the two shards diverge). `Shard::handle` checks ownership
/// for `ShardMsg::Client` only.
#[test]
fn service_messages_sent_to_a_non_owner_shard_are_refused() {
    let mut sim = Sim::new(2);
    let s = svc_owned_by(&sim.index, 0, 0);
    let r = sim.service_on(
        1,
        &s,
        ServiceOp::Configure {
            protect_threshold: Some(0.5),
            metadata: None,
            must_exist: Some(false),
        },
    );
    assert!(
        matches!(r, Err(OpError::Invalid(_))),
        "non-owner shard 1 applied it: {r:?}"
    );
    assert!(sim.view(&s).is_none());
    assert_eq!(sim.totals().services, 0);
}

/// `ClientOp::Subscribe` from a heartbeat (HTTP) client inserts the client and its subscription
/// before it returns `Invalid("only connection clients can subscribe")`, so the refused request
/// leaves a client behind that nothing ever removes (heartbeat expiry only looks at publishes).
#[test]
fn a_refused_subscribe_of_a_heartbeat_client_leaves_no_client_behind() {
    let mut sim = Sim::new(1);
    let c = ClientId::V4("10.0.0.1".parse().unwrap(), 80);
    let r = sim.client(
        &c,
        engine::ClientOp::Subscribe {
            service: svc("s"),
            clusters: "".into(),
        },
    );
    assert!(matches!(r, Err(OpError::Invalid(_))));
    sim.advance(120_000);
    assert_eq!(sim.client_count(), 0);
    assert_eq!(sim.totals().clients, 0);
}
