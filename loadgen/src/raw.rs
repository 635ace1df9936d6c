//! A cheap Nacos gRPC client for overload tests: HTTP/2 with the `h2` crate, requests sent as
//! pre-encoded bytes, answers classified without decoding them.
//!
//! The tonic client of [`crate::grpc`] spends about as much CPU per query as the server does
//! answering it (protobuf and JSON per request, tower buffering, hyper), so one generator core
//! cannot overload one server core with it. Here a request is a clone of a `Bytes` that already
//! holds the gRPC frame (5-byte prefix + the protobuf `Payload` with its JSON body), written on
//! a new stream of a shared `h2` connection. The answer is classified by [`classify`]: the
//! gRPC status, then the `Payload`'s `metadata.type` and, for an `ErrorResponse`, the
//! `errorCode` found by a scan of the JSON (no JSON parser).
//!
//! The server identifies a Nacos connection by its transport, so the handshake runs on the same
//! HTTP/2 connection, like [`crate::grpc::Conn::connect`] does with tonic: unary
//! `ServerCheckRequest`, then `BiRequestStream` opened with `ConnectionSetupRequest`, then wait
//! for `SetupAckRequest`. A reader task answers what the server asks on the stream
//! (`ClientDetectionRequest`, `NotifySubscriberRequest`, `ConnectResetRequest`); handshake and
//! stream messages are decoded with prost (they are rare). No idle health checks: a flood
//! connection is never idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, Uri};
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire::payload::{ok, open, seal};
use wire::proto::Payload;

use crate::grpc::counters;
use crate::stats::OpError;

/// `Request/request` (unary) path.
const UNARY_PATH: &str = "/Request/request";
/// `BiRequestStream/requestBiStream` path.
const STREAM_PATH: &str = "/BiRequestStream/requestBiStream";
/// Largest gRPC message accepted on the bi-stream.
const MAX_MESSAGE: usize = 64 << 20;

/// gRPC framing: 1 byte "compressed" flag (0), 4 bytes big-endian length, the message.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.freeze()
}

/// The gRPC frame of a `Payload` of class `kind` with a JSON body: built once, sent many
/// times.
pub fn encode_request(kind: &str, json: Vec<u8>) -> Bytes {
    grpc_frame(&seal(kind, json).encode_to_vec())
}

/// Name of a gRPC status code, as `tonic::Code`'s `Debug` spells it (so `grpc:<name>` error
/// kinds match the tonic client's).
fn grpc_code_name(code: &[u8]) -> String {
    let name = match code {
        b"1" => "Cancelled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        other => return format!("status-{}", String::from_utf8_lossy(other)),
    };
    name.to_owned()
}

