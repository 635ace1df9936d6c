//! A cheap pipelined HTTP/1.1 client for `flood --protocol http`: pre-encoded requests on
//! keep-alive connections, answers classified by their status line alone.
//!
//! [`crate::http::HttpConn`] has one request in flight per connection and reads each answer
//! through a `BufReader` line by line, which is fine for `query` but cannot offer a server
//! twice what it answers over a few connections. Here a request is a clone of a `Bytes` that
//! already holds the whole request (see [`encode_get`]); each connection is one task that
//! writes whatever requests are queued (pipelining: several requests may be written before the
//! first answer arrives) and reads the answers, which HTTP/1.1 returns in request order, with
//! the incremental parser [`parse_response`] (`Content-Length`, chunked and close-delimited
//! bodies; the body is skipped, never decoded). 2xx is an answer, any other status is
//! `http:<status>` (`http:503` being Nacos's "over threshold"). A connection may be limited to
//! `pipeline` unanswered requests (1 = no pipelining, like the SDKs' pooled clients); the others
//! then wait in its queue, unsent.
//!
//! A connection the server closes (an I/O error, end of stream, or an answer with
//! `Connection: close`) fails the requests still waiting on it and is reopened; each loss is
//! counted ([`HttpFloodConn::losses`]). A request that times out on the caller's side stays in
//! the pipeline: its late answer is read and dropped, keeping the order of the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::stats::OpError;

/// Largest response body accepted.
const MAX_BODY: usize = 64 << 20;
/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 << 10;
/// Largest chunk-size line accepted (hex size and extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Requests are taken from the queue while less than this many bytes wait to be written.
const OUT_LIMIT: usize = 256 << 10;
/// Read buffer space kept free before each read.
const READ_RESERVE: usize = 64 << 10;
/// Pause before a failed reconnect is tried again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// A keep-alive `GET path_and_query` request to `host` (the `Host` header), encoded once and
/// sent many times.
pub fn encode_get(host: &str, path_and_query: &str) -> Bytes {
    Bytes::from(format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Nacos-Java-Client:v2.5.1\r\n\
         Client-Version: Nacelle-Loadgen:0.1\r\nRequest-Module: Naming\r\n\
         Connection: keep-alive\r\n\r\n"
    ))
}

/// What [`parse_response`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole response of `len` bytes; `close`: the server closes the connection after it.
    Complete {
        status: u16,
        len: usize,
        close: bool,
    },
    /// A response whose body runs until the server closes the connection (neither
    /// `Content-Length` nor chunked); its head is `head_len` bytes.
    UntilClose { status: u16, head_len: usize },
}

/// The end of the line starting at `from` (index of its `\n`), if it is complete.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| from + p)
}

/// `buf[from..end]` without a trailing `\r`.
fn line(buf: &[u8], from: usize, end: usize) -> &[u8] {
    let l = &buf[from..end];
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &b[start..end.max(start)]
}

