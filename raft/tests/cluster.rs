//! Nodes on the real on-disk store, in one process, over an in-memory transport whose
//! messages go through postcard bytes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{no_tweak, register, rt, sink, Cluster, NoNet};
use engine::store::StoreResponse;
use nacelle_raft::{RaftConfig, RaftNode, Role, StartError, WriteError};

#[test]
fn standalone_writes_are_applied_before_they_resolve_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut c = Cluster::new(dir.path(), &[1], no_tweak);
    c.wait_leader(Duration::from_secs(5));
    let h = c.h(1).clone();
    let model = c.models[&1].clone();
    let written = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..500u16 {
            let h = h.clone();
            let model = model.clone();
            tasks.push(tokio::spawn(async move {
                let w = h.write(register("svc", i)).await.expect("write");
                // Read-your-writes: the effects were delivered before the write resolved.
                let m = model.lock().expect("model");
                assert!(m.last_index >= w.index);
                assert!(m.instances.contains(&("svc".to_string(), i)));
                assert_eq!(w.response, StoreResponse::Done { changed: true });
                w.index
            }));
        }
        let mut indexes = BTreeSet::new();
        for t in tasks {
            indexes.insert(t.await.expect("task"));
        }
        indexes
    });
    // Batched: far fewer entries than writes.
    assert!(
        written.len() < 500,
        "{} entries for 500 writes",
        written.len()
    );
    let want: BTreeSet<_> = (0..500u16).map(|i| ("svc".to_string(), i)).collect();
    c.stop(1);
    c.start(1);
    c.wait_leader(Duration::from_secs(5));
    c.wait_converged(&want, Duration::from_secs(5));
    c.stop_all();
}

