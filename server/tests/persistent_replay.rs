//! A restart whose Raft log replay holds far more batches than the cores' inboxes: the replay
//! runs inside the Raft node's start, before the cores read their inboxes, so bounded inboxes
//! alone would block the start for good (found by perf/persistent.sh at 1,000,000 instances:
//! no answer after minutes at 0 % CPU). The inboxes are made tiny here
//! (`NACELLE_CP_INBOX_BATCHES`) so that a few hundred entries do what 46,000 did there.
//! One test in this binary: the environment it sets reaches only the servers it starts.
#![allow(clippy::unwrap_used)]

mod common;

use common::{enc, Server};

const NS: &str = "/nacos/v1/ns";

#[test]
fn a_log_longer_than_the_inboxes_replays_and_the_restarted_node_lists_every_instance() {
    // Set before any thread or process starts: nothing else in this binary reads it.
    std::env::set_var("NACELLE_CP_INBOX_BATCHES", "2");
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data-dir", dir.path().to_str().unwrap()];
    let mut s = Server::start(&args);
    s.ok("POST", &format!("{NS}/service?serviceName=db"));
    s.ok(
        "PUT",
        &format!(
            "{NS}/cluster?serviceName=db&clusterName=DEFAULT&checkPort=80&useInstancePort4Check=true&healthChecker={}",
            enc(r#"{"type":"NONE"}"#)
        ),
    );
    // One at a time: each registration is its own log entry, so each is a batch to replay.
    for port in 1..=200u64 {
        s.ok(
            "POST",
            &format!("{NS}/instance?serviceName=db&ip=127.0.0.1&port={port}&ephemeral=false"),
        );
    }
    assert_eq!(s.ports("db").len(), 200);
    s.kill();

    // The restart answers at all, and its first answer has everything (the replay gate).
    let s = Server::start(&args);
    assert_eq!(
        s.ports("db"),
        (1..=200).collect::<Vec<u64>>(),
        "{}",
        s.log()
    );
}
