use super::*;

type Checker = HealthChecker<&'static str>;
type Cmd = HealthCommand<&'static str>;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn tcp() -> Arc<CheckSpec> {
    Arc::new(CheckSpec::Tcp)
}

fn cfg() -> HealthConfig {
    HealthConfig {
        seed: 7,
        ..HealthConfig::default()
    }
}

fn drain(hc: &mut Checker) -> Vec<Cmd> {
    std::iter::from_fn(|| hc.poll_command()).collect()
}

/// Runs the timers up to and including `until`, returning each command with its time.
fn run_until(hc: &mut Checker, until: u64) -> Vec<(u64, Cmd)> {
    let mut out = Vec::new();
    while let Some(at) = hc.poll_timeout() {
        if at > until {
            break;
        }
        hc.handle_timeout(at);
        out.extend(drain(hc).into_iter().map(|c| (at, c)));
    }
    out
}

/// Advances to the first timer that produces commands and returns its time and them.
fn next_cmds(hc: &mut Checker) -> (u64, Vec<Cmd>) {
    while let Some(at) = hc.poll_timeout() {
        hc.handle_timeout(at);
        let cmds = drain(hc);
        if !cmds.is_empty() {
            return (at, cmds);
        }
    }
    panic!("no timer produced a command");
}

/// Advances to the target's next probe and returns its id and time (it must be the only
/// command by then).
fn next_probe(hc: &mut Checker) -> (u64, u64) {
    let (at, cmds) = next_cmds(hc);
    match &cmds[..] {
        [HealthCommand::Probe { id, .. }] => (*id, at),
        _ => panic!("expected one probe: {cmds:?}"),
    }
}

/// The next probe of a single-target checker, answered `result` 10 ms later; returns the
/// commands that answer produced.
fn probe_answer(hc: &mut Checker, result: ProbeResult) -> Vec<Cmd> {
    let (id, at) = next_probe(hc);
    hc.handle_result(at + 10, id, result);
    drain(hc)
}

fn flip(target: &'static str, healthy: bool) -> Cmd {
    HealthCommand::Flip { target, healthy }
}

#[test]
fn the_first_probe_is_jittered_within_bounds_and_reproducible() {
    let keys: Vec<&'static str> = (0..200)
        .map(|i| &*Box::leak(format!("t{i}").into_boxed_str()))
        .collect();
    let schedule = |seed: u64| {
        let mut hc = Checker::new(HealthConfig {
            seed,
            max_in_flight: 1_000,
            ..cfg()
        });
        for (i, k) in keys.iter().enumerate() {
            hc.handle_add(1_000, *k, addr(i as u16), tcp(), true)
                .expect("room");
        }
        let cmds = run_until(&mut hc, 9_000);
        let times: Vec<u64> = cmds
            .iter()
            .map(|(at, c)| {
                assert!(matches!(c, HealthCommand::Probe { .. }), "{c:?}");
                *at
            })
            .collect();
        assert_eq!(times.len(), keys.len(), "each target probed once");
        times
    };
    let times = schedule(7);
    let (lo, hi) = (1_000 + 2_000, 1_000 + 2_000 + 5_000);
    assert!(
        times.iter().all(|&t| (lo..hi).contains(&t)),
        "{:?}",
        (times.iter().min(), times.iter().max())
    );
    // Spread, not bunched: every second of the window gets some.
    for s in 0..5 {
        let from = lo + s * 1_000;
        assert!(
            times.iter().any(|&t| (from..from + 1_000).contains(&t)),
            "no first probe in [{from}, {})",
            from + 1_000
        );
    }
    assert_eq!(schedule(7), times, "same seed, same schedule");
    assert_ne!(schedule(8), times, "the seed changes the schedule");
}

#[test]
fn later_probes_follow_results_by_the_interval_with_jitter() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    let (mut id, mut at) = next_probe(&mut hc);
    for _ in 0..50 {
        hc.handle_result(at + 3, id, ProbeResult::Connected);
        assert_eq!(drain(&mut hc), vec![]);
        let (next_id, next_at) = next_probe(&mut hc);
        let gap = next_at - (at + 3);
        assert!((4_500..5_500).contains(&gap), "gap {gap}");
        assert_ne!(next_id, id);
        (id, at) = (next_id, next_at);
    }
}