#[test]
fn a_second_node_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let members: BTreeSet<u64> = [1].into();
    let first = RaftNode::start(
        RaftConfig::new(1, members.clone(), dir.path()),
        NoNet,
        sink(Default::default()),
    )
    .expect("first");
    let second = RaftNode::start(
        RaftConfig::new(1, members, dir.path()),
        NoNet,
        sink(Default::default()),
    );
    match second {
        Err(StartError::Storage(e)) => {
            assert_eq!(e.path, dir.path().join("raft"));
            assert!(e.what.contains("locked"), "{e}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("two nodes on one directory"),
    }
    first.shutdown();
}

#[test]
fn a_directory_written_by_another_node_id_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut c = Cluster::new(dir.path(), &[1], no_tweak);
    c.wait_leader(Duration::from_secs(5));
    rt.block_on(c.h(1).write(register("s", 1))).expect("write");
    c.stop(1);
    // Node 1's directory under another id (a standalone node's data started as a member).
    let other = RaftNode::start(
        RaftConfig::new(7, [7, 8, 9].into(), c.dir(1)),
        NoNet,
        sink(Default::default()),
    );
    match other {
        Err(StartError::Storage(e)) => {
            assert_eq!(e.path, c.dir(1).join("raft").join("NODE"));
            assert!(
                e.what.contains("belongs to node 1, not to this node (7)"),
                "{e}"
            );
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("started on another node's directory"),
    }
    // Its owner still starts, with its data.
    c.start(1);
    c.wait_leader(Duration::from_secs(5));
    c.wait_converged(&[("s".to_string(), 1)].into(), Duration::from_secs(5));
    c.stop_all();
}

#[test]
fn three_nodes_write_anywhere_survive_leader_loss_and_full_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut c = Cluster::new(dir.path(), &[1, 2, 3], no_tweak);
    let leader = c.wait_leader(Duration::from_secs(10));
    let mut want = BTreeSet::new();
    // Writes on every node, concurrently.
    rt.block_on(async {
        let mut tasks = Vec::new();
        for id in 1..=3u64 {
            for i in 0..100u16 {
                let h = c.h(id).clone();
                let port = id as u16 * 1000 + i;
                tasks.push(tokio::spawn(async move {
                    (port, h.write(register("s", port)).await)
                }));
            }
        }
        for t in tasks {
            let (port, r) = t.await.expect("task");
            r.unwrap_or_else(|e| panic!("write {port}: {e}"));
            want.insert(("s".to_string(), port));
        }
    });
    c.wait_converged(&want, Duration::from_secs(5));

    // The leader goes: writes resume on the others within 3 s.
    c.stop(leader);
    let killed = Instant::now();
    let survivor = *c.handles.keys().next().expect("a survivor");
    let mut port = 9000;
    rt.block_on(async {
        loop {
            port += 1;
            match c.h(survivor).write(register("s", port)).await {
                Ok(_) => {
                    want.insert(("s".to_string(), port));
                    break;
                }
                Err(e @ WriteError::NoLeader) | Err(e @ WriteError::Timeout) => {
                    eprintln!("{:?} {e}: {:?}", killed.elapsed(), c.h(survivor).metrics());
                }
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(
                killed.elapsed() < Duration::from_secs(6),
                "no write within 6 s"
            );
        }
    });
    let resumed = killed.elapsed();
    eprintln!("writes resumed {resumed:?} after the leader was stopped");
    assert!(
        resumed < Duration::from_secs(3),
        "writes resumed only after {resumed:?}"
    );

    // Everything restarted from disk: every acknowledged write is there, on every node.
    c.stop_all();
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_leader(Duration::from_secs(10));
    c.wait_converged(&want, Duration::from_secs(10));
    c.stop_all();
}

#[test]
fn a_cut_off_node_fails_its_writes_in_bounded_time_and_converges_after_heal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut c = Cluster::new(dir.path(), &[1, 2, 3], no_tweak);
    let leader = c.wait_leader(Duration::from_secs(10));
    let lonely = *c
        .handles
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let mut want = BTreeSet::new();
    c.net.cut(lonely);
    rt.block_on(async {
        // Right after the cut the node may still believe in the leader: an error either way,
        // within the write timeout.
        let t = Instant::now();
        let r = c.h(lonely).write(register("p", 1)).await;
        assert!(r.is_err(), "a cut-off node wrote");
        assert!(
            t.elapsed() < Duration::from_millis(3500),
            "took {:?}",
            t.elapsed()
        );
        // Once it knows it has no leader: NoLeader, within the bound.
        let t = Instant::now();
        loop {
            if c.h(lonely).metrics().leader.is_none() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "still sees a leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        assert_eq!(
            c.h(lonely).write(register("p", 2)).await,
            Err(WriteError::NoLeader)
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_millis(3500),
            "took {took:?}"
        );
        // The majority goes on meanwhile.
        for port in 10..60u16 {
            let id = if port % 2 == 0 {
                leader
            } else {
                6 - leader - lonely
            };
            c.h(id)
                .write(register("p", port))
                .await
                .expect("majority write");
            want.insert(("p".to_string(), port));
        }
    });
    assert_ne!(c.h(lonely).metrics().role, Role::Leader);
    c.net.heal(lonely);
    c.wait_leader(Duration::from_secs(10));
    c.wait_converged(&want, Duration::from_secs(10));
    // And it writes again.
    rt.block_on(async {
        let t = Instant::now();
        loop {
            match c.h(lonely).write(register("p", 99)).await {
                Ok(_) => break,
                Err(e) => assert!(t.elapsed() < Duration::from_secs(5), "{e}"),
            }
        }
    });
    want.insert(("p".to_string(), 99));
    c.wait_converged(&want, Duration::from_secs(5));
    c.stop_all();
}