/// Reads one protobuf varint at `*pos`.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Finds the last occurrence of length-delimited field `field` among the top-level fields of
/// the protobuf message `msg` (proto3: a repeated scalar's last value wins, and so does a
/// message's for our purpose). `None` if absent or if the message is malformed.
fn len_field(msg: &[u8], field: u64) -> Option<&[u8]> {
    let mut pos = 0;
    let mut found = None;
    while pos < msg.len() {
        let key = varint(msg, &mut pos)?;
        match key & 7 {
            0 => {
                varint(msg, &mut pos)?;
            }
            1 => pos = pos.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(msg, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                let v = msg.get(pos..end)?;
                if key >> 3 == field {
                    found = Some(v);
                }
                pos = end;
            }
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
        if pos > msg.len() {
            return None;
        }
    }
    found
}

/// The integer after `"key":` in a JSON text (first occurrence, spaces allowed), without
/// parsing the JSON.
fn json_int(json: &[u8], key: &[u8]) -> Option<i64> {
    let mut from = 0;
    while let Some(at) = find(&json[from..], key) {
        // `key` includes its quotes, so `"a"` does not match inside `"ab"`; it must be
        // followed by optional spaces and a colon to be a key rather than a value.
        let mut p = from + at + key.len();
        from = p;
        while json.get(p).is_some_and(|b| b.is_ascii_whitespace()) {
            p += 1;
        }
        if json.get(p) != Some(&b':') {
            continue;
        }
        p += 1;
        while json.get(p).is_some_and(|b| b.is_ascii_whitespace()) {
            p += 1;
        }
        let neg = json.get(p) == Some(&b'-');
        if neg {
            p += 1;
        }
        let start = p;
        let mut v: i64 = 0;
        while let Some(d) = json.get(p).filter(|b| b.is_ascii_digit()) {
            v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
            p += 1;
        }
        if p == start {
            return None;
        }
        return Some(if neg { -v } else { v });
    }
    None
}

/// Position of `needle` in `hay` (naive; the texts searched are short error bodies).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Classifies the gRPC message (without its 5-byte prefix) of a `Payload` answer: anything but
/// an `ErrorResponse` is an answer; an `ErrorResponse` is `Nacos(errorCode)` (its `resultCode`
/// when it has no errorCode). Only the envelope is walked; a success body is never read.
pub fn classify(payload: &[u8]) -> Result<(), OpError> {
    // Payload { metadata = 2: Metadata { type = 3 }, body = 3: Any { value = 2 } }
    let meta = len_field(payload, 2).ok_or(OpError::Decode)?;
    let kind = len_field(meta, 3).ok_or(OpError::Decode)?;
    if kind.is_empty() {
        return Err(OpError::Decode);
    }
    if kind != b"ErrorResponse" {
        return Ok(());
    }
    let json = len_field(payload, 3)
        .and_then(|any| len_field(any, 2))
        .unwrap_or(b"");
    let code = match json_int(json, b"\"errorCode\"") {
        Some(c) if c != 0 => c,
        _ => json_int(json, b"\"resultCode\"").unwrap_or(500),
    };
    Err(OpError::Nacos(i32::try_from(code).unwrap_or(if code < 0 {
        i32::MIN
    } else {
        i32::MAX
    })))
}

/// Splits the first complete gRPC message off `buf`: `Ok(None)` when more bytes are needed.
fn take_message(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, OpError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(OpError::Grpc("compressed".into()));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(OpError::Grpc("too-large".into()));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

fn h2_err(e: &h2::Error) -> OpError {
    if let Some(io) = e.get_io() {
        return OpError::Io(format!("{:?}", io.kind()));
    }
    match e.reason() {
        Some(r) => OpError::Grpc(format!("h2:{r:?}")),
        None => OpError::Grpc("h2".into()),
    }
}

/// A gRPC status other than OK in `headers`, if it carries one.
fn status_of(headers: &http::HeaderMap) -> Option<Result<(), OpError>> {
    let s = headers.get("grpc-status")?;
    Some(if s.as_bytes() == b"0" {
        Ok(())
    } else {
        Err(OpError::Grpc(grpc_code_name(s.as_bytes())))
    })
}

/// Builds the request head of a gRPC call to `uri`.
fn head(uri: &Uri) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = Method::POST;
    *r.uri_mut() = uri.clone();
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("te", HeaderValue::from_static("trailers"));
    r
}

/// One unary call with a pre-encoded frame; returns the response message (without prefix).
async fn call(send: &SendRequest<Bytes>, uri: &Uri, frame: Bytes) -> Result<Bytes, OpError> {
    let mut send = send.clone().ready().await.map_err(|e| h2_err(&e))?;
    let (resp, mut body_tx) = send
        .send_request(head(uri), false)
        .map_err(|e| h2_err(&e))?;
    body_tx.send_data(frame, true).map_err(|e| h2_err(&e))?;
    let resp = resp.await.map_err(|e| h2_err(&e))?;
    if resp.status() != http::StatusCode::OK {
        return Err(OpError::Http(resp.status().as_u16()));
    }
    if let Some(Err(e)) = status_of(resp.headers()) {
        return Err(e); // trailers-only answer
    }
    let mut body = resp.into_body();
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| h2_err(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        match (&mut first, &mut more) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let mut m = BytesMut::with_capacity(f.len() + chunk.len());
                m.extend_from_slice(f);
                m.extend_from_slice(&chunk);
                more = Some(m);
            }
            (Some(_), Some(m)) => m.extend_from_slice(&chunk),
        }
    }
    match body.trailers().await.map_err(|e| h2_err(&e))? {
        Some(t) => status_of(&t).unwrap_or(Ok(()))?,
        None => return Err(OpError::Grpc("no-trailers".into())),
    }
    let msg = match (first, more) {
        (_, Some(m)) => m.freeze(),
        (Some(f), None) => f,
        (None, None) => return Err(OpError::Decode),
    };
    if msg.len() < 5 || msg[0] != 0 {
        return Err(OpError::Decode);
    }
    let len = u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]) as usize;
    if msg.len() != 5 + len {
        return Err(OpError::Decode);
    }
    Ok(msg.slice(5..))
}