#[test]
fn three_soft_failures_flip_once() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    assert_eq!(probe_answer(&mut hc, ProbeResult::Timeout), vec![]);
    assert_eq!(probe_answer(&mut hc, ProbeResult::Status(503)), vec![]);
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Error),
        vec![flip("a", false)]
    );
    assert_eq!(hc.healthy(&"a"), Some(false));
    for _ in 0..5 {
        assert_eq!(probe_answer(&mut hc, ProbeResult::Timeout), vec![]);
    }
    let s = hc.stats();
    assert_eq!((s.flips_unhealthy, s.failures, s.checks), (1, 8, 8));
}

#[test]
fn an_ok_between_soft_failures_restarts_the_count() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    for r in [
        ProbeResult::Timeout,
        ProbeResult::Timeout,
        ProbeResult::Connected,
        ProbeResult::Timeout,
        ProbeResult::Timeout,
    ] {
        assert_eq!(probe_answer(&mut hc, r), vec![], "{r:?}");
    }
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Timeout),
        vec![flip("a", false)]
    );
}

#[test]
fn a_refused_connection_or_a_bad_status_flips_at_once() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    assert_eq!(probe_answer(&mut hc, ProbeResult::Timeout), vec![]);
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Refused),
        vec![flip("a", false)]
    );
    let http = Arc::new(CheckSpec::Http(HttpCheck {
        path: "/h".into(),
        headers: vec![],
    }));
    hc.handle_add(0, "b", addr(2), http, true).expect("room");
    hc.handle_remove(&"a");
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Status(500)),
        vec![flip("b", false)]
    );
    assert_eq!(hc.stats().failures_now, 2);
}

#[test]
fn three_oks_flip_back_to_healthy() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), false).expect("room");
    assert_eq!(probe_answer(&mut hc, ProbeResult::Connected), vec![]);
    assert_eq!(probe_answer(&mut hc, ProbeResult::Status(200)), vec![]);
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Connected),
        vec![flip("a", true)]
    );
    assert_eq!(probe_answer(&mut hc, ProbeResult::Connected), vec![]);
    assert_eq!(hc.stats().flips_healthy, 1);
}

#[test]
fn a_failure_between_oks_restarts_the_way_back() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), false).expect("room");
    for r in [
        ProbeResult::Connected,
        ProbeResult::Connected,
        ProbeResult::Refused,
        ProbeResult::Connected,
        ProbeResult::Connected,
    ] {
        assert_eq!(probe_answer(&mut hc, r), vec![], "{r:?}");
    }
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Connected),
        vec![flip("a", true)]
    );
}

#[test]
fn nothing_flips_when_the_results_agree_with_the_flag() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "up", addr(1), tcp(), true).expect("room");
    for _ in 0..6 {
        assert_eq!(probe_answer(&mut hc, ProbeResult::Connected), vec![]);
    }
    hc.handle_remove(&"up");
    hc.handle_add(100_000, "down", addr(2), tcp(), false)
        .expect("room");
    for r in [
        ProbeResult::Refused,
        ProbeResult::Timeout,
        ProbeResult::Timeout,
        ProbeResult::Timeout,
        ProbeResult::Status(500),
    ] {
        assert_eq!(probe_answer(&mut hc, r), vec![], "{r:?}");
    }
    let s = hc.stats();
    assert_eq!((s.flips_healthy, s.flips_unhealthy, s.checks), (0, 0, 11));
}

#[test]
fn removal_cancels_scheduled_and_in_flight_probes() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    assert!(hc.handle_remove(&"a"));
    assert!(!hc.handle_remove(&"a"));
    assert_eq!(run_until(&mut hc, 1_000_000), vec![]);

    hc.handle_add(0, "b", addr(2), tcp(), true).expect("room");
    let (id, at) = next_probe(&mut hc);
    hc.handle_remove(&"b");
    hc.handle_result(at + 1, id, ProbeResult::Refused);
    assert_eq!(drain(&mut hc), vec![]);
    assert_eq!(run_until(&mut hc, 10_000_000), vec![]);
    assert_eq!(hc.stats().stale, 1);
    assert_eq!(hc.in_flight(), 0);
    assert!(hc.is_empty());
}

