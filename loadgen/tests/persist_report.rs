//! `loadgen persist` against a stand-in HTTP server that answers every request `ok` and
//! records what it was sent: every planned instance is registered exactly once, as a
//! persistent instance, and the report counts exactly the acknowledged ones.
//!
//! Being an integration test also makes `cargo test --workspace` build the `loadgen` binary
//! with the test step's features, so the fault-injection step that runs it next does not
//! build it again with others (79 s of the test command on the 2-core CI machine).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Serves keep-alive HTTP/1.1 on `listener`, answering `200 ok`, and appends each request
/// line (`METHOD /path?query`) to `seen`.
fn stand_in(listener: TcpListener, seen: Arc<Mutex<Vec<String>>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let seen = seen.clone();
        std::thread::spawn(move || serve(stream, &seen));
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut words = line.split_whitespace();
        let request = format!("{} {}", words.next().unwrap(), words.next().unwrap());
        seen.lock().unwrap().push(request);
        if out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// The value of `name` in a request line's query.
fn param<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    let query = request.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[test]
fn persist_registers_every_planned_instance_once_and_reports_exactly_the_acknowledged_ones() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server_seen = seen.clone();
    std::thread::spawn(move || stand_in(listener, server_seen));

    let dir = std::env::temp_dir().join(format!("loadgen-persist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["persist", "--targets", &format!("127.0.0.1:{port}")])
        .args(["--instances", "50", "--services", "5", "--connections", "3"])
        .args(["--ports", "10", "--no-progress", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["acked"], 50, "{report}");
    assert_eq!(report["errors"], 0, "{report}");

    let seen = seen.lock().unwrap();
    let registrations: Vec<&String> = seen
        .iter()
        .filter(|r| r.starts_with("POST /nacos/v1/ns/instance?"))
        .collect();
    assert_eq!(registrations.len(), 50, "{seen:?}");
    let addresses: BTreeSet<(String, String)> = registrations
        .iter()
        .map(|r| {
            assert_eq!(param(r, "ephemeral"), Some("false"), "{r}");
            (
                param(r, "ip").unwrap().to_string(),
                param(r, "port").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(addresses.len(), 50, "an instance was registered twice");
    let services: BTreeSet<&str> = registrations
        .iter()
        .map(|r| param(r, "serviceName").unwrap())
        .collect();
    assert_eq!(services.len(), 5, "{services:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
