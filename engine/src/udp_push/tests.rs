//! The push table's state machine, asserted output by output.
#![allow(clippy::unwrap_used)]

use super::*;

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("public", "DEFAULT_GROUP", name).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn view(service: &str, revision: u64) -> Arc<ServiceView> {
    Arc::new(ServiceView::new(
        key(service),
        revision,
        1_000 + revision,
        0.0,
        Default::default(),
        Vec::new(),
        None,
    ))
}

fn sub(service: &str, target: &str) -> Subscription {
    let target = addr(target);
    Subscription {
        service: key(service),
        target,
        source: target.ip(),
        clusters: "".into(),
        healthy_only: false,
        app: "".into(),
        seen_revision: 0,
    }
}

fn cfg() -> UdpPushConfig {
    UdpPushConfig {
        ttl_ms: 30_000,
        ack_timeout_ms: 10_000,
        max_targets: 10,
        max_targets_per_source: 3,
        packets_per_sec: 1_000,
    }
}

fn drain(u: &mut UdpPush) -> Vec<Output> {
    std::iter::from_fn(|| u.poll_output()).collect()
}

fn tx(to: &str, ref_time: u64, view: &Arc<ServiceView>, resend: bool) -> Output {
    Output::Transmit(Transmit {
        to: addr(to),
        ref_time,
        view: view.clone(),
        clusters: "".into(),
        healthy_only: false,
        resend,
    })
}

#[test]
fn first_target_subscribes_the_shard_and_gets_no_push_of_what_it_read() {
    let mut u = UdpPush::new(cfg(), 0);
    let v = view("a", 3);
    let mut s = sub("a", "127.0.0.1:5000");
    s.seen_revision = 3;
    assert_eq!(
        u.handle_subscribe(0, s.clone(), Some(v)),
        SubscribeOutcome::Added
    );
    assert_eq!(drain(&mut u), vec![Output::Subscribe(key("a"))]);
    // A second target of the same service: no second subscription.
    let s2 = sub("a", "127.0.0.1:5001");
    assert_eq!(u.handle_subscribe(1, s2, None), SubscribeOutcome::Added);
    assert_eq!(drain(&mut u), vec![]);
    assert_eq!(u.handle_subscribe(2, s, None), SubscribeOutcome::Refreshed);
    assert_eq!(u.len(), 2);
    assert_eq!(u.poll_timeout(), Some(30_000));
}

#[test]
fn new_target_behind_the_owner_gets_the_current_view_at_once() {
    let mut u = UdpPush::new(cfg(), 0);
    let v = view("a", 5);
    let mut s = sub("a", "127.0.0.1:5000");
    s.seen_revision = 4;
    u.handle_subscribe(7, s, Some(v.clone()));
    assert_eq!(
        drain(&mut u),
        vec![
            Output::Subscribe(key("a")),
            tx("127.0.0.1:5000", 1, &v, false)
        ]
    );
    assert_eq!(u.poll_timeout(), Some(10_007));
}

#[test]
fn a_view_goes_to_every_target_of_its_service_under_one_key() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    u.handle_subscribe(0, sub("a", "127.0.0.2:5000"), None);
    u.handle_subscribe(0, sub("b", "127.0.0.3:5000"), None);
    drain(&mut u);
    let v = view("a", 1);
    u.handle_view(100, v.clone());
    assert_eq!(
        drain(&mut u),
        vec![
            tx("127.0.0.1:5000", 1, &v, false),
            tx("127.0.0.2:5000", 1, &v, false)
        ]
    );
    // A service nobody listens to here: nothing.
    u.handle_view(100, view("c", 1));
    assert_eq!(drain(&mut u), vec![]);
    assert_eq!(u.stats().pushes.load(Ordering::Relaxed), 2);
}

#[test]
fn the_filter_of_the_latest_list_call_is_used() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    let mut s = sub("a", "127.0.0.1:5000");
    s.clusters = "east".into();
    s.healthy_only = true;
    u.handle_subscribe(5, s, None);
    drain(&mut u);
    let v = view("a", 1);
    u.handle_view(10, v.clone());
    assert_eq!(
        drain(&mut u),
        vec![Output::Transmit(Transmit {
            to: addr("127.0.0.1:5000"),
            ref_time: 1,
            view: v,
            clusters: "east".into(),
            healthy_only: true,
            resend: false,
        })]
    );
}

