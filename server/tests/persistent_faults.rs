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

/// `n` acknowledged persistent registrations (ports 1..=n of 127.0.0.1) in service `db`,
/// health checks off.
fn fill(s: &Server, n: u16) {
    // A defined service first: a cluster definition needs its service (Nacos: 404).
    s.ok("POST", &format!("{NS}/service?serviceName=db"));
    s.ok(
        "PUT",
        &format!(
            "{NS}/cluster?serviceName=db&clusterName=DEFAULT&checkPort=80&useInstancePort4Check=true&healthChecker={}",
            enc(r#"{"type":"NONE"}"#)
        ),
    );
    for port in 1..=n {
        s.ok(
            "POST",
            &format!("{NS}/instance?serviceName=db&ip=127.0.0.1&port={port}&ephemeral=false"),
        );
    }
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
    assert_eq!(s.ports("db"), (1..=40).collect::<Vec<u64>>());
    assert!(
        s.log().contains("torn tail cut off"),
        "the cut is not reported:\n{}",
        s.log()
    );
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), before);
    // And it goes on writing after the cut.
    s.ok(
        "POST",
        &format!("{NS}/instance?serviceName=db&ip=127.0.0.1&port=41&ephemeral=false"),
    );
    assert_eq!(s.ports("db").len(), 41);
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

/// One member of a three-member cluster, the other two never started: no majority, so no
/// group can be formed and no leader elected.
fn lone_member() -> Server {
    // Ports are picked free but not held: a test running beside this one may take one
    // first, so a failed start is retried on other ports.
    let mut last = String::new();
    for _ in 0..5 {
        match try_lone_member() {
            Ok(s) => return s,
            Err(e) => last = e,
        }
    }
    panic!("cannot start a lone member: {last}");
}

fn try_lone_member() -> Result<Server, String> {
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
    Server::spawn(
        "127.0.0.1",
        members[0],
        members[0] + 500,
        &["--members", &list, "--insecure"],
    )
}

/// The write bound (3 s, `RaftConfig::write_timeout`) plus room for a loaded 2-core machine:
/// what this asserts is "refused in bounded time, never a hang", not a latency.
const REFUSED_WITHIN: Duration = Duration::from_millis(4500);

#[test]
fn a_persistent_write_without_a_raft_leader_is_refused_with_503_within_the_bound() {
    // The write waits out the bound for a leader and is refused with 503, never a success.
    let s = lone_member();
    for path in [
        format!("{NS}/instance?serviceName=lonely&ip=127.0.0.1&port=7&ephemeral=false"),
        "/nacos/v2/ns/instance?serviceName=lonely&ip=127.0.0.1&port=8&ephemeral=false".to_owned(),
    ] {
        let t = Instant::now();
        let r = s.http("POST", &path);
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{path}: {} {}", r.status, r.text());
        assert!(took < REFUSED_WITHIN, "{path}: refused only after {took:?}");
        if path.starts_with("/nacos/v2/") {
            assert_eq!(r.json()["code"], 503, "{}", r.text());
        }
    }
    assert!(s.hosts("lonely").is_empty(), "a refused write is listed");
}

#[tokio::test]
async fn a_grpc_persistent_instance_request_without_a_raft_leader_gets_an_error_response_503() {
    let s = lone_member();
    let mut c = common::Conn::bare(s.grpc).await;
    c.open_stream().await;
    c.setup().await;
    let t = Instant::now();
    let (kind, v) = c
        .call(
            "PersistentInstanceRequest",
            &common::naming_body(
                "lonely-grpc",
                serde_json::json!({
                    "type": "registerInstance",
                    "instance": common::instance("127.0.0.1", 9),
                }),
            ),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(kind, "ErrorResponse", "{v}");
    assert_eq!(v["errorCode"], 503, "{v}");
    assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    assert!(took < REFUSED_WITHIN, "refused only after {took:?}");
    assert!(
        s.hosts("lonely-grpc").is_empty(),
        "a refused write is listed"
    );
}