/// Whether the comma-separated header value `v` lists `token` (case-insensitive).
fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&c| c == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Parses the response at the start of `buf` (incrementally: call again with more bytes on
/// [`Parsed::Incomplete`]). Bodies over `max_body` bytes and malformed heads or chunks are
/// [`OpError::Decode`]; nothing here panics on any input.
pub fn parse_response(buf: &[u8], max_body: usize) -> Result<Parsed, OpError> {
    // The status line: HTTP/1.x SSS reason.
    let Some(end) = line_end(buf, 0) else {
        return if buf.len() > MAX_HEAD {
            Err(OpError::Decode)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let status_line = line(buf, 0, end);
    let rest = status_line
        .strip_prefix(b"HTTP/1.")
        .ok_or(OpError::Decode)?;
    let http10 = rest.first() == Some(&b'0');
    let code = rest.get(2..5).ok_or(OpError::Decode)?;
    if rest.get(1) != Some(&b' ')
        || !code.iter().all(u8::is_ascii_digit)
        || rest.get(5).is_some_and(|&c| c != b' ')
    {
        return Err(OpError::Decode);
    }
    let status = code.iter().fold(0u16, |s, d| s * 10 + u16::from(d - b'0'));
    // Headers, up to the empty line.
    let mut close = http10;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut pos = end + 1;
    let head_len = loop {
        let Some(end) = line_end(buf, pos) else {
            return if buf.len() > MAX_HEAD {
                Err(OpError::Decode)
            } else {
                Ok(Parsed::Incomplete)
            };
        };
        let l = line(buf, pos, end);
        pos = end + 1;
        if l.is_empty() {
            break pos;
        }
        if pos > MAX_HEAD {
            return Err(OpError::Decode);
        }
        let Some(colon) = l.iter().position(|&c| c == b':') else {
            return Err(OpError::Decode);
        };
        let (name, value) = (trim(&l[..colon]), trim(&l[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(OpError::Decode)?;
            if length.is_some_and(|l| l != n) {
                return Err(OpError::Decode);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value
                .split(|&c| c == b',')
                .next_back()
                .is_some_and(|t| trim(t).eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"close") {
                close = true;
            } else if has_token(value, b"keep-alive") {
                close = false;
            }
        }
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Parsed::Complete {
            status,
            len: head_len,
            close,
        });
    }
    if chunked {
        // Chunks: hex size[;ext] CRLF, data CRLF; a zero size, trailers, an empty line.
        let mut pos = head_len;
        let mut body = 0usize;
        loop {
            let Some(end) = line_end(buf, pos) else {
                return if buf.len() - pos > MAX_CHUNK_LINE {
                    Err(OpError::Decode)
                } else {
                    Ok(Parsed::Incomplete)
                };
            };
            let size_line = line(buf, pos, end);
            let hex = trim(size_line.split(|&c| c == b';').next().unwrap_or(b""));
            let size = std::str::from_utf8(hex)
                .ok()
                .filter(|h| !h.is_empty())
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .ok_or(OpError::Decode)?;
            pos = end + 1;
            if size == 0 {
                // Trailers (ignored) end with an empty line.
                loop {
                    let Some(end) = line_end(buf, pos) else {
                        return if buf.len() - pos > MAX_HEAD {
                            Err(OpError::Decode)
                        } else {
                            Ok(Parsed::Incomplete)
                        };
                    };
                    let empty = line(buf, pos, end).is_empty();
                    pos = end + 1;
                    if empty {
                        return Ok(Parsed::Complete {
                            status,
                            len: pos,
                            close,
                        });
                    }
                }
            }
            body = body.checked_add(size).ok_or(OpError::Decode)?;
            if body > max_body {
                return Err(OpError::Decode);
            }
            let data_end = pos + size;
            match buf.get(data_end..data_end + 2) {
                None if buf.get(data_end..data_end + 1).is_none_or(|b| b == b"\r") => {
                    return Ok(Parsed::Incomplete)
                }
                Some(b"\r\n") => pos = data_end + 2,
                _ => return Err(OpError::Decode),
            }
        }
    }
    match length {
        Some(n) if n > max_body => Err(OpError::Decode),
        Some(n) if buf.len() - head_len >= n => Ok(Parsed::Complete {
            status,
            len: head_len + n,
            close,
        }),
        Some(_) => Ok(Parsed::Incomplete),
        None => Ok(Parsed::UntilClose { status, head_len }),
    }
}

/// A request waiting for its answer.
struct Job {
    request: Bytes,
    done: oneshot::Sender<Result<(), OpError>>,
}

/// What a connection shares with its owner.
#[derive(Default)]
struct ConnState {
    alive: AtomicBool,
    losses: AtomicU64,
}

/// One pipelined keep-alive connection, driven by its own task (reopened when lost).
pub struct HttpFloodConn {
    tx: mpsc::UnboundedSender<Job>,
    state: Arc<ConnState>,
    task: JoinHandle<()>,
}

impl Drop for HttpFloodConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn io_err(e: &std::io::Error) -> OpError {
    OpError::Io(format!("{:?}", e.kind()))
}

async fn open(addr: &str, timeout: Duration) -> Result<TcpStream, OpError> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| OpError::Timeout)?
        .map_err(|e| io_err(&e))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

impl HttpFloodConn {
    /// Connects to `addr` (`host:httpPort`); later reconnects use the same `timeout`. At most
    /// `pipeline` requests are written before their answers arrive (0 = no limit).
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        pipeline: usize,
    ) -> Result<HttpFloodConn, OpError> {
        let stream = open(addr, timeout).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ConnState {
            alive: AtomicBool::new(true),
            losses: AtomicU64::new(0),
        });
        let pipeline = if pipeline == 0 { usize::MAX } else { pipeline };
        let task = tokio::spawn(drive(
            addr.to_owned(),
            timeout,
            pipeline,
            stream,
            rx,
            state.clone(),
        ));
        Ok(HttpFloodConn { tx, state, task })
    }

    /// A handle that sends requests on this connection (cheap to clone).
    pub fn caller(&self) -> HttpCaller {
        HttpCaller {
            tx: self.tx.clone(),
        }
    }

    /// Whether the connection is open now.
    pub fn alive(&self) -> bool {
        self.state.alive.load(Ordering::Relaxed)
    }

    /// How many times the connection was lost (closed by the server or failed) and reopened.
    pub fn losses(&self) -> u64 {
        self.state.losses.load(Ordering::Relaxed)
    }
}

/// Sends requests on an [`HttpFloodConn`].
#[derive(Clone)]
pub struct HttpCaller {
    tx: mpsc::UnboundedSender<Job>,
}

impl HttpCaller {
    /// Queues a pre-encoded request (see [`encode_get`]) and waits for its answer: `Ok` for
    /// 2xx, [`OpError::Http`] for any other status.
    pub async fn request(self, request: Bytes) -> Result<(), OpError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { request, done })
            .map_err(|_| OpError::NotConnected)?;
        rx.await.unwrap_or(Err(OpError::NotConnected))
    }
}

