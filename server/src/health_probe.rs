//! The probes of the health checks of persistent instances: what a core runs when its
//! [`engine::health::HealthChecker`] emits a `Probe`, on its own glommio executor.
//!
//! The decisions (when, how often, what a result means, when the flag flips) are the
//! engine's; this file only connects and reports a raw [`ProbeResult`], as Nacos's
//! `TcpHealthCheckProcessor` and `HttpHealthCheckProcessor` do:
//! - TCP: a non-blocking connect with a 500 ms timeout (io_uring connect linked to a
//!   timeout); established → `Connected`, refused → `Refused`, timed out → `Timeout`,
//!   anything else (unreachable, no descriptors) → `Error`. The connection is closed at once.
//! - HTTP: the same connect, then `GET {path} HTTP/1.1` with `Host`, `User-Agent: VIPServer`,
//!   `Connection: close` and the check's headers; only the status line is read, within
//!   500 ms; redirects are not followed (a 302 is a result). → `Status(code)`, or `Refused`,
//!   `Timeout`, `Error` (an answer that is not HTTP/1.x).
//!
//! Nothing read from the network is trusted: the answer is read into a fixed buffer, at most
//! [`MAX_STATUS_LINE`] bytes, and parsed without panicking.
//!
//! The driver (the lead's integration) spawns one task per `Probe` command; the engine bounds
//! how many are in flight.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use engine::health::{CheckSpec, HttpCheck, ProbeResult, PROBE_TIMEOUT_MS};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::GlommioError;

/// The connect timeout, and the time an HTTP probe waits for the status line.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(PROBE_TIMEOUT_MS);

/// Most bytes read while looking for the end of the status line.
pub const MAX_STATUS_LINE: usize = 1024;

/// Runs the probe `spec` against `addr` (`NONE` is never probed: it answers `Connected`
/// without any IO, so a driver bug cannot flip such an instance).
pub async fn probe(addr: SocketAddr, spec: &CheckSpec) -> ProbeResult {
    match spec {
        CheckSpec::Tcp => probe_tcp(addr, PROBE_TIMEOUT).await,
        CheckSpec::Http(check) => probe_http(addr, check, PROBE_TIMEOUT).await,
        CheckSpec::None => ProbeResult::Connected,
    }
}

/// A TCP connect to `addr` within `timeout`.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> ProbeResult {
    match connect(addr, timeout).await {
        Ok(stream) => {
            drop(stream);
            ProbeResult::Connected
        }
        Err(result) => result,
    }
}

/// An HTTP GET of `check.path` at `addr`: connect within `timeout`, then the status line
/// within `timeout`.
pub async fn probe_http(addr: SocketAddr, check: &HttpCheck, timeout: Duration) -> ProbeResult {
    let mut stream = match connect(addr, timeout).await {
        Ok(stream) => stream,
        Err(result) => return result,
    };
    let request = http_request(addr, check);
    let exchange = async {
        if let Err(e) = stream.write_all(&request).await {
            return Ok(io_result(&e));
        }
        let mut buf = [0u8; MAX_STATUS_LINE];
        let mut len = 0;
        while len < buf.len() && !buf[..len].contains(&b'\n') {
            match stream.read(&mut buf[len..]).await {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) => return Ok(io_result(&e)),
            }
        }
        Ok(match parse_status_line(&buf[..len]) {
            Some(code) => ProbeResult::Status(code),
            None => ProbeResult::Error,
        })
    };
    match glommio::timer::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(GlommioError::TimedOut(_)) => ProbeResult::Timeout,
        Err(e) => io_result(&io::Error::from(e)),
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProbeResult> {
    TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| match e {
            GlommioError::TimedOut(_) => ProbeResult::Timeout,
            other => io_result(&io::Error::from(other)),
        })
}

fn io_result(e: &io::Error) -> ProbeResult {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeResult::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeResult::Timeout,
        _ => ProbeResult::Error,
    }
}

/// Headers the probe sets itself: a check's own value for them is dropped (Host excepted:
/// a check may name the virtual host it wants).
const OWN_HEADERS: [&str; 4] = [
    "user-agent",
    "connection",
    "content-length",
    "transfer-encoding",
];