/// An established raw connection.
pub struct RawConn {
    send: SendRequest<Bytes>,
    unary: Uri,
    timeout: Duration,
    alive: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RawConn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RawConn {
    /// Connects to `addr` (`host:grpcPort`) and does the Nacos handshake on it.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<RawConn, OpError> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, timeout))
            .await
            .unwrap_or(Err(OpError::Timeout))
    }

    async fn connect_inner(addr: &str, timeout: Duration) -> Result<RawConn, OpError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| OpError::Io(format!("{:?}", e.kind())))?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(8 << 20)
            .max_frame_size(1 << 20)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| h2_err(&e))?;
        let alive = Arc::new(AtomicBool::new(true));
        let driver = {
            let alive = alive.clone();
            tokio::spawn(async move {
                let _ = conn.await;
                alive.store(false, Ordering::Relaxed);
            })
        };
        let mut tasks = vec![driver];
        let uri = |path: &str| -> Result<Uri, OpError> {
            format!("http://{addr}{path}")
                .parse()
                .map_err(|_| OpError::Grpc("InvalidUri".into()))
        };
        let unary = uri(UNARY_PATH)?;

        // 1. ServerCheckRequest.
        let check = call(
            &send,
            &unary,
            encode_request(
                "ServerCheckRequest",
                b"{\"headers\":{},\"requestId\":\"\",\"module\":\"internal\"}".to_vec(),
            ),
        )
        .await?;
        classify(&check)?;
        let negotiation = Payload::decode(check.as_ref())
            .ok()
            .and_then(|p| p.body)
            .and_then(|b| {
                serde_json::from_slice::<serde_json::Value>(&b.value)
                    .ok()?
                    .get("supportAbilityNegotiation")?
                    .as_bool()
            })
            .unwrap_or(false);

        // 2. The bi-stream, opened with ConnectionSetupRequest.
        let mut s = send.clone().ready().await.map_err(|e| h2_err(&e))?;
        let (resp, mut out) = s
            .send_request(head(&uri(STREAM_PATH)?), false)
            .map_err(|e| h2_err(&e))?;
        let setup = encode_request(
            "ConnectionSetupRequest",
            b"{\"headers\":{},\"requestId\":\"\",\"clientVersion\":\"Nacelle-Loadgen:0.1\",\
\"tenant\":\"\",\"labels\":{\"source\":\"sdk\",\"module\":\"naming\"},\"abilityTable\":{},\
\"module\":\"internal\"}"
                .to_vec(),
        );
        out.send_data(setup, false).map_err(|e| h2_err(&e))?;
        let (ack_tx, ack_rx) = oneshot::channel::<()>();
        let reader = {
            let alive = alive.clone();
            tokio::spawn(async move {
                read_stream(resp, out, ack_tx).await;
                alive.store(false, Ordering::Relaxed);
                counters::STREAMS_CLOSED.fetch_add(1, Ordering::Relaxed);
            })
        };
        tasks.push(reader);

        // 3. SetupAckRequest (or a short pause) before the first naming request.
        if negotiation {
            if tokio::time::timeout(timeout.max(Duration::from_secs(1)), ack_rx)
                .await
                .is_err()
            {
                counters::SETUP_ACK_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = RawConn {
            send,
            unary,
            timeout,
            alive,
            tasks,
        };
        if !c.alive() {
            return Err(OpError::NotConnected);
        }
        Ok(c)
    }

    /// A handle that sends unary requests on this connection (cheap to clone; the requests
    /// fail once the connection is dropped).
    pub fn caller(&self) -> Caller {
        Caller {
            send: self.send.clone(),
            unary: self.unary.clone(),
        }
    }

    /// The connect timeout it was opened with (also a sane per-request timeout).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the transport and the bi-stream are still open.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

/// Sends unary requests on a [`RawConn`].
#[derive(Clone)]
pub struct Caller {
    send: SendRequest<Bytes>,
    unary: Uri,
}

impl Caller {
    /// Sends a pre-encoded request frame (see [`encode_request`]) and classifies the answer.
    pub async fn request(self, frame: Bytes) -> Result<(), OpError> {
        let msg = call(&self.send, &self.unary, frame).await?;
        classify(&msg)
    }

    /// Like [`Caller::request`], and returns the answer's JSON body (decoded with prost: for
    /// the few requests whose answer is read).
    pub async fn request_body(self, frame: Bytes) -> Result<Vec<u8>, OpError> {
        let msg = call(&self.send, &self.unary, frame).await?;
        classify(&msg)?;
        let payload = Payload::decode(msg.as_ref()).map_err(|_| OpError::Decode)?;
        Ok(payload.body.map(|b| b.value).unwrap_or_default())
    }
}

/// Reads the bi-stream: acknowledges the setup, answers server requests.
async fn read_stream(
    resp: h2::client::ResponseFuture,
    mut out: h2::SendStream<Bytes>,
    ack: oneshot::Sender<()>,
) {
    let mut ack = Some(ack);
    let Ok(resp) = resp.await else { return };
    if resp.status() != http::StatusCode::OK {
        return;
    }
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        loop {
            let msg = match take_message(&mut buf, MAX_MESSAGE) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => return,
            };
            let Ok(p) = Payload::decode(msg.as_ref()) else {
                continue;
            };
            let Ok(env) = open(&p) else { continue };
            let reply = match env.kind {
                "SetupAckRequest" => {
                    if let Some(a) = ack.take() {
                        let _ = a.send(());
                    }
                    None
                }
                "NotifySubscriberRequest" => {
                    counters::PUSHES.fetch_add(1, Ordering::Relaxed);
                    Some("NotifySubscriberResponse")
                }
                "ClientDetectionRequest" => {
                    counters::DETECTIONS.fetch_add(1, Ordering::Relaxed);
                    Some("ClientDetectionResponse")
                }
                "ConnectResetRequest" => {
                    counters::RESETS.fetch_add(1, Ordering::Relaxed);
                    Some("ConnectResetResponse")
                }
                _ => None,
            };
            if let Some(kind) = reply {
                let id = serde_json::from_slice::<serde_json::Value>(env.body)
                    .ok()
                    .and_then(|v| v.get("requestId")?.as_str().map(str::to_owned));
                let answer = ok(kind, "", id.as_deref()).encode_to_vec();
                if out.send_data(grpc_frame(&answer), false).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(p: &Payload) -> Vec<u8> {
        p.encode_to_vec()
    }

    #[test]
    fn answers_are_ok_and_error_responses_give_their_code() {
        let answer = ok("QueryServiceResponse", "\"serviceInfo\":{}", Some("7"));
        assert_eq!(classify(&msg(&answer)), Ok(()));
        let shed = wire::payload::error(503, "server is over its threshold, retry later");
        assert_eq!(classify(&msg(&shed)), Err(OpError::Nacos(503)));
        let unregistered = wire::payload::error(301, "Connection is unregistered.");
        assert_eq!(classify(&msg(&unregistered)), Err(OpError::Nacos(301)));
        // Another server's spelling: spaces, errorCode after other fields, 0 = use resultCode.
        let spaced = seal(
            "ErrorResponse",
            b"{\"message\":\"x\", \"resultCode\" : 500 ,\"errorCode\" : 503}".to_vec(),
        );
        assert_eq!(classify(&msg(&spaced)), Err(OpError::Nacos(503)));
        let zero = seal(
            "ErrorResponse",
            b"{\"errorCode\":0,\"resultCode\":500}".to_vec(),
        );
        assert_eq!(classify(&msg(&zero)), Err(OpError::Nacos(500)));
        let empty = seal("ErrorResponse", Vec::new());
        assert_eq!(classify(&msg(&empty)), Err(OpError::Nacos(500)));
        // A key that is only a prefix of another one is not taken for it.
        let prefixed = seal(
            "ErrorResponse",
            b"{\"errorCodeX\":1,\"errorCode\":404}".to_vec(),
        );
        assert_eq!(classify(&msg(&prefixed)), Err(OpError::Nacos(404)));
    }

    #[test]
    fn malformed_envelopes_are_decode_errors_not_panics() {
        assert_eq!(classify(b""), Err(OpError::Decode));
        assert_eq!(
            classify(&msg(&Payload {
                metadata: None,
                body: None
            })),
            Err(OpError::Decode)
        );
        let good = msg(&wire::payload::error(503, "over"));
        // Every truncation and a few corruptions: never a panic.
        for cut in 0..good.len() {
            let _ = classify(&good[..cut]);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = classify(&bad);
        }
        // A length running past the end.
        assert_eq!(classify(&[0x12, 0x7f, 0x1a]), Err(OpError::Decode));
        // Unknown wire types 3/4/6/7 stop the walk.
        assert_eq!(classify(&[0x13, 0x00]), Err(OpError::Decode));
        // A varint that never ends.
        assert_eq!(classify(&[0x08, 0xff, 0xff, 0xff]), Err(OpError::Decode));
    }

    #[test]
    fn skips_other_wire_types_and_unknown_fields() {
        let mut m = vec![0x08, 0x96, 0x01]; // field 1 varint 150
        m.extend_from_slice(&[0x0d, 1, 2, 3, 4]); // field 1 fixed32
        m.extend_from_slice(&[0x09, 1, 2, 3, 4, 5, 6, 7, 8]); // field 1 fixed64
        m.extend(msg(&wire::payload::error(503, "over")));
        assert_eq!(classify(&m), Err(OpError::Nacos(503)));
    }

    #[test]
    fn json_int_finds_whole_keys_only() {
        assert_eq!(json_int(b"{\"a\":12}", b"\"a\""), Some(12));
        assert_eq!(json_int(b"{\"a\" : -3 }", b"\"a\""), Some(-3));
        assert_eq!(json_int(b"{\"ab\":1,\"a\":2}", b"\"a\""), Some(2));
        assert_eq!(json_int(b"{\"a\":\"x\"}", b"\"a\""), None);
        assert_eq!(json_int(b"{\"a\":99999999999999999999}", b"\"a\""), None);
        assert_eq!(json_int(b"{\"a\":", b"\"a\""), None);
        assert_eq!(json_int(b"", b"\"a\""), None);
    }

    #[test]
    fn frames_split_and_join() {
        let p = msg(&seal("X", b"{}".to_vec()));
        let f = grpc_frame(&p);
        assert_eq!(f.len(), p.len() + 5);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&f[..3]);
        assert_eq!(take_message(&mut buf, 1 << 20), Ok(None));
        buf.extend_from_slice(&f[3..]);
        buf.extend_from_slice(&f);
        assert_eq!(take_message(&mut buf, 1 << 20).unwrap().unwrap(), p);
        assert_eq!(take_message(&mut buf, 1 << 20).unwrap().unwrap(), p);
        assert!(buf.is_empty());
        buf.extend_from_slice(&f);
        assert!(take_message(&mut buf, 2).is_err());
        let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert!(take_message(&mut compressed, 10).is_err());
        assert_eq!(encode_request("X", b"{}".to_vec()), f);
    }

    #[test]
    fn status_codes_are_named_like_tonic() {
        assert_eq!(
            grpc_code_name(b"14"),
            format!("{:?}", tonic::Code::Unavailable)
        );
        assert_eq!(
            grpc_code_name(b"8"),
            format!("{:?}", tonic::Code::ResourceExhausted)
        );
        assert_eq!(grpc_code_name(b"99"), "status-99");
    }
}