#[test]
fn a_re_added_target_ignores_the_old_probes_result() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    let (old, at) = next_probe(&mut hc);
    hc.handle_remove(&"a");
    hc.handle_add(at + 1, "a", addr(1), tcp(), true)
        .expect("room");
    hc.handle_result(at + 2, old, ProbeResult::Refused);
    assert_eq!(drain(&mut hc), vec![], "the old refusal does not flip");
    assert_eq!(hc.healthy(&"a"), Some(true));
    let (new, new_at) = next_probe(&mut hc);
    assert_ne!(new, old);
    assert!(
        new_at >= at + 1 + 2_000,
        "the re-added target starts afresh"
    );
    // The late result again: still nothing.
    hc.handle_result(new_at, old, ProbeResult::Refused);
    assert_eq!(drain(&mut hc), vec![]);
    hc.handle_result(new_at + 1, new, ProbeResult::Refused);
    assert_eq!(drain(&mut hc), vec![flip("a", false)]);
    assert_eq!(hc.stats().stale, 2);
}

#[test]
fn a_new_owner_continues_from_the_stored_flag() {
    // The previous owner flipped the target to unhealthy; the flag arrives with the add.
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), false).expect("room");
    assert_eq!(hc.healthy(&"a"), Some(false));
    assert_eq!(probe_answer(&mut hc, ProbeResult::Refused), vec![]);
    // Adding a held key updates its flag.
    hc.handle_add(50_000, "a", addr(1), tcp(), true)
        .expect("room");
    assert_eq!(hc.len(), 1);
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Refused),
        vec![flip("a", false)]
    );
}

#[test]
fn a_failed_flip_write_is_reported_and_the_checker_flips_again() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Refused),
        vec![flip("a", false)]
    );
    // The write failed (no Raft leader): the stored flag stayed true.
    assert!(hc.handle_healthy(&"a", true));
    assert_eq!(probe_answer(&mut hc, ProbeResult::Timeout), vec![]);
    assert_eq!(probe_answer(&mut hc, ProbeResult::Timeout), vec![]);
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Timeout),
        vec![flip("a", false)]
    );
    assert!(!hc.handle_healthy(&"nobody", true));
}

