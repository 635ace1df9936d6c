//! A minimal keep-alive HTTP/1.1 client for the Nacos v1 OpenAPI: one request in flight per
//! connection, `Content-Length` and chunked bodies, transparent reconnect when the server
//! closed an idle connection.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::stats::OpError;

/// Largest response body accepted.
const MAX_BODY: usize = 64 << 20;

/// One keep-alive connection.
pub struct HttpConn {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

fn io_err(e: &std::io::Error) -> OpError {
    OpError::Io(format!("{:?}", e.kind()))
}

impl HttpConn {
    /// A connection to `addr` (`host:port`), opened lazily.
    pub fn new(addr: String, timeout: Duration) -> Self {
        HttpConn {
            addr,
            stream: None,
            timeout,
        }
    }

    /// Opens the TCP connection now.
    pub async fn open(&mut self) -> Result<(), OpError> {
        if self.stream.is_none() {
            let s = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| OpError::Timeout)?
                .map_err(|e| io_err(&e))?;
            let _ = s.set_nodelay(true);
            self.stream = Some(BufReader::with_capacity(16 << 10, s));
        }
        Ok(())
    }

    /// Sends `method path_and_query` (no body) and returns the body of a 2xx answer.
    pub async fn call(&mut self, method: &str, path: &str) -> Result<Vec<u8>, OpError> {
        let reused = self.stream.is_some();
        match tokio::time::timeout(self.timeout, self.exchange(method, path)).await {
            Err(_) => {
                self.stream = None;
                Err(OpError::Timeout)
            }
            Ok(Err(OpError::Io(_))) if reused => {
                // The server may have closed the idle connection: retry once on a new one.
                self.stream = None;
                tokio::time::timeout(self.timeout, self.exchange(method, path))
                    .await
                    .unwrap_or(Err(OpError::Timeout))
                    .inspect_err(|_| self.stream = None)
            }
            Ok(r) => {
                if r.is_err() {
                    self.stream = None;
                }
                r
            }
        }
    }

    async fn exchange(&mut self, method: &str, path: &str) -> Result<Vec<u8>, OpError> {
        self.open().await?;
        let host = self.addr.clone();
        let Some(s) = self.stream.as_mut() else {
            return Err(OpError::NotConnected);
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Nacos-Java-Client:v2.5.1\r\n\
             Client-Version: Nacelle-Loadgen:0.1\r\nRequest-Module: Naming\r\n\
             Connection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        );
        s.get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(|e| io_err(&e))?;
        let (status, body, keep) = read_response(s, method == "HEAD").await?;
        if !keep {
            self.stream = None;
        }
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(OpError::Http(status))
        }
    }
}

/// Reads one response: (status, body, keep-alive).
pub(crate) async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    head_only: bool,
) -> Result<(u16, Vec<u8>, bool), OpError> {
    let mut line = String::new();
    let n = r.read_line(&mut line).await.map_err(|e| io_err(&e))?;
    if n == 0 {
        return Err(OpError::Io("UnexpectedEof".into()));
    }
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(OpError::Decode)?;
    let mut keep = version != "HTTP/1.0";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        let n = r.read_line(&mut line).await.map_err(|e| io_err(&e))?;
        if n == 0 {
            return Err(OpError::Io("UnexpectedEof".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse().map_err(|_| OpError::Decode)?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                let v = v.to_ascii_lowercase();
                if v.contains("close") {
                    keep = false;
                } else if v.contains("keep-alive") {
                    keep = true;
                }
            }
        }
    }
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((status, body, keep));
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await.map_err(|e| io_err(&e))?;
            let size_hex = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| OpError::Decode)?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    line.clear();
                    let n = r.read_line(&mut line).await.map_err(|e| io_err(&e))?;
                    if n == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(OpError::Decode);
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .await
                .map_err(|e| io_err(&e))?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await.map_err(|e| io_err(&e))?;
        }
    } else if let Some(len) = length {
        if len > MAX_BODY {
            return Err(OpError::Decode);
        }
        body.resize(len, 0);
        r.read_exact(&mut body).await.map_err(|e| io_err(&e))?;
    } else {
        (&mut *r)
            .take(MAX_BODY as u64)
            .read_to_end(&mut body)
            .await
            .map_err(|e| io_err(&e))?;
        keep = false;
    }
    Ok((status, body, keep))
}

/// `path?k=v&...` with form encoding.
pub fn path_with_query(path: &str, params: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::with_capacity(128));
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    format!("{path}?{}", ser.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_content_length_and_chunked_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\
Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        assert_eq!(
            read_response(&mut r, false).await.unwrap(),
            (200, b"ok".to_vec(), true)
        );
        assert_eq!(
            read_response(&mut r, false).await.unwrap(),
            (200, b"abcde".to_vec(), false)
        );
        assert_eq!(
            read_response(&mut r, false).await.unwrap(),
            (404, Vec::new(), true)
        );
        assert!(read_response(&mut r, false).await.is_err());
    }

    #[test]
    fn query_strings_are_encoded() {
        assert_eq!(
            path_with_query(
                "/x",
                &[("serviceName", "G@@s 1"), ("metadata", "{\"a\":1}")]
            ),
            "/x?serviceName=G%40%40s+1&metadata=%7B%22a%22%3A1%7D"
        );
    }
}