#[test]
fn a_cut_off_leader_acknowledges_nothing_and_its_uncommitted_write_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut c = Cluster::new(dir.path(), &[1, 2, 3], no_tweak);
    let old = c.wait_leader(Duration::from_secs(10));
    let mut want = BTreeSet::new();
    rt.block_on(async {
        c.h(old)
            .write(register("q", 1))
            .await
            .expect("write before the cut");
    });
    want.insert(("q".to_string(), 1));
    c.wait_converged(&want, Duration::from_secs(5));

    // The leader is alone: it appends the write to its own log but no majority has it, so it
    // must not answer success — an error within the bound, whatever it still believes.
    c.net.cut(old);
    rt.block_on(async {
        let t = Instant::now();
        let r = c.h(old).write(register("q", 2)).await;
        assert!(
            r.is_err(),
            "a leader without a majority acknowledged a write: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(3500),
            "took {:?}",
            t.elapsed()
        );
    });
    // The other two elect a leader and go on.
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    rt.block_on(async {
        let t = Instant::now();
        loop {
            match c.h(others[0]).write(register("q", 3)).await {
                Ok(_) => break,
                Err(e) => assert!(t.elapsed() < Duration::from_secs(8), "majority: {e}"),
            }
        }
    });
    want.insert(("q".to_string(), 3));
    // Healed, the old leader takes the new leader's log: its unacknowledged entry is cut off
    // its log and never applied anywhere.
    c.net.heal(old);
    c.wait_converged(&want, Duration::from_secs(10));
    assert_ne!(c.h(old).metrics().leader, Some(old));
    c.stop_all();
}

fn small_snapshots(c: &mut RaftConfig) {
    c.snapshot_every = 20;
    c.keep_after_snapshot = 0;
}

#[test]
fn restart_after_snapshots_and_purges_keeps_every_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut c = Cluster::new(dir.path(), &[1], small_snapshots);
    c.wait_leader(Duration::from_secs(5));
    let mut want = BTreeSet::new();
    rt.block_on(async {
        for port in 0..120u16 {
            c.h(1).write(register("r", port)).await.expect("write");
            want.insert(("r".to_string(), port));
        }
    });
    let t = Instant::now();
    while c.h(1).metrics().snapshots_built < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            c.h(1).metrics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.h(1).metrics().log_entries < 120, "{:?}", c.h(1).metrics());
    c.stop(1);
    c.start(1);
    c.wait_leader(Duration::from_secs(5));
    c.wait_converged(&want, Duration::from_secs(5));
    c.stop_all();
}

#[test]
fn a_new_member_joins_as_learner_gets_a_snapshot_is_promoted_and_can_be_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut c = Cluster::new(dir.path(), &[1, 2, 3], small_snapshots);
    let leader = c.wait_leader(Duration::from_secs(10));
    let mut want = BTreeSet::new();
    rt.block_on(async {
        // One write at a time: one entry each, so snapshots are built and the log purged.
        for port in 0..100u16 {
            c.h(leader).write(register("m", port)).await.expect("write");
            want.insert(("m".to_string(), port));
        }
    });
    let t = Instant::now();
    while c.h(leader).metrics().snapshot.is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "no snapshot built");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Node 4 starts knowing the new list; so do the others.
    c.members.insert(4);
    c.start(4);
    for h in c.handles.values() {
        h.set_members(c.members.clone());
    }
    let t = Instant::now();
    loop {
        let m = c.h(leader).metrics();
        if m.voters.contains(&4) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "4 not promoted: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        c.h(4).metrics().snapshots_installed >= 1,
        "{:?}",
        c.h(4).metrics()
    );
    c.wait_converged(&want, Duration::from_secs(10));
    rt.block_on(async {
        c.h(4)
            .write(register("m", 500))
            .await
            .expect("write on the new member");
    });
    want.insert(("m".to_string(), 500));
    c.wait_converged(&want, Duration::from_secs(5));

    // Removed again.
    c.members.remove(&4);
    for h in c.handles.values() {
        h.set_members(c.members.clone());
    }
    let t = Instant::now();
    loop {
        let m = c.h(c.wait_leader(Duration::from_secs(10))).metrics();
        if !m.voters.contains(&4) && !m.learners.contains(&4) {
            assert_eq!(m.voters, [1, 2, 3].into());
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "4 not removed: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.stop_all();
}
