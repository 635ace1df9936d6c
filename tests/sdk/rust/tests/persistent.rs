//! Persistent instances (`ephemeral: false`) through crates.io `nacos-sdk` 0.8.3, which sends
//! them as gRPC `PersistentInstanceRequest`s. The server health-checks them itself (a TCP
//! connect to their port by default), so they are real listeners on 127.0.0.1 — never any
//! other address: the server connects to whatever was registered.

use std::net::TcpListener;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nacelle_sdk_conformance_rust::*;
use nacos_sdk::api::naming::ServiceInstance;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A refused connect flips at once; probes come every 5 s (the first within about 7 s).
const FLIP_TIMEOUT: Duration = Duration::from_secs(20);

/// A listener on 127.0.0.1 accepting (and closing) every connection until dropped.
struct Target {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    listener: Option<TcpListener>,
}

impl Target {
    fn open() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (l, n) = (listener.try_clone().expect("clone"), accepted.clone());
        std::thread::spawn(move || loop {
            if stopped.try_recv().is_ok() {
                return;
            }
            match l.accept() {
                Ok(_) => {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        });
        Target {
            port,
            accepted,
            stop: Some(stop),
            listener: Some(listener),
        }
    }

    /// Stops listening: from now on a connect is refused.
    fn close(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // The accept thread holds a clone; give it a moment to see the stop and drop it.
        std::thread::sleep(Duration::from_millis(100));
        self.listener = None;
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.close();
    }
}

fn persistent(port: u16) -> ServiceInstance {
    let mut i = instance("127.0.0.1", i32::from(port));
    i.ephemeral = false;
    i
}

/// `(port, healthy, ephemeral)` of every instance, by a direct query (no SDK cache).
async fn state(ns: &nacos_sdk::api::naming::NamingService, svc: &str) -> Vec<(i32, bool, bool)> {
    let mut v: Vec<_> = ns
        .get_all_instances(svc.to_string(), Some(GROUP.into()), vec![], false)
        .await
        .unwrap_or_else(|e| panic!("get_all_instances({svc}): {e}"))
        .iter()
        .map(|i| (i.port, i.healthy, i.ephemeral))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_instance_outlives_its_client_flips_unhealthy_when_its_port_closes_and_is_deregistered(
) {
    known_gap(
        &["rnacos", "nacelle-cluster"],
        "r-nacos: no PersistentInstanceRequest; a Nacelle cluster refuses persistent writes (503) until its Raft group runs over the peer transport",
        body(),
    )
    .await;
}

async fn body() {
    let svc = unique_service("pers");
    // `steady` stays up: with every instance unhealthy the protect threshold (0, as Nacos)
    // would answer them all as healthy.
    let mut target = Target::open();
    let steady = Target::open();
    let (t, s) = (i32::from(target.port), i32::from(steady.port));
    let mut both_up = vec![(t, true, false), (s, true, false)];
    both_up.sort();

    // Registered by a process that then dies without deregistering: persistent instances
    // are not the connection's, only a deregistration removes them.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args([
            svc.clone(),
            format!("127.0.0.1:{t}"),
            format!("127.0.0.1:{s}"),
        ])
        .env("REGISTRAR_PERSISTENT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn registrar");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("registrar did not report in time")
        .expect("read registrar stdout");
    assert_eq!(line.as_deref(), Some("REGISTERED"));

    let watcher = new_naming("pers-watcher").await;
    assert_eq!(state(&watcher, &svc).await, both_up);
    child.kill().await.expect("kill registrar");
    // Longer than the server takes to drop a dead connection's ephemeral instances.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_until(
        FLIP_TIMEOUT,
        "the server's TCP checks reaching both listeners",
        || async {
            (target.accepted.load(Ordering::Relaxed) > 0
                && steady.accepted.load(Ordering::Relaxed) > 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        state(&watcher, &svc).await,
        both_up,
        "gone with the registering process"
    );

    target.close();
    let mut flipped = vec![(t, false, false), (s, true, false)];
    flipped.sort();
    wait_until(
        FLIP_TIMEOUT,
        "the closed port's instance unhealthy",
        || async { (state(&watcher, &svc).await == flipped).then_some(()) },
    )
    .await;

    for port in [t, s] {
        watcher
            .deregister_instance(svc.clone(), Some(GROUP.into()), persistent(port as u16))
            .await
            .expect("deregister persistent");
    }
    wait_until(PUSH_TIMEOUT, "both deregistered", || async {
        state(&watcher, &svc).await.is_empty().then_some(())
    })
    .await;
}
