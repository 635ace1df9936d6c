//! Conformance tests: crates.io `nacos-sdk` (gRPC naming) against the server.
//! Every test uses its own service name.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nacelle_sdk_conformance_rust::*;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_get_instances() {
    let svc = unique_service("reg");
    let a = new_naming("reg-a").await;
    let b = new_naming("reg-b").await;
    let mut inst = instance_md("10.21.0.1", 8080, &[("zone", "z1"), ("v", "1")]);
    inst.weight = 3.0;
    a.register_instance(svc.clone(), Some(GROUP.into()), inst).await.expect("register_instance");

    let list = wait_until(PUSH_TIMEOUT, "instance visible to another client", || async {
        let v = b.get_all_instances(svc.clone(), Some(GROUP.into()), vec![], false).await.ok()?;
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(addrs(&list), vec!["10.21.0.1:8080"]);
    let h = &list[0];
    assert_eq!(h.weight, 3.0);
    assert!(h.healthy && h.enabled && h.ephemeral);
    assert_eq!(h.cluster_name.as_deref(), Some("DEFAULT"));
    assert_eq!(h.metadata.get("zone").map(String::as_str), Some("z1"));
    assert_eq!(h.metadata.get("v").map(String::as_str), Some("1"));

    // Subscribed read path (SubscribeServiceRequest) and client-side healthy filter.
    let healthy = b
        .select_instances(svc.clone(), Some(GROUP.into()), vec![], true, true)
        .await
        .expect("select_instances");
    assert_eq!(addrs(&healthy), vec!["10.21.0.1:8080"]);
    let one = b
        .select_one_healthy_instance(svc.clone(), Some(GROUP.into()), vec![], false)
        .await
        .expect("select_one_healthy_instance");
    assert_eq!(one.ip, "10.21.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_register() {
    let svc = unique_service("batch");
    let a = new_naming("batch-a").await;
    let b = new_naming("batch-b").await;
    let three: Vec<_> = (1..=3)
        .map(|i| instance_md(&format!("10.22.0.{i}"), 7000 + i, &[("idx", &i.to_string())]))
        .collect();
    a.batch_register_instance(svc.clone(), Some(GROUP.into()), three)
        .await
        .expect("batch_register_instance");
    let list = wait_until(PUSH_TIMEOUT, "3 batch instances", || async {
        let v = b.get_all_instances(svc.clone(), Some(GROUP.into()), vec![], false).await.ok()?;
        (v.len() == 3).then_some(v)
    })
    .await;
    assert_eq!(addrs(&list), vec!["10.22.0.1:7001", "10.22.0.2:7002", "10.22.0.3:7003"]);
    let mut idx: Vec<_> = list.iter().filter_map(|i| i.metadata.get("idx").cloned()).collect();
    idx.sort();
    assert_eq!(idx, vec!["1", "2", "3"]);
    assert!(list.iter().all(|i| i.cluster_name.as_deref() == Some("DEFAULT")));
}

/// Nacos keeps one publish per (connection, service): a second batch replaces the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_register_replaces_previous_batch() {
    rnacos_deviation("a second batch register adds to the first instead of replacing it", async {
        let svc = unique_service("batchrep");
        let a = new_naming("batchrep-a").await;
        let b = new_naming("batchrep-b").await;
        let three: Vec<_> = (1..=3).map(|i| instance(&format!("10.22.1.{i}"), 7000 + i)).collect();
        a.batch_register_instance(svc.clone(), Some(GROUP.into()), three.clone())
            .await
            .expect("batch_register_instance");
        wait_until(PUSH_TIMEOUT, "3 batch instances", || async {
            (query(&b, &svc, GROUP).await.len() == 3).then_some(())
        })
        .await;
        a.batch_register_instance(svc.clone(), Some(GROUP.into()), three[..2].to_vec())
            .await
            .expect("second batch_register_instance");
        wait_until(PUSH_TIMEOUT, "batch replaced by 2 instances", || async {
            let v = query(&b, &svc, GROUP).await;
            (v == vec!["10.22.1.1:7001", "10.22.1.2:7002"]).then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_listener_receives_changes() {
    let svc = unique_service("sub");
    let owner = new_naming("sub-owner").await;
    let other = new_naming("sub-other").await;
    let watcher = new_naming("sub-watcher").await;
    owner
        .register_instance(svc.clone(), Some(GROUP.into()), instance("10.23.0.1", 1))
        .await
        .expect("register");

    let rec = Recorder::default();
    watcher
        .subscribe(svc.clone(), Some(GROUP.into()), vec![], Arc::new(rec.clone()))
        .await
        .expect("subscribe");
    wait_until(PUSH_TIMEOUT, "listener called with first instance", || async {
        rec.saw(&["10.23.0.1:1"]).then_some(())
    })
    .await;

    other
        .register_instance(svc.clone(), Some(GROUP.into()), instance("10.23.0.2", 2))
        .await
        .expect("register 2");
    wait_until(PUSH_TIMEOUT, "push after second register", || async {
        rec.saw(&["10.23.0.1:1", "10.23.0.2:2"]).then_some(())
    })
    .await;

    other
        .deregister_instance(svc.clone(), Some(GROUP.into()), instance("10.23.0.2", 2))
        .await
        .expect("deregister 2");
    wait_until(PUSH_TIMEOUT, "push after deregister", || async {
        rec.last_is(&["10.23.0.1:1"]).then_some(())
    })
    .await;
    eprintln!("events: {:?}", rec.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_removes_instance() {
    let svc = unique_service("dereg");
    let a = new_naming("dereg-a").await;
    let b = new_naming("dereg-b").await;
    a.register_instance(svc.clone(), Some(GROUP.into()), instance("10.24.0.1", 1))
        .await
        .expect("register");
    wait_until(PUSH_TIMEOUT, "registered", || async {
        (query(&b, &svc, GROUP).await == vec!["10.24.0.1:1"]).then_some(())
    })
    .await;
    a.deregister_instance(svc.clone(), Some(GROUP.into()), instance("10.24.0.1", 1))
        .await
        .expect("deregister");
    wait_until(PUSH_TIMEOUT, "instance gone after deregister", || async {
        query(&b, &svc, GROUP).await.is_empty().then_some(())
    })
    .await;
}

/// A client that disappears (its process dies, dropping the NamingService and the gRPC
/// connection without deregistering) must have its instances removed by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_client_process_instances_removed() {
    let svc = unique_service("gone");
    let survivor = new_naming("survivor").await;
    survivor
        .register_instance(svc.clone(), Some(GROUP.into()), instance("10.25.0.2", 2))
        .await
        .expect("survivor register");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args([svc.as_str(), "10.25.0.1:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn registrar");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("registrar did not report in time")
        .expect("read registrar stdout");
    assert_eq!(line.as_deref(), Some("REGISTERED"));

    let watcher = new_naming("gone-watcher").await;
    let rec = Recorder::default();
    watcher
        .subscribe(svc.clone(), Some(GROUP.into()), vec![], Arc::new(rec.clone()))
        .await
        .expect("subscribe");
    wait_until(PUSH_TIMEOUT, "both instances visible", || async {
        (query(&watcher, &svc, GROUP).await == vec!["10.25.0.1:1", "10.25.0.2:2"]).then_some(())
    })
    .await;

    child.kill().await.expect("kill registrar");
    wait_until(DISCONNECT_TIMEOUT, "dead client's instance removed (query)", || async {
        (query(&watcher, &svc, GROUP).await == vec!["10.25.0.2:2"]).then_some(())
    })
    .await;
    wait_until(PUSH_TIMEOUT, "dead client's instance removed (push)", || async {
        rec.last_is(&["10.25.0.2:2"]).then_some(())
    })
    .await;
}

/// Same, but the NamingService is dropped inside a live process.  nacos-sdk 0.8.3 keeps its
/// gRPC connection and background tasks on a process-global runtime and has no shutdown
/// API, so dropping the handle does NOT close the connection: against r-nacos the instance
/// was still listed 15 s after the drop, while the process-exit variant above passes.
/// Ignored by default because no server can make it pass; run with `--ignored` to re-check
/// after an SDK upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "nacos-sdk 0.8.3 does not close its connection when NamingService is dropped"]
async fn dropped_naming_service_instances_removed() {
    let svc = unique_service("drop");
    let watcher = new_naming("drop-watcher").await;
    {
        let doomed = new_naming("doomed").await;
        doomed
            .register_instance(svc.clone(), Some(GROUP.into()), instance("10.26.0.1", 1))
            .await
            .expect("register");
        wait_until(PUSH_TIMEOUT, "registered", || async {
            (query(&watcher, &svc, GROUP).await == vec!["10.26.0.1:1"]).then_some(())
        })
        .await;
        drop(doomed);
    }
    wait_until(DISCONNECT_TIMEOUT, "dropped service's instance removed", || async {
        query(&watcher, &svc, GROUP).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_list() {
    let group = format!("RSGRP_{:06x}", rand::random::<u32>() & 0xff_ffff);
    let s1 = unique_service("list1");
    let s2 = unique_service("list2");
    let a = new_naming("list").await;
    a.register_instance(s1.clone(), Some(group.clone()), instance("10.27.0.1", 1)).await.expect("r1");
    a.register_instance(s2.clone(), Some(group.clone()), instance("10.27.0.2", 2)).await.expect("r2");
    let (names, count) = wait_until(PUSH_TIMEOUT, "2 services listed", || async {
        let (n, c) = a.get_service_list(1, 50, Some(group.clone())).await.ok()?;
        (c >= 2).then_some((n, c))
    })
    .await;
    assert_eq!(count, 2);
    let mut bare: Vec<String> = names.iter().map(|n| n.rsplit("@@").next().unwrap().to_string()).collect();
    bare.sort();
    let mut want = vec![s1, s2];
    want.sort();
    assert_eq!(bare, want);
}