/// The connection task: sessions on successive TCP connections until the owner goes away.
async fn drive(
    addr: String,
    timeout: Duration,
    pipeline: usize,
    first: TcpStream,
    mut rx: mpsc::UnboundedReceiver<Job>,
    state: Arc<ConnState>,
) {
    let mut stream = Some(first);
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => match open(&addr, timeout).await {
                Ok(s) => s,
                Err(e) => {
                    // Fail what is queued now rather than let it time out, then retry.
                    while let Ok(job) = rx.try_recv() {
                        let _ = job.done.send(Err(e.clone()));
                    }
                    if rx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        state.alive.store(true, Ordering::Relaxed);
        let lost = session(s, &mut rx, pipeline).await;
        state.alive.store(false, Ordering::Relaxed);
        if !lost {
            return;
        }
        state.losses.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands the answer `status` to the oldest waiting request; false if none was waiting.
fn deliver(waiting: &mut VecDeque<oneshot::Sender<Result<(), OpError>>>, status: u16) -> bool {
    let Some(w) = waiting.pop_front() else {
        return false;
    };
    let r = if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(OpError::Http(status))
    };
    let _ = w.send(r); // the caller may have timed out
    true
}

/// One TCP connection's life: writes queued requests (at most `pipeline` unanswered), reads
/// answers in order. Returns false when the owner is gone (the queue closed), true when the
/// connection was lost; requests still waiting then fail with the reason.
async fn session(mut s: TcpStream, rx: &mut mpsc::UnboundedReceiver<Job>, pipeline: usize) -> bool {
    let (mut rd, mut wr) = s.split();
    let mut out = BytesMut::with_capacity(OUT_LIMIT);
    let mut inb = BytesMut::with_capacity(READ_RESERVE);
    let mut waiting = VecDeque::new();
    // A close-delimited body is being read: its status, answered at the end of the stream.
    let mut until_close: Option<u16> = None;
    let reason = 'session: loop {
        if inb.capacity() - inb.len() < READ_RESERVE / 4 {
            inb.reserve(READ_RESERVE);
        }
        tokio::select! {
            job = rx.recv(), if out.len() < OUT_LIMIT
                && waiting.len() < pipeline
                && until_close.is_none() => {
                let Some(job) = job else { return false };
                out.extend_from_slice(&job.request);
                waiting.push_back(job.done);
                while out.len() < OUT_LIMIT && waiting.len() < pipeline {
                    let Ok(job) = rx.try_recv() else { break };
                    out.extend_from_slice(&job.request);
                    waiting.push_back(job.done);
                }
            }
            r = wr.write(&out), if !out.is_empty() => match r {
                Ok(0) => break OpError::Io("WriteZero".into()),
                Ok(n) => out.advance(n),
                Err(e) => break io_err(&e),
            },
            r = rd.read_buf(&mut inb) => match r {
                Ok(0) => {
                    if let Some(status) = until_close {
                        deliver(&mut waiting, status);
                    }
                    break OpError::Io("UnexpectedEof".into());
                }
                Ok(_) if until_close.is_some() => inb.clear(),
                Ok(_) => loop {
                    match parse_response(&inb, MAX_BODY) {
                        Ok(Parsed::Incomplete) => break,
                        Ok(Parsed::Complete { status, len, close }) => {
                            inb.advance(len);
                            if (100..200).contains(&status) {
                                continue; // informational, the real answer follows
                            }
                            if !deliver(&mut waiting, status) {
                                break 'session OpError::Decode; // nothing was asked
                            }
                            if close {
                                // Whatever was pipelined after it is never answered.
                                break 'session OpError::Io("ConnectionAborted".into());
                            }
                        }
                        Ok(Parsed::UntilClose { status, .. }) => {
                            until_close = Some(status);
                            inb.clear();
                            break;
                        }
                        Err(e) => break 'session e,
                    }
                },
                Err(e) => break io_err(&e),
            },
        }
    };
    for w in waiting {
        let _ = w.send(Err(reason.clone()));
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Content-Length: 11\r\n\r\n{\"hosts\":1}";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
4;ext=1\r\nabcd\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
    const SHED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 41\r\n\r\n\
server is over its threshold, retry later";

    fn complete(status: u16, len: usize) -> Parsed {
        Parsed::Complete {
            status,
            len,
            close: false,
        }
    }

    #[test]
    fn parses_a_complete_response() {
        assert_eq!(parse_response(OK, MAX_BODY), Ok(complete(200, OK.len())));
        // Followed by the next pipelined answer: only the first is consumed.
        let mut two = OK.to_vec();
        two.extend_from_slice(SHED);
        assert_eq!(parse_response(&two, MAX_BODY), Ok(complete(200, OK.len())));
        assert_eq!(
            parse_response(&two[OK.len()..], MAX_BODY),
            Ok(complete(503, SHED.len()))
        );
    }

    #[test]
    fn a_503_over_threshold_is_its_status() {
        assert_eq!(
            parse_response(SHED, MAX_BODY),
            Ok(complete(503, SHED.len()))
        );
        // A v2-style JSON body and a close: still a 503, and the close is seen.
        let v2 =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 65\r\n\r\n\
{\"code\":503,\"message\":\"server is over its threshold\",\"data\":null}";
        assert_eq!(
            parse_response(v2, MAX_BODY),
            Ok(Parsed::Complete {
                status: 503,
                len: v2.len(),
                close: true
            })
        );
    }

    #[test]
    fn every_split_is_incomplete_until_the_last_byte() {
        for whole in [OK, CHUNKED, SHED] {
            for cut in 0..whole.len() {
                assert_eq!(
                    parse_response(&whole[..cut], MAX_BODY),
                    Ok(Parsed::Incomplete),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(whole)
                );
            }
        }
    }

    #[test]
    fn parses_chunked_bodies() {
        assert_eq!(
            parse_response(CHUNKED, MAX_BODY),
            Ok(complete(200, CHUNKED.len()))
        );
        // Chunks over the body limit, a bad size, data not followed by CRLF.
        assert_eq!(parse_response(CHUNKED, 13), Err(OpError::Decode));
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(parse_response(bad, MAX_BODY), Err(OpError::Decode));
        let overrun = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n";
        assert_eq!(parse_response(overrun, MAX_BODY), Err(OpError::Decode));
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n";
        assert_eq!(parse_response(huge, MAX_BODY), Err(OpError::Decode));
    }

    #[test]
    fn heads_without_bodies_lengths_and_closes() {
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(parse_response(no_content, MAX_BODY), Ok(complete(204, 27)));
        let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(
            parse_response(cont, MAX_BODY),
            Ok(complete(100, cont.len()))
        );
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse_response(old, MAX_BODY),
            Ok(Parsed::Complete { close: true, .. })
        ));
        let old_kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse_response(old_kept, MAX_BODY),
            Ok(Parsed::Complete { close: false, .. })
        ));
        let until_close = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome";
        assert_eq!(
            parse_response(until_close, MAX_BODY),
            Ok(Parsed::UntilClose {
                status: 200,
                head_len: until_close.len() - 4
            })
        );
    }

    #[test]
    fn malformed_answers_are_decode_errors_not_panics() {
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 20\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(bad, MAX_BODY),
                Err(OpError::Decode),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_response(&vec![b'x'; MAX_HEAD + 1], MAX_BODY),
            Err(OpError::Decode)
        );
        // Every truncation and corruption of the valid answers: never a panic.
        for whole in [OK, CHUNKED, SHED] {
            for i in 0..whole.len() {
                let mut bad = whole.to_vec();
                bad[i] ^= 0xff;
                let _ = parse_response(&bad, MAX_BODY);
                bad[i] = b'\n';
                let _ = parse_response(&bad, MAX_BODY);
            }
        }
    }

    #[test]
    fn requests_are_complete_keep_alive_gets() {
        let r = encode_get("127.0.0.1:8848", "/nacos/v1/ns/instance/list?serviceName=a");
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("GET /nacos/v1/ns/instance/list?serviceName=a HTTP/1.1\r\n"));
        assert!(s.contains("\r\nHost: 127.0.0.1:8848\r\n"));
        assert!(s.ends_with("\r\nConnection: keep-alive\r\n\r\n"));
    }

    /// A server answering pipelined requests in pieces: 200, a chunked 200, then a 503 and a
    /// close; the connection comes back for the next request.
    #[tokio::test]
    async fn pipelined_answers_reach_their_requests_in_order_and_the_connection_reopens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while got.windows(4).filter(|w| w[..] == b"\r\n\r\n"[..]).count() < 3 {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let mut answers = OK.to_vec();
            answers.extend_from_slice(CHUNKED);
            answers.extend_from_slice(
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Length: 4\r\n\r\nover",
            );
            for piece in answers.chunks(7) {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(s);
            let (mut s, _) = listener.accept().await.unwrap();
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            s.write_all(OK).await.unwrap();
            let _ = s.read(&mut buf).await;
        });
        let conn = HttpFloodConn::connect(&addr, Duration::from_secs(5), 0)
            .await
            .unwrap();
        let req = encode_get(&addr, "/x");
        let c = conn.caller();
        let (a, b, d) = tokio::join!(
            c.clone().request(req.clone()),
            c.clone().request(req.clone()),
            c.clone().request(req.clone())
        );
        assert_eq!((a, b, d), (Ok(()), Ok(()), Err(OpError::Http(503))));
        assert_eq!(c.request(req).await, Ok(()));
        assert_eq!(conn.losses(), 1);
        assert!(conn.alive());
        drop(conn);
        server.abort();
    }

    /// With `pipeline` 1 the second request is written only once the first is answered.
    #[tokio::test]
    async fn pipeline_one_waits_for_each_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for _ in 0..2 {
                let mut got = Vec::new();
                while !got.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                }
                assert_eq!(
                    got.windows(4).filter(|w| w[..] == b"\r\n\r\n"[..]).count(),
                    1
                );
                // Nothing more comes before this answer.
                let more = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
                assert!(more.is_err(), "a second request was pipelined");
                s.write_all(OK).await.unwrap();
            }
            let _ = s.read(&mut buf).await;
        });
        let conn = HttpFloodConn::connect(&addr, Duration::from_secs(5), 1)
            .await
            .unwrap();
        let req = encode_get(&addr, "/x");
        let c = conn.caller();
        let (a, b) = tokio::join!(c.clone().request(req.clone()), c.request(req));
        assert_eq!((a, b), (Ok(()), Ok(())));
        drop(conn);
        server.abort();
    }
}