/// The request of an HTTP check. The spec parser validated path and headers (visible ASCII
/// path, token names, no control characters), so they go into the request as they are.
pub fn http_request(addr: SocketAddr, check: &HttpCheck) -> Vec<u8> {
    let mut req = format!("GET {} HTTP/1.1\r\n", check.path);
    let custom_host = check
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"));
    if !custom_host {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    req.push_str("User-Agent: VIPServer\r\nConnection: close\r\n");
    for (k, v) in &check.headers {
        if OWN_HEADERS.iter().any(|own| k.eq_ignore_ascii_case(own)) {
            continue;
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`), `None` for anything else.
pub fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // The code is followed by a space (reason phrase), the line end, or nothing.
    if !matches!(rest.get(3), None | Some(b' ' | b'\r')) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::net::TcpListener;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn block_on<F: std::future::Future<Output = ()>>(f: F) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("health-probe-test")
            .make()
            .expect("glommio executor (RLIMIT_MEMLOCK >= 512 KiB?)")
            .run(f);
    }

    /// A loopback listener on a free port.
    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = l.local_addr().expect("local addr");
        assert!(addr.ip().is_loopback());
        (l, addr)
    }

    /// A loopback port nobody listens on.
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = l.local_addr().expect("local addr");
        drop(l);
        addr
    }

    fn check(path: &str, headers: &[(&str, &str)]) -> HttpCheck {
        HttpCheck {
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    /// Serves one connection: reads the request head, records it, answers `answer`.
    fn serve_once(l: TcpListener, answer: &'static [u8]) -> Rc<RefCell<String>> {
        let seen = Rc::new(RefCell::new(String::new()));
        let out = seen.clone();
        glommio::spawn_local(async move {
            let Ok(mut s) = l.accept().await else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            *out.borrow_mut() = String::from_utf8_lossy(&buf).into_owned();
            let _ = s.write_all(answer).await;
            let _ = s.close().await;
        })
        .detach();
        seen
    }

    #[test]
    fn tcp_a_listening_port_is_connected_and_a_closed_one_refused() {
        block_on(async {
            let (l, addr) = listener();
            assert_eq!(probe(addr, &CheckSpec::Tcp).await, ProbeResult::Connected);
            drop(l);
            assert_eq!(
                probe_tcp(closed_port(), PROBE_TIMEOUT).await,
                ProbeResult::Refused
            );
        });
    }

    #[test]
    fn http_answers_map_to_their_status_and_the_request_is_nacos_shaped() {
        block_on(async {
            for (answer, expect) in [
                (
                    &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
                    ProbeResult::Status(200),
                ),
                (
                    &b"HTTP/1.1 503 Service Unavailable\r\n\r\n"[..],
                    ProbeResult::Status(503),
                ),
                (
                    &b"HTTP/1.0 500 Internal Server Error\r\n\r\n"[..],
                    ProbeResult::Status(500),
                ),
                (
                    &b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\n\r\n"[..],
                    ProbeResult::Status(302),
                ),
                (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], ProbeResult::Error),
                (&b""[..], ProbeResult::Error),
            ] {
                let (l, addr) = listener();
                let seen = serve_once(l, answer);
                let spec =
                    CheckSpec::Http(check("/health?x=1", &[("k1", "v1"), ("User-Agent", "x")]));
                assert_eq!(probe(addr, &spec).await, expect, "{answer:?}");
                let req = seen.borrow().clone();
                assert!(req.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{req}");
                assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
                assert!(req.contains("\r\nUser-Agent: VIPServer\r\n"), "{req}");
                assert!(req.contains("\r\nk1: v1\r\n"), "{req}");
                assert!(!req.contains("User-Agent: x"), "{req}");
            }
        });
    }

    #[test]
    fn http_a_closed_port_is_refused_and_a_silent_server_times_out() {
        block_on(async {
            let spec = check("/", &[]);
            assert_eq!(
                probe_http(closed_port(), &spec, PROBE_TIMEOUT).await,
                ProbeResult::Refused
            );
            // Accepts (the kernel does, from the backlog) but never answers.
            let (l, addr) = listener();
            let started = std::time::Instant::now();
            assert_eq!(
                probe_http(addr, &spec, Duration::from_millis(100)).await,
                ProbeResult::Timeout
            );
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(100), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
            drop(l);
        });
    }

    #[test]
    fn status_lines_parse_strictly() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 099 x\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_status_line(b"http/1.1 200 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2a0 OK\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
        assert_eq!(parse_status_line(&[0xff; 64]), None);
    }

    #[test]
    fn a_custom_host_replaces_the_default_one() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let req = String::from_utf8(http_request(
            addr,
            &check("/", &[("Host", "svc.local"), ("Connection", "keep-alive")]),
        ))
        .expect("ascii");
        assert_eq!(
            req,
            "GET / HTTP/1.1\r\nUser-Agent: VIPServer\r\nConnection: close\r\nHost: svc.local\r\n\r\n"
        );
    }
}