#[test]
fn the_in_flight_bound_holds_and_waiting_targets_go_in_order() {
    let mut hc = Checker::new(HealthConfig {
        max_in_flight: 2,
        first_delay_min_ms: 1_000,
        interval_ms: 1,
        ..cfg()
    });
    let keys = ["a", "b", "c", "d", "e"];
    for (i, k) in keys.iter().enumerate() {
        hc.handle_add(0, *k, addr(i as u16), tcp(), true)
            .expect("room");
    }
    // All due at 1000 (a jitter below 1 ms is 0).
    hc.handle_timeout(1_000);
    let first = drain(&mut hc);
    let ports = |cmds: &[Cmd]| -> Vec<u16> {
        cmds.iter()
            .map(|c| match c {
                HealthCommand::Probe { addr, .. } => addr.port(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let id_of = |c: &Cmd| match c {
        HealthCommand::Probe { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    assert_eq!(ports(&first), vec![0, 1]);
    assert_eq!(hc.in_flight(), 2);
    assert_eq!(hc.stats().deferred, 3);
    // Each result frees exactly one slot, for the next waiting target.
    hc.handle_result(1_010, id_of(&first[0]), ProbeResult::Connected);
    let second = drain(&mut hc);
    assert_eq!(ports(&second), vec![2]);
    assert_eq!(hc.in_flight(), 2);
    // A waiting target that is removed gives its turn to the next one.
    hc.handle_remove(&"d");
    hc.handle_result(1_020, id_of(&first[1]), ProbeResult::Connected);
    assert_eq!(ports(&drain(&mut hc)), vec![4]);
    assert_eq!(hc.in_flight(), 2);
    // A removed target's probe keeps its slot until it ends: "a" and "b" come back due but
    // wait, until the deadline of "c"'s probe (started at 1010) frees a slot.
    hc.handle_remove(&"c");
    assert_eq!(run_until(&mut hc, 4_009), vec![]);
    assert_eq!(hc.in_flight(), 2);
    let freed = run_until(&mut hc, 4_010);
    assert!(
        matches!(&freed[..], [(4_010, HealthCommand::Probe { addr, .. })] if addr.port() <= 1),
        "{freed:?}"
    );
    assert_eq!(hc.in_flight(), 2);
}

#[test]
fn a_lost_result_is_a_timeout_at_the_deadline() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    let deadline = cfg().probe_deadline_ms;
    let mut last = (0, 0);
    for round in 0..3 {
        let (id, at) = next_probe(&mut hc);
        hc.handle_timeout(at + deadline - 1);
        assert_eq!(drain(&mut hc), vec![]);
        assert_eq!(hc.in_flight(), 1);
        hc.handle_timeout(at + deadline);
        let expect = if round == 2 {
            vec![flip("a", false)]
        } else {
            vec![]
        };
        assert_eq!(drain(&mut hc), expect, "round {round}");
        assert_eq!(hc.in_flight(), 0);
        last = (id, at);
    }
    // The lost result arrives after all: ignored.
    hc.handle_result(last.1 + deadline + 5, last.0, ProbeResult::Connected);
    assert_eq!(drain(&mut hc), vec![]);
    let s = hc.stats();
    assert_eq!((s.deadlines, s.failures, s.stale), (3, 3, 1));
}

#[test]
fn none_targets_are_never_probed_until_their_check_changes() {
    let mut hc = Checker::new(cfg());
    let none = Arc::new(CheckSpec::None);
    hc.handle_add(0, "a", addr(1), none.clone(), false)
        .expect("room");
    assert_eq!(hc.poll_timeout(), None);
    hc.handle_timeout(u64::MAX / 2);
    assert_eq!(drain(&mut hc), vec![]);
    assert_eq!(hc.healthy(&"a"), Some(false));
    // It becomes TCP: probed like a new target.
    assert!(hc.handle_update(10_000, &"a", addr(1), tcp()));
    let (id, at) = next_probe(&mut hc);
    assert!((12_000..17_000).contains(&at), "{at}");
    // Back to NONE while the probe is out: its result is ignored, no more probes.
    assert!(hc.handle_update(at + 1, &"a", addr(1), none));
    hc.handle_result(at + 2, id, ProbeResult::Connected);
    assert_eq!(drain(&mut hc), vec![]);
    assert_eq!(run_until(&mut hc, u64::MAX / 2), vec![]);
    assert_eq!(hc.stats().probes, 1);
}

#[test]
fn a_changed_check_disowns_the_probe_in_flight_and_restarts_the_streak() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    assert_eq!(probe_answer(&mut hc, ProbeResult::Timeout), vec![]);
    assert_eq!(probe_answer(&mut hc, ProbeResult::Timeout), vec![]);
    let (id, at) = next_probe(&mut hc);
    let http = Arc::new(CheckSpec::Http(HttpCheck {
        path: "/".into(),
        headers: vec![],
    }));
    assert!(hc.handle_update(at + 1, &"a", addr(2), http.clone()));
    hc.handle_result(at + 2, id, ProbeResult::Timeout);
    assert_eq!(drain(&mut hc), vec![], "the old check's result is ignored");
    let (_, cmds) = next_cmds(&mut hc);
    let new_id = match &cmds[..] {
        [HealthCommand::Probe { id, addr: a, spec }] if *a == addr(2) && *spec == http => *id,
        _ => panic!("{cmds:?}"),
    };
    // The streak restarted: this is the first soft failure of the new check.
    hc.handle_result(at + 10_000, new_id, ProbeResult::Timeout);
    assert_eq!(drain(&mut hc), vec![]);
    assert_eq!(probe_answer(&mut hc, ProbeResult::Timeout), vec![]);
    assert_eq!(
        probe_answer(&mut hc, ProbeResult::Timeout),
        vec![flip("a", false)]
    );
    // An unchanged update changes nothing.
    assert!(hc.handle_update(at + 3, &"a", addr(2), http));
    assert!(!hc.handle_update(at + 3, &"b", addr(2), tcp()));
}

#[test]
fn the_target_bound_refuses_more() {
    let mut hc = Checker::new(HealthConfig {
        max_targets: 2,
        ..cfg()
    });
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    hc.handle_add(0, "b", addr(2), tcp(), true).expect("room");
    assert_eq!(
        hc.handle_add(0, "c", addr(3), tcp(), true),
        Err(HealthError::TooManyTargets)
    );
    // Updating a held one is not an addition.
    assert_eq!(hc.handle_add(0, "a", addr(1), tcp(), false), Ok(()));
    assert_eq!(hc.len(), 2);
}

#[test]
fn probe_latencies_are_summed_and_bucketed() {
    let mut hc = Checker::new(cfg());
    hc.handle_add(0, "a", addr(1), tcp(), true).expect("room");
    for ms in [0, 3, 700, 5_000] {
        let (id, at) = next_probe(&mut hc);
        hc.handle_result(at + ms, id, ProbeResult::Connected);
    }
    let s = hc.stats();
    assert_eq!(s.latency_sum_ms, 5_703);
    let mut expect = [0u64; LATENCY_BOUNDS_MS.len() + 1];
    expect[0] = 1; // 0 ms: ≤ 1
    expect[2] = 1; // 3 ms: ≤ 5
    expect[9] = 1; // 700 ms: ≤ 1000
    expect[10] = 1; // 5000 ms: slower
    assert_eq!(s.latency, expect);
    assert_eq!((s.probes, s.ok), (4, 4));
}

mod random {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        Add(u16, bool),
        Remove(u16),
        Advance(u64),
        Answer(usize, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..6, any::<bool>()).prop_map(|(p, h)| Op::Add(p, h)),
            (0u16..6).prop_map(Op::Remove),
            (0u64..4_000).prop_map(Op::Advance),
            (0usize..8, 0u8..5).prop_map(|(i, r)| Op::Answer(i, r)),
        ]
    }

    const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];

    proptest! {
        /// Whatever the order of inputs: never more than `max_in_flight` probes out, never two
        /// for one target, and every flip changes the flag the driver knows.
        #[test]
        fn bounds_and_flips_hold_for_any_input(ops in proptest::collection::vec(op(), 1..200)) {
            let max = 3;
            let mut hc = Checker::new(HealthConfig { max_in_flight: max, ..cfg() });
            let deadline = hc.config().probe_deadline_ms;
            let mut now = 0u64;
            // Per target: the flag the driver knows, and its probe out (id, start).
            let mut flag: HashMap<u16, bool> = HashMap::new();
            let mut live: HashMap<u16, (u64, u64)> = HashMap::new();
            // Every probe not answered yet (removed targets' ones included).
            let mut out: Vec<(u64, u16)> = Vec::new();
            for op in ops {
                match op {
                    Op::Add(p, h) => {
                        hc.handle_add(now, KEYS[p as usize], addr(p), tcp(), h).expect("room");
                        flag.insert(p, h);
                    }
                    Op::Remove(p) => {
                        hc.handle_remove(&KEYS[p as usize]);
                        flag.remove(&p);
                        live.remove(&p);
                    }
                    Op::Advance(dt) => {
                        now += dt;
                        hc.handle_timeout(now);
                    }
                    Op::Answer(i, r) => {
                        if !out.is_empty() {
                            let (id, p) = out.remove(i % out.len());
                            if live.get(&p).is_some_and(|(l, _)| *l == id) {
                                live.remove(&p);
                            }
                            let result = [
                                ProbeResult::Connected,
                                ProbeResult::Timeout,
                                ProbeResult::Refused,
                                ProbeResult::Status(503),
                                ProbeResult::Status(200),
                            ][r as usize];
                            hc.handle_result(now, id, result);
                        }
                    }
                }
                // Probes past their deadline are over for the checker.
                live.retain(|_, (_, at)| now < *at + deadline);
                while let Some(cmd) = hc.poll_command() {
                    match cmd {
                        HealthCommand::Probe { id, addr, .. } => {
                            let p = addr.port();
                            prop_assert!(flag.contains_key(&p), "probe for a removed target");
                            prop_assert!(!live.contains_key(&p), "two probes out for {}", p);
                            live.insert(p, (id, now));
                            out.push((id, p));
                        }
                        HealthCommand::Flip { target, healthy } => {
                            let p = KEYS.iter().position(|k| *k == target).expect("key") as u16;
                            prop_assert_eq!(flag.get(&p).copied(), Some(!healthy));
                            flag.insert(p, healthy);
                        }
                    }
                }
                prop_assert!(hc.in_flight() <= max);
                for (p, h) in &flag {
                    prop_assert_eq!(hc.healthy(&KEYS[*p as usize]), Some(*h));
                }
            }
        }
    }
}