#[test]
fn an_ack_stops_the_resend() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    drain(&mut u);
    let v = view("a", 1);
    u.handle_view(100, v.clone());
    drain(&mut u);
    assert_eq!(u.poll_timeout(), Some(10_100));
    // Wrong key, wrong port: no match.
    assert!(!u.handle_ack(addr("127.0.0.1:5000"), 2));
    assert!(!u.handle_ack(addr("127.0.0.1:5001"), 1));
    assert!(u.handle_ack(addr("127.0.0.1:5000"), 1));
    // A duplicate ack matches nothing.
    assert!(!u.handle_ack(addr("127.0.0.1:5000"), 1));
    assert_eq!(u.poll_timeout(), Some(30_000), "only the expiry is left");
    u.handle_timeout(20_000);
    assert_eq!(drain(&mut u), vec![]);
    let st = u.stats();
    assert_eq!(st.acks.load(Ordering::Relaxed), 1);
    assert_eq!(st.unmatched_acks.load(Ordering::Relaxed), 3);
    assert_eq!(st.resends.load(Ordering::Relaxed), 0);
}

#[test]
fn no_ack_means_exactly_one_resend_then_give_up() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    drain(&mut u);
    let v = view("a", 1);
    u.handle_view(100, v.clone());
    drain(&mut u);
    u.handle_timeout(10_099);
    assert_eq!(drain(&mut u), vec![]);
    u.handle_timeout(10_100);
    assert_eq!(drain(&mut u), vec![tx("127.0.0.1:5000", 1, &v, true)]);
    assert_eq!(u.poll_timeout(), Some(20_100));
    u.handle_timeout(20_100);
    assert_eq!(drain(&mut u), vec![], "no second resend");
    assert_eq!(u.stats().failed.load(Ordering::Relaxed), 1);
    // A late ack of a given-up push matches nothing.
    assert!(!u.handle_ack(addr("127.0.0.1:5000"), 1));
    assert_eq!(u.poll_timeout(), Some(30_000));
}

#[test]
fn an_ack_of_the_resend_matches() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    u.handle_view(0, view("a", 1));
    u.handle_timeout(10_000);
    drain(&mut u);
    assert!(u.handle_ack(addr("127.0.0.1:5000"), 1));
    u.handle_timeout(20_000);
    assert_eq!(u.stats().failed.load(Ordering::Relaxed), 0);
}

#[test]
fn a_newer_push_replaces_the_unacked_one() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    drain(&mut u);
    let (v1, v2) = (view("a", 1), view("a", 2));
    u.handle_view(0, v1);
    u.handle_view(5_000, v2.clone());
    drain(&mut u);
    // The first packet's ack no longer matches, its timer is gone: one resend, of v2.
    assert!(!u.handle_ack(addr("127.0.0.1:5000"), 1));
    u.handle_timeout(10_000);
    assert_eq!(drain(&mut u), vec![]);
    u.handle_timeout(15_000);
    assert_eq!(drain(&mut u), vec![tx("127.0.0.1:5000", 2, &v2, true)]);
}

#[test]
fn a_target_expires_ttl_after_its_last_list_call() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    u.handle_subscribe(20_000, sub("a", "127.0.0.1:5000"), None);
    drain(&mut u);
    u.handle_timeout(30_000);
    assert_eq!(drain(&mut u), vec![], "refreshed at 20 s");
    assert_eq!(u.poll_timeout(), Some(50_000));
    u.handle_timeout(49_999);
    assert_eq!(u.len(), 1);
    u.handle_timeout(50_000);
    assert_eq!(drain(&mut u), vec![Output::Unsubscribe(key("a"))]);
    assert!(u.is_empty());
    assert_eq!(u.poll_timeout(), None);
    assert_eq!(u.stats().expired.load(Ordering::Relaxed), 1);
    assert_eq!(u.stats().targets.load(Ordering::Relaxed), 0);
    // Pushes of the service reach nobody now.
    u.handle_view(50_001, view("a", 9));
    assert_eq!(drain(&mut u), vec![]);
}

