//! `/Request/request` without tonic's codec: the unary call every SDK request travels.
//!
//! Why: tonic's generic unary path (a streaming decoder that copies the body into its own
//! buffer, an 8 KiB encode buffer per response, the `Status`/`Response` wrappers and boxed
//! bodies) was about a seventh of the server's CPU per registration in a pinned profile; the
//! call is one length-prefixed protobuf message in each direction, which this reads and writes
//! directly. Everything else on the gRPC port (the bi-stream, unknown methods) stays on tonic.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, SizeHint};
use prost::Message;
use wire::payload::{self, FrameError};
use wire::proto::Payload;

use crate::grpc::ConnCtx;

/// The unary method's path.
pub const PATH: &str = "/Request/request";

/// gRPC status codes this path answers with.
mod status {
    pub const OK: &str = "0";
    pub const CANCELLED: &str = "1";
    pub const INTERNAL: &str = "13";
    pub const RESOURCE_EXHAUSTED: &str = "8";
    pub const UNIMPLEMENTED: &str = "12";
}

/// Serves one call: reads the request message (at most `max_message` bytes), runs the Nacos
/// handler, answers the response message with `grpc-status: 0`; transport-level problems are
/// answered as trailers-only gRPC errors, as tonic would.
pub async fn call(
    ctx: ConnCtx,
    arrived: Instant,
    req: http::Request<hyper::body::Incoming>,
    max_message: usize,
) -> http::Response<UnaryBody> {
    let body = match Limited::new(req.into_body(), max_message.saturating_add(5))
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                status::RESOURCE_EXHAUSTED,
                &format!("message larger than {max_message} bytes"),
            );
        }
        // The client reset the stream or the connection went away: nobody reads this.
        Err(_) => return error(status::CANCELLED, "request body not received"),
    };
    let message = match payload::unary_message(&body) {
        Ok(m) => m,
        Err(e) => {
            let code = match e {
                FrameError::Truncated => status::INTERNAL,
                FrameError::Compressed | FrameError::TrailingData => status::UNIMPLEMENTED,
            };
            return error(code, &e.to_string());
        }
    };
    let request = match Payload::decode(message) {
        Ok(p) => p,
        Err(e) => return error(status::INTERNAL, &format!("failed to decode Payload: {e}")),
    };
    let response = crate::grpc::unary(ctx, arrived, request).await;
    let len = response.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer was sized to the message.
    let _ = response.encode(&mut out);
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static(status::OK));
    respond(UnaryBody {
        data: Some(out.freeze()),
        trailers: Some(trailers),
    })
}

fn respond(body: UnaryBody) -> http::Response<UnaryBody> {
    let mut resp = http::Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// A trailers-only answer (the status in the response headers, no body).
fn error(code: &'static str, message: &str) -> http::Response<UnaryBody> {
    let mut resp = respond(UnaryBody {
        data: None,
        trailers: None,
    });
    let h = resp.headers_mut();
    h.insert("grpc-status", HeaderValue::from_static(code));
    // grpc-message is percent-encoded: '%' and every byte outside printable ASCII.
    let encoded: String = message
        .bytes()
        .flat_map(|b| match b {
            b' '..=b'~' if b != b'%' => vec![b as char],
            _ => format!("%{b:02X}").chars().collect(),
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    resp
}

/// The response body of a unary call: the message, then the trailers.
pub struct UnaryBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_percent_encoded_header_values() {
        let resp = error(status::INTERNAL, "bad 100% \u{e9}");
        assert_eq!(resp.headers()["grpc-status"], "13");
        assert_eq!(resp.headers()["grpc-message"], "bad 100%25 %C3%A9");
    }
}
