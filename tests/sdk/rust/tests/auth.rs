//! crates.io `nacos-sdk` (gRPC, `auth-by-http`) against a nacelle started with --auth by
//! tests/sdk/auth.sh (`cargo test --test auth`). Users made there: `writer` (rw on
//! `:*:naming/auth-*`), `reader` (r on it); passwords are the user name + "-pw". The SDK
//! has no way to be handed a token, so the expired and forged token cases are in
//! server/tests/auth.rs (raw gRPC) and the Python suite.

use std::time::Duration;

use nacelle_sdk_conformance_rust::*;

fn svc(tag: &str) -> String {
    format!("auth-rs-{tag}-{:08x}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_credentials_register_list_and_subscribe() {
    let s = svc("ok");
    let w = new_naming_as("auth-w", "writer", "writer-pw").await;
    let r = new_naming_as("auth-r", "reader", "reader-pw").await;
    w.register_instance(s.clone(), Some(GROUP.into()), instance("10.7.0.1", 8080))
        .await
        .expect("writer registers");
    let list = wait_until(PUSH_TIMEOUT, "the instance in the reader's list", || async {
        let v = r.get_all_instances(s.clone(), Some(GROUP.into()), vec![], false).await.ok()?;
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(addrs(&list), vec!["10.7.0.1:8080"]);
    // Subscribed read (SubscribeServiceRequest), then a push: a gRPC client holds one
    // instance per service (Nacos 2.x), so the second registration replaces the first.
    let sub = r
        .select_instances(s.clone(), Some(GROUP.into()), vec![], true, true)
        .await
        .expect("reader subscribes");
    assert_eq!(addrs(&sub), vec!["10.7.0.1:8080"]);
    w.register_instance(s.clone(), Some(GROUP.into()), instance("10.7.0.2", 8080))
        .await
        .expect("second register");
    wait_until(PUSH_TIMEOUT, "the pushed replacement", || async {
        let v = r.select_instances(s.clone(), Some(GROUP.into()), vec![], true, true).await.ok()?;
        (addrs(&v) == vec!["10.7.0.2:8080"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_credentials_with_a_wrong_password_and_outside_permissions() {
    let s = svc("no");
    let anon = new_naming("auth-anon").await;
    let wrong = new_naming_as("auth-wrong", "writer", "wrong-pw").await;
    let reader = new_naming_as("auth-ro", "reader", "reader-pw").await;
    let writer = new_naming_as("auth-w2", "writer", "writer-pw").await;
    let other = format!("other-{:08x}", rand::random::<u32>());
    for (who, c, service) in [("anonymous", &anon, &s), ("wrong password", &wrong, &s), ("reader", &reader, &s), ("writer elsewhere", &writer, &other)] {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.register_instance(service.clone(), Some(GROUP.into()), instance("10.7.0.9", 1)),
        )
        .await
        .expect("register answered");
        assert!(r.is_err(), "{who}: register was accepted");
    }
    for (who, c, service) in [("anonymous", &anon, &s), ("wrong password", &wrong, &s), ("writer elsewhere", &writer, &other)] {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.get_all_instances(service.clone(), Some(GROUP.into()), vec![], false),
        )
        .await
        .expect("query answered");
        assert!(r.is_err(), "{who}: query was answered: {r:?}");
    }
}