#[test]
fn expiry_with_a_packet_in_flight_clears_its_timer_and_key() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    u.handle_view(25_000, view("a", 1));
    drain(&mut u);
    u.handle_timeout(30_000);
    assert_eq!(drain(&mut u), vec![Output::Unsubscribe(key("a"))]);
    assert_eq!(u.poll_timeout(), None, "the ack timer went with the target");
    assert!(!u.handle_ack(addr("127.0.0.1:5000"), 1));
}

#[test]
fn only_the_last_target_of_a_service_unsubscribes() {
    let mut u = UdpPush::new(cfg(), 0);
    u.handle_subscribe(0, sub("a", "127.0.0.1:5000"), None);
    u.handle_subscribe(10_000, sub("a", "127.0.0.1:5001"), None);
    drain(&mut u);
    u.handle_timeout(30_000);
    assert_eq!(drain(&mut u), vec![]);
    u.handle_timeout(40_000);
    assert_eq!(drain(&mut u), vec![Output::Unsubscribe(key("a"))]);
}

#[test]
fn bounds_per_source_and_per_core() {
    let mut u = UdpPush::new(cfg(), 0);
    for port in 0..3 {
        let s = sub("a", &format!("127.0.0.1:{}", 5000 + port));
        assert_eq!(u.handle_subscribe(0, s, None), SubscribeOutcome::Added);
    }
    let s = sub("a", "127.0.0.1:6000");
    assert_eq!(
        u.handle_subscribe(0, s, None),
        SubscribeOutcome::Refused(Refusal::SourceFull)
    );
    // A forged clientIP does not escape the bound: the source is what counts.
    let mut forged = sub("a", "10.9.9.9:6000");
    forged.source = "127.0.0.1".parse().unwrap();
    assert_eq!(
        u.handle_subscribe(0, forged, None),
        SubscribeOutcome::Refused(Refusal::SourceFull)
    );
    // Refreshing a kept target still works at the bound.
    let s = sub("a", "127.0.0.1:5000");
    assert_eq!(u.handle_subscribe(1, s, None), SubscribeOutcome::Refreshed);
    for i in 0..7 {
        let s = sub("b", &format!("127.0.1.{i}:5000"));
        assert_eq!(u.handle_subscribe(0, s, None), SubscribeOutcome::Added);
    }
    let s = sub("b", "127.0.2.1:5000");
    assert_eq!(
        u.handle_subscribe(0, s, None),
        SubscribeOutcome::Refused(Refusal::CoreFull)
    );
    assert_eq!(u.stats().refused.load(Ordering::Relaxed), 3);
    // Expiry frees the source's share.
    u.handle_timeout(30_000);
    assert_eq!(u.len(), 1, "only the target refreshed at 1 ms is left");
    let s = sub("a", "127.0.0.1:6000");
    assert_eq!(u.handle_subscribe(30_000, s, None), SubscribeOutcome::Added);
}

#[test]
fn packet_rate_is_bounded_and_refills() {
    let mut c = cfg();
    c.packets_per_sec = 2;
    let mut u = UdpPush::new(c, 0);
    for port in 0..3 {
        u.handle_subscribe(0, sub("a", &format!("127.0.0.1:{}", 5000 + port)), None);
    }
    drain(&mut u);
    let v = view("a", 1);
    u.handle_view(0, v.clone());
    assert_eq!(
        drain(&mut u),
        vec![
            tx("127.0.0.1:5000", 1, &v, false),
            tx("127.0.0.1:5001", 1, &v, false)
        ]
    );
    assert_eq!(u.stats().drops.load(Ordering::Relaxed), 1);
    // The dropped packet's ack timer still runs: its resend is its second chance, and the
    // bucket has refilled by then.
    u.handle_timeout(10_000);
    let out = drain(&mut u);
    assert_eq!(
        out.len(),
        2,
        "two tokens after 10 s (the bucket holds one second)"
    );
    assert_eq!(u.stats().drops.load(Ordering::Relaxed), 2);
    // Half a second later one token is back.
    u.handle_view(10_500, view("a", 2));
    assert_eq!(drain(&mut u).len(), 1);
}
