//! Shared helpers of the integration tests: start the real `nacelle` binary on free ports,
//! talk to it over raw HTTP/1.1 and over the Nacos gRPC protocol (tonic client).

// Every test binary compiles this module (`mod common;`) and uses a different subset of it, so
// each would flag the helpers it does not call; every helper here is used by some test.
#![allow(dead_code)]
// Helpers panic on failure like the tests do (`tests/cluster.rs` does not allow this itself).
#![allow(clippy::unwrap_used)]

pub mod cluster;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_channel::mpsc;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use wire::proto::bi_request_stream_client::BiRequestStreamClient;
use wire::proto::request_client::RequestClient;
use wire::proto::{Metadata, Payload};

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// A running `nacelle`, killed on drop. Its log is printed when the test failed.
pub struct Server {
    child: Child,
    /// HTTP port.
    pub http: u16,
    /// gRPC port.
    pub grpc: u16,
    /// Address it is bound to.
    pub ip: String,
    log: PathBuf,
    /// Its own data directory when the test gave none (removed on drop).
    _data: Option<tempfile::TempDir>,
}

static NEXT_LOG: AtomicU64 = AtomicU64::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server with `--cores 2` plus `extra` flags and waits until it answers
    /// `/nacos/v1/ns/operator/metrics`.
    pub fn start(extra: &[&str]) -> Server {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let (http, grpc) = (free_port(), free_port());
            if http == grpc {
                continue;
            }
            match Server::spawn("127.0.0.1", http, grpc, extra) {
                Ok(s) => return s,
                Err(log) => last_log = log,
            }
        }
        panic!("nacelle did not become ready; last log:\n{last_log}");
    }

    /// Starts a server bound to `ip` on the given ports (cluster tests pick them); `Err`
    /// carries its log when it did not become ready.
    pub fn spawn(ip: &str, http: u16, grpc: u16, extra: &[&str]) -> Result<Server, String> {
        let log = std::env::temp_dir().join(format!(
            "nacelle-it-{}-{}.log",
            std::process::id(),
            NEXT_LOG.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        // Every server gets a data directory of its own unless the test chose one (to
        // restart a node on its data): two processes never share one.
        let data = if extra.contains(&"--data-dir") {
            None
        } else {
            Some(tempfile::tempdir().unwrap())
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nacelle"));
        if let Some(d) = &data {
            cmd.arg("--data-dir").arg(d.path());
        }
        let child = cmd
            .args(["--bind", ip, "--cores", "2"])
            .args(["--http-port", &http.to_string()])
            .args(["--grpc-port", &grpc.to_string()])
            .args(extra)
            .env("NACELLE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("cannot start nacelle");
        let mut server = Server {
            child,
            http,
            grpc,
            ip: ip.to_string(),
            log,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.child.try_wait() {
                break; // exited (port taken by a racing test?): try other ports
            }
            if let Ok(r) = try_http_at(ip, http, "GET", "/nacos/v1/ns/operator/metrics", None) {
                // 403: it answers, but with --auth this call needs credentials.
                if r.status == 200 || r.status == 403 {
                    return Ok(server);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::fs::read_to_string(&server.log).unwrap_or_default())
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process as an orchestrator does (SIGTERM) and waits for it to exit;
    /// `Err` if it is still running after `within` (then it is killed).
    pub fn terminate(&mut self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        // SAFETY: sending a signal to our own child process, which has not been reaped.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "cannot send SIGTERM");
        while started.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return if status.success() {
                    Ok(started.elapsed())
                } else {
                    Err(format!("exited with {status}"))
                };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
        Err(format!("still running {within:?} after SIGTERM"))
    }

    /// Whether the process is still running (it never exits by itself).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// HTTP request to this server (panics on transport errors).
    pub fn http(&self, method: &str, path: &str) -> HttpResp {
        try_http_at(&self.ip, self.http, method, path, None)
            .unwrap_or_else(|e| panic!("{method} {path} on {}:{}: {e}", self.ip, self.http))
    }

    /// HTTP request with a form body.
    pub fn http_form(&self, method: &str, path: &str, form: &str) -> HttpResp {
        try_http_at(
            &self.ip,
            self.http,
            method,
            path,
            Some(("application/x-www-form-urlencoded", form.as_bytes())),
        )
        .unwrap_or_else(|e| panic!("{method} {path} on {}:{}: {e}", self.ip, self.http))
    }

    /// `GET /nacos/v1/ns/operator/metrics` as JSON.
    pub fn operator_metrics(&self) -> Value {
        let r = self.http("GET", "/nacos/v1/ns/operator/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// One sample of the Prometheus `/metrics` text (`name` includes labels, e.g.
    /// `nacelle_requests_total{kind="grpc_instance"}`).
    pub fn prometheus(&self, name: &str) -> f64 {
        let r = self.http("GET", "/metrics");
        assert_eq!(r.status, 200);
        prometheus_sample(&r.text(), name).unwrap_or_else(|| panic!("no sample {name}"))
    }

    /// Sends `method path` and asserts Nacos's plain `ok` answer.
    pub fn ok(&self, method: &str, path: &str) {
        let r = self.http(method, path);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "{method} {path}"
        );
    }

    /// The ports of every listed host of a DEFAULT_GROUP service, sorted.
    pub fn ports(&self, service: &str) -> Vec<u64> {
        let mut p: Vec<u64> = self
            .hosts(service)
            .iter()
            .map(|h| h["port"].as_u64().unwrap())
            .collect();
        p.sort();
        p
    }

    /// The hosts of `/nacos/v1/ns/instance/list` for a DEFAULT_GROUP service.
    pub fn hosts(&self, service: &str) -> Vec<Value> {
        let r = self.http(
            "GET",
            &format!("/nacos/v1/ns/instance/list?serviceName={service}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["hosts"].as_array().cloned().unwrap_or_default()
    }

    /// `ip:port` of each listed host, sorted.
    pub fn endpoints(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .hosts(service)
            .iter()
            .map(|h| format!("{}:{}", h["ip"].as_str().unwrap(), h["port"]))
            .collect();
        v.sort();
        v
    }

    /// Waits (up to `within`) until the hosts of `service` are exactly `expected` (sorted
    /// `ip:port`s); panics with the last list otherwise.
    pub fn wait_endpoints(&self, service: &str, expected: &[&str], within: Duration) {
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut last = Vec::new();
        let ok = wait_until(within, || {
            last = self.endpoints(service);
            last == want
        });
        assert!(
            ok,
            "{service}: expected {want:?}, still {last:?} after {within:?}"
        );
    }

    /// Asserts the server still answers HTTP and gRPC (a new connection registers and reads).
    pub async fn assert_healthy(&mut self) {
        assert!(self.is_running(), "nacelle exited; log:\n{}", self.log());
        assert_eq!(self.operator_metrics()["status"], "UP");
        let mut c = Conn::open(self.grpc).await;
        let svc = format!("healthcheck-{}", NEXT_LOG.fetch_add(1, Ordering::Relaxed));
        let (kind, v) = c.register(&svc, "10.255.0.1", 1).await;
        assert_eq!(kind, "InstanceResponse", "{v}");
        let (kind, v) = c.query(&svc).await;
        assert_eq!(kind, "QueryServiceResponse", "{v}");
        assert_eq!(v["serviceInfo"]["hosts"].as_array().unwrap().len(), 1);
        let (kind, _) = c.deregister(&svc, "10.255.0.1", 1).await;
        assert_eq!(kind, "InstanceResponse");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- nacelle log (http {}, grpc {}) ----\n{}",
                self.http,
                self.grpc,
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Polls `f` every 25 ms until it is true or `within` has passed; returns the last answer.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Finds one sample in Prometheus text.
pub fn prometheus_sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------------------------

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResp {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResp {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

/// One request on a fresh connection (`Connection: close`); panics on transport errors.
pub fn http(port: u16, method: &str, path: &str, body: Option<(&str, &[u8])>) -> HttpResp {
    try_http(port, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: transport error {e}"))
}

/// One request on a fresh connection (`Connection: close`).
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<HttpResp> {
    try_http_at("127.0.0.1", port, method, path, body)
}

/// [`try_http`] to another loopback address (cluster tests give each node its own).
pub fn try_http_at(
    ip: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<HttpResp> {
    let mut s = TcpStream::connect((ip, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\nUser-Agent: nacelle-it\r\n");
    match body {
        Some((ctype, b)) => {
            req.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                b.len()
            ));
            let mut bytes = req.into_bytes();
            bytes.extend_from_slice(b);
            s.write_all(&bytes)?;
        }
        None => {
            req.push_str("\r\n");
            s.write_all(req.as_bytes())?;
        }
    }
    read_response(&mut s)
}

/// Reads one response until the server closes the connection.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<HttpResp> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // The server may reset after answering (unread request bytes): keep what came.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<HttpResp> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[head_end + 4..];
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = at + rest[at..].windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).ok()?.trim(), 16)
                    .ok()?;
            at = line_end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
        out
    } else if let Some(len) = headers.get("content-length") {
        rest.get(..len.parse().ok()?)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(HttpResp {
        status,
        headers,
        body,
    })
}

/// Percent-encodes a query/form value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// gRPC (Nacos payloads)
// ---------------------------------------------------------------------------------------------

/// A payload of class `kind` whose body is `body` (JSON).
pub fn payload(kind: &str, body: &Value) -> Payload {
    raw_payload(kind, serde_json::to_vec(body).unwrap())
}

/// A payload of class `kind` with arbitrary body bytes.
pub fn raw_payload(kind: &str, body: Vec<u8>) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_owned(),
            client_ip: "127.0.0.1".to_owned(),
            headers: HashMap::new(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: body,
        }),
    }
}

/// `(metadata.type, JSON body)` of a payload (panics if the body is not JSON).
pub fn open(p: &Payload) -> (String, Value) {
    let kind = p
        .metadata
        .as_ref()
        .map(|m| m.r#type.clone())
        .unwrap_or_default();
    let body = p.body.as_ref().map(|b| b.value.as_slice()).unwrap_or(b"");
    let v = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{kind} body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    (kind, v)
}

/// An instance as the SDKs send it.
pub fn instance(ip: &str, port: u16) -> Value {
    json!({"ip": ip, "port": port, "weight": 1.0, "healthy": true, "enabled": true,
           "ephemeral": true, "clusterName": "DEFAULT", "metadata": {}})
}

/// A naming request body for a DEFAULT_GROUP service in `public`, plus `extra` fields.
pub fn naming_body(service: &str, extra: Value) -> Value {
    let mut v = json!({"headers": {}, "namespace": "public", "serviceName": service,
                       "groupName": "DEFAULT_GROUP", "module": "naming"});
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

/// A tonic channel (one HTTP/2 connection) to the gRPC port.
pub async fn channel(grpc: u16) -> Channel {
    channel_with(grpc, |e| e).await
}

/// A tonic channel with endpoint settings changed by `tweak`.
pub async fn channel_with(grpc: u16, tweak: impl FnOnce(Endpoint) -> Endpoint) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    tweak(endpoint)
        .connect()
        .await
        .expect("cannot connect to the gRPC port")
}

/// One SDK-like connection: a unary client and the bi-stream, on the same HTTP/2 connection.
pub struct Conn {
    /// The shared channel.
    pub channel: Channel,
    /// Unary `/Request/request`.
    pub unary: RequestClient<Channel>,
    /// Client-to-server half of the bi-stream (None before `open_stream`).
    pub tx: Option<mpsc::UnboundedSender<Payload>>,
    /// Server-to-client half of the bi-stream.
    pub rx: Option<Streaming<Payload>>,
    /// From ServerCheckResponse.
    pub connection_id: String,
}

impl Conn {
    /// A bare connection: no ServerCheck, no stream.
    pub async fn bare(grpc: u16) -> Conn {
        Conn::bare_with(grpc, |e| e).await
    }

    /// A bare connection with endpoint settings changed by `tweak`.
    pub async fn bare_with(grpc: u16, tweak: impl FnOnce(Endpoint) -> Endpoint) -> Conn {
        let channel = channel_with(grpc, tweak).await;
        Conn {
            unary: RequestClient::new(channel.clone()),
            channel,
            tx: None,
            rx: None,
            connection_id: String::new(),
        }
    }

    /// A connection set up as the Python SDK does: ServerCheck, bi-stream,
    /// ConnectionSetupRequest with an abilityTable, then wait for SetupAckRequest.
    pub async fn open(grpc: u16) -> Conn {
        Conn::open_with(grpc, |e| e).await
    }

    /// [`Conn::open`] with endpoint settings changed by `tweak`.
    pub async fn open_with(grpc: u16, tweak: impl FnOnce(Endpoint) -> Endpoint) -> Conn {
        let mut c = Conn::bare_with(grpc, tweak).await;
        let (kind, v) = c
            .call(
                "ServerCheckRequest",
                &json!({"headers": {}, "module": "internal"}),
            )
            .await;
        assert_eq!(kind, "ServerCheckResponse", "{v}");
        c.connection_id = v["connectionId"].as_str().unwrap_or_default().to_owned();
        c.open_stream().await;
        c.setup().await;
        let (kind, _) = c
            .next_push(Duration::from_secs(5))
            .await
            .expect("no SetupAckRequest after ConnectionSetupRequest");
        assert_eq!(kind, "SetupAckRequest");
        c
    }

    /// Opens the bi-stream.
    pub async fn open_stream(&mut self) {
        let (tx, rx) = mpsc::unbounded::<Payload>();
        let mut bi = BiRequestStreamClient::new(self.channel.clone());
        let resp = bi.request_bi_stream(rx).await.expect("bi-stream refused");
        self.tx = Some(tx);
        self.rx = Some(resp.into_inner());
    }

    /// Sends ConnectionSetupRequest (naming labels, with abilityTable).
    pub async fn setup(&mut self) {
        self.send(payload(
            "ConnectionSetupRequest",
            &json!({"headers": {}, "clientVersion": "Nacos-Python-Client:v3.2.0", "tenant": "",
                    "labels": {"source": "sdk", "module": "naming"},
                    "abilityTable": {"mcp": true}, "module": "internal"}),
        ));
    }

    /// Sends a payload on the bi-stream.
    pub fn send(&self, p: Payload) {
        self.tx
            .as_ref()
            .expect("no bi-stream")
            .unbounded_send(p)
            .expect("bi-stream closed");
    }

    /// The next server-to-client payload on the stream, or None on timeout/end/error.
    pub async fn next_push(&mut self, within: Duration) -> Option<(String, Value)> {
        let rx = self.rx.as_mut().expect("no bi-stream");
        match tokio::time::timeout(within, rx.message()).await {
            Ok(Ok(Some(p))) => Some(open(&p)),
            _ => None,
        }
    }

    /// Reads pushes until `pred` matches one, answering ClientDetection and acking
    /// NotifySubscriber pushes on the way.
    pub async fn wait_push(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&str, &Value) -> bool,
    ) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let (kind, v) = self.next_push(left).await?;
            self.answer(&kind, &v);
            if pred(&kind, &v) {
                return Some((kind, v));
            }
        }
    }

    /// Answers a server request as the SDKs do (acks carry the request id).
    pub fn answer(&self, kind: &str, v: &Value) {
        let rid = v["requestId"].as_str().unwrap_or_default();
        let reply = match kind {
            "NotifySubscriberRequest" => "NotifySubscriberResponse",
            "ClientDetectionRequest" => "ClientDetectionResponse",
            _ => return,
        };
        self.send(payload(
            reply,
            &json!({"resultCode": 200, "errorCode": 0, "requestId": rid, "success": true}),
        ));
    }

    /// A unary call; panics on gRPC transport errors.
    pub async fn call(&mut self, kind: &str, body: &Value) -> (String, Value) {
        let p = self
            .unary
            .request(payload(kind, body))
            .await
            .unwrap_or_else(|s| panic!("{kind}: gRPC status {s:?}"))
            .into_inner();
        open(&p)
    }

    /// A unary call with a raw payload.
    pub async fn call_raw(&mut self, p: Payload) -> Result<Payload, tonic::Status> {
        self.unary.request(p).await.map(|r| r.into_inner())
    }

    /// Registers one instance in a DEFAULT_GROUP service.
    pub async fn register(&mut self, service: &str, ip: &str, port: u16) -> (String, Value) {
        self.call(
            "InstanceRequest",
            &naming_body(
                service,
                json!({"type": "registerInstance", "instance": instance(ip, port)}),
            ),
        )
        .await
    }

    /// Deregisters one instance.
    pub async fn deregister(&mut self, service: &str, ip: &str, port: u16) -> (String, Value) {
        self.call(
            "InstanceRequest",
            &naming_body(
                service,
                json!({"type": "deregisterInstance", "instance": instance(ip, port)}),
            ),
        )
        .await
    }

    /// ServiceQueryRequest.
    pub async fn query(&mut self, service: &str) -> (String, Value) {
        self.call(
            "ServiceQueryRequest",
            &naming_body(
                service,
                json!({"cluster": "", "healthyOnly": false, "udpPort": 0}),
            ),
        )
        .await
    }

    /// SubscribeServiceRequest.
    pub async fn subscribe(&mut self, service: &str) -> (String, Value) {
        self.call(
            "SubscribeServiceRequest",
            &naming_body(service, json!({"subscribe": true, "clusters": ""})),
        )
        .await
    }
}

/// `ip:port`s of a ServiceInfo's hosts, sorted.
pub fn service_info_endpoints(service_info: &Value) -> Vec<String> {
    let mut v: Vec<String> = service_info["hosts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| format!("{}:{}", h["ip"].as_str().unwrap_or("?"), h["port"]))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
