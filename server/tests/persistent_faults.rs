//! The persistent path under faults, against the real binary: a torn tail of the Raft log
//! (power loss mid-write) is cut and the node starts with every acknowledged write; any other
//! corruption stops the node with a message naming the file, never a panic, never a start
//! without the data; and a persistent write that finds no Raft leader is refused with 503
//! within the bound, never acknowledged. Persistent instances only on 127.0.0.1, health
//! checks off (NONE: this file is about storage).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{enc, Server};

const NS: &str = "/nacos/v1/ns";

fn ok(s: &Server, method: &str, path: &str) {
    let r = s.http(method, path);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "{method} {path}"
    );
}

/// `n` acknowledged persistent registrations (ports 1..=n of 127.0.0.1) in service `db`,
/// health checks off.
fn fill(s: &Server, n: u16) {
    // A defined service first: a cluster definition needs its service (Nacos: 404).
    ok(s, "POST", &format!("{NS}/service?serviceName=db"));
    ok(
        s,
        "PUT",
        &format!(
            "{NS}/cluster?serviceName=db&clusterName=DEFAULT&checkPort=80&useInstancePort4Check=true&healthChecker={}",
            enc(r#"{"type":"NONE"}"#)
        ),
    );
    for port in 1..=n {
        ok(
            s,
            "POST",
            &format!("{NS}/instance?serviceName=db&ip=127.0.0.1&port={port}&ephemeral=false"),
        );
    }
}

fn ports_listed(s: &Server) -> Vec<u64> {
    let mut p: Vec<u64> = s
        .hosts("db")
        .iter()
        .map(|h| h["port"].as_u64().unwrap())
        .collect();
    p.sort();
    p
}

/// The segment the log appends to (the highest-numbered one).
fn last_segment(data: &Path) -> PathBuf {
    let dir = data.join("raft").join("log");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.pop()
        .unwrap_or_else(|| panic!("no segment in {}", dir.display()))
}

#[test]
fn a_torn_tail_of_the_log_is_cut_and_the_node_starts_with_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data-dir", dir.path().to_str().unwrap()];
    let mut s = Server::start(&args);
    fill(&s, 40);
    s.kill();
    // Power loss in the middle of appending: half a record header, then nothing.
    let seg = last_segment(dir.path());
    let before = std::fs::metadata(&seg).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0x2a, 0, 0, 0, 0x11, 0x22]).unwrap();
    drop(f);

    let s = Server::start(&args);
    assert_eq!(ports_listed(&s), (1..=40).collect::<Vec<u64>>());
    assert!(
        s.log().contains("torn tail cut off"),
        "the cut is not reported:\n{}",
        s.log()
    );
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), before);
    // And it goes on writing after the cut.
    ok(
        &s,
        "POST",
        &format!("{NS}/instance?serviceName=db&ip=127.0.0.1&port=41&ephemeral=false"),
    );
    assert_eq!(ports_listed(&s).len(), 41);
}

/// Runs nacelle on `data` and waits (≤ 20 s) for it to exit: its status and its output.
fn run_to_exit(data: &Path) -> (std::process::ExitStatus, String) {
    let log = data.join("exit.log");
    let out = std::fs::File::create(&log).unwrap();
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (http, grpc) = (free(), free());
    let mut child = Command::new(env!("CARGO_BIN_EXE_nacelle"))
        .args(["--bind", "127.0.0.1", "--cores", "1"])
        .args([
            "--http-port",
            &http.to_string(),
            "--grpc-port",
            &grpc.to_string(),
        ])
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, std::fs::read_to_string(&log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nacelle still running on a corrupt store:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn corruption_inside_the_log_stops_the_node_naming_the_file_and_a_repair_is_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data-dir", dir.path().to_str().unwrap()];
    let mut s = Server::start(&args);
    fill(&s, 40);
    s.kill();
    // A bit flips in the middle of the log (bad disk, not a torn write): far from the tail.
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();

    let (status, out) = run_to_exit(dir.path());
    assert!(!status.success(), "started on a corrupt log:\n{out}");
    assert!(
        out.contains(&seg.display().to_string()),
        "the message does not name {}:\n{out}",
        seg.display()
    );
    assert!(
        out.contains("CRC mismatch") || out.contains("bad record header"),
        "the message does not say what is wrong:\n{out}"
    );
    assert!(!out.contains("panicked"), "a panic:\n{out}");
    // Nothing was cut or rewritten: the operator's file is as it was.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[test]
fn an_unreadable_vote_file_stops_the_node_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data-dir", dir.path().to_str().unwrap()];
    let mut s = Server::start(&args);
    fill(&s, 1);
    s.kill();
    let vote = dir.path().join("raft").join("log").join("vote");
    let mut bytes = std::fs::read(&vote).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&vote, &bytes).unwrap();
    let (status, out) = run_to_exit(dir.path());
    assert!(!status.success(), "started with a corrupt vote:\n{out}");
    assert!(out.contains(&vote.display().to_string()), "{out}");
    assert!(out.contains("CRC mismatch"), "{out}");
    assert!(!out.contains("panicked"), "a panic:\n{out}");
}

#[test]
fn a_persistent_write_without_a_raft_leader_is_refused_with_503_within_the_bound() {
    // One member of three running: no majority, so no leader can be elected (and, until
    // cluster mode carries Raft over the peer transport, a cluster node refuses persistent
    // writes outright): either way a refusal within the 3 s bound, never a success.
    let mut members = Vec::new();
    while members.len() < 3 {
        let http = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let free = http.checked_add(1001).is_some_and(|p| {
            UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && http
                    .checked_add(500)
                    .is_some_and(|g| TcpListener::bind(("127.0.0.1", g)).is_ok())
        });
        if free && !members.contains(&http) {
            members.push(http);
        }
    }
    let list = members
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let s = Server::spawn(
        "127.0.0.1",
        members[0],
        members[0] + 500,
        &["--members", &list, "--insecure"],
    )
    .unwrap();
    for path in [
        format!("{NS}/instance?serviceName=lonely&ip=127.0.0.1&port=7&ephemeral=false"),
        "/nacos/v2/ns/instance?serviceName=lonely&ip=127.0.0.1&port=8&ephemeral=false".to_owned(),
    ] {
        let t = Instant::now();
        let r = s.http("POST", &path);
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{path}: {} {}", r.status, r.text());
        assert!(
            took < Duration::from_millis(3500),
            "{path}: refused only after {took:?}"
        );
        if path.starts_with("/nacos/v2/") {
            assert_eq!(r.json()["code"], 503, "{}", r.text());
        }
    }
    assert!(s.hosts("lonely").is_empty(), "a refused write is listed");
}
