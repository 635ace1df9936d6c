//! The Nacos `Payload` envelope: `metadata.type` names the body's Java class, and the body is an
//! `Any` whose `value` is the JSON text (its `type_url` is empty).

use std::collections::HashMap;

use crate::proto::{Metadata, Payload};

/// A decoded request envelope.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// `metadata.type`, e.g. `InstanceRequest`.
    pub kind: &'a str,
    /// The JSON body.
    pub body: &'a [u8],
    /// `metadata.headers` (the SDK moves request headers here).
    pub headers: &'a HashMap<String, String>,
    /// `metadata.clientIp`.
    pub client_ip: &'a str,
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// No metadata or an empty type.
    MissingType,
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::MissingType => f.write_str("payload has no metadata.type"),
        }
    }
}

/// Why the body of a unary gRPC call holds no single message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its 5-byte prefix says.
    Truncated,
    /// The compression flag is set (Nacos SDKs never compress; no codec is negotiated).
    Compressed,
    /// Bytes after the first message: a unary call carries exactly one.
    TrailingData,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Truncated => "truncated gRPC message",
            FrameError::Compressed => "compressed messages are not supported",
            FrameError::TrailingData => "a unary call takes exactly one message",
        })
    }
}

/// The one message of a unary gRPC request body: after a 5-byte prefix (compression flag,
/// big-endian length), exactly that many bytes.
pub fn unary_message(body: &[u8]) -> Result<&[u8], FrameError> {
    let Some((prefix, message)) = body.split_first_chunk::<5>() else {
        return Err(FrameError::Truncated);
    };
    if prefix[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    match message.len().cmp(&len) {
        std::cmp::Ordering::Equal => Ok(message),
        std::cmp::Ordering::Less => Err(FrameError::Truncated),
        std::cmp::Ordering::Greater => Err(FrameError::TrailingData),
    }
}

/// Reads the envelope of `payload`.
pub fn open(payload: &Payload) -> Result<Envelope<'_>, EnvelopeError> {
    static NO_HEADERS: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
    let meta = payload.metadata.as_ref();
    let kind = meta.map(|m| m.r#type.as_str()).unwrap_or("");
    if kind.is_empty() {
        return Err(EnvelopeError::MissingType);
    }
    Ok(Envelope {
        kind,
        body: payload
            .body
            .as_ref()
            .map(|b| b.value.as_slice())
            .unwrap_or(b"{}"),
        headers: meta
            .map(|m| &m.headers)
            .unwrap_or_else(|| NO_HEADERS.get_or_init(HashMap::new)),
        client_ip: meta.map(|m| m.client_ip.as_str()).unwrap_or(""),
    })
}

/// Wraps a JSON body of class `kind` into a payload.
pub fn seal(kind: &str, json: Vec<u8>) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_owned(),
            client_ip: String::new(),
            headers: HashMap::new(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: json,
        }),
    }
}

/// Nacos error codes used in `ErrorResponse.errorCode` (NacosException).
pub mod code {
    /// Server is starting.
    pub const SERVER_STARTING: i32 = 300;
    /// The connection did not send ConnectionSetupRequest (the client must reconnect).
    pub const UN_REGISTER: i32 = 301;
    /// No handler for the request type.
    pub const NO_HANDLER: i32 = 302;
    /// Invalid parameter.
    pub const INVALID_PARAM: i32 = 400;
    /// Not found.
    pub const NOT_FOUND: i32 = 404;
    /// Server error.
    pub const SERVER_ERROR: i32 = 500;
    /// The request body could not be parsed.
    pub const BAD_GATEWAY: i32 = 502;
    /// Over threshold: the server sheds load.
    pub const OVER_THRESHOLD: i32 = 503;
    /// No right: authentication or authorization failed (`NacosException.NO_RIGHT`).
    pub const NO_RIGHT: i32 = 403;
}

/// A JSON `ErrorResponse` body.
pub fn error_json(error_code: i32, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + message.len());
    out.extend_from_slice(b"{\"resultCode\":500,\"errorCode\":");
    out.extend_from_slice(error_code.to_string().as_bytes());
    out.extend_from_slice(b",\"message\":");
    push_str(&mut out, message);
    out.extend_from_slice(b",\"success\":false}");
    out
}

/// An `ErrorResponse` payload.
pub fn error(error_code: i32, message: &str) -> Payload {
    seal("ErrorResponse", error_json(error_code, message))
}

/// A failed response of class `kind` (not `ErrorResponse`): how Nacos answers a request its
/// filters refuse, e.g. a missing permission (`RemoteRequestAuthFilter`: the handler's own
/// response type with `errorCode` 403), so the SDK's response cast still works.
pub fn typed_error(kind: &str, error_code: i32, message: &str) -> Payload {
    seal(kind, error_json(error_code, message))
}

/// A successful response of class `kind` with extra JSON fields (`extra` is either empty or
/// a list of `"key":value` pairs without braces).
pub fn ok(kind: &str, extra: &str, request_id: Option<&str>) -> Payload {
    let mut out = Vec::with_capacity(64 + extra.len());
    out.extend_from_slice(b"{\"resultCode\":200,\"errorCode\":0,");
    if let Some(id) = request_id {
        out.extend_from_slice(b"\"requestId\":");
        push_str(&mut out, id);
        out.push(b',');
    }
    if !extra.is_empty() {
        out.extend_from_slice(extra.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"success\":true}");
    seal(kind, out)
}

/// Appends `s` as a JSON string literal.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_str_contents(out, s);
    out.push(b'"');
}

/// Appends `s` escaped for the inside of a JSON string literal (no quotes).
pub fn push_str_contents(out: &mut Vec<u8>, s: &str) {
    // Names and addresses almost never need escaping: copy them in one go.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    // serde_json's escaper is correct for every code point; writing to a Vec cannot fail.
    let mut quoted = Vec::with_capacity(s.len() + 8);
    let _ = serde_json::to_writer(&mut quoted, s);
    out.extend_from_slice(&quoted[1..quoted.len() - 1]);
}

/// Appends an integer.
pub fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    push_str(&mut out, s);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_unary_message_is_the_body_past_its_prefix_and_malformed_bodies_are_errors() {
        assert_eq!(unary_message(&[0, 0, 0, 0, 2, 7, 8]), Ok(&[7u8, 8][..]));
        assert_eq!(unary_message(&[0, 0, 0, 0, 0]), Ok(&[][..]));
        assert_eq!(unary_message(&[0, 0, 0]), Err(FrameError::Truncated));
        assert_eq!(
            unary_message(&[0, 0, 0, 0, 3, 1]),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            unary_message(&[1, 0, 0, 0, 1, 1]),
            Err(FrameError::Compressed)
        );
        let two = [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0];
        assert_eq!(unary_message(&two), Err(FrameError::TrailingData));
    }

    #[test]
    fn error_bodies_are_valid_json_with_nacos_fields() {
        let body = error_json(301, "Connection is \"unregistered\".");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["resultCode"], 500);
        assert_eq!(v["errorCode"], 301);
        assert_eq!(v["success"], false);
        assert_eq!(v["message"], "Connection is \"unregistered\".");
    }

    #[test]
    fn ok_bodies_carry_extra_fields_and_request_id() {
        let p = ok(
            "InstanceResponse",
            "\"type\":\"registerInstance\"",
            Some("7"),
        );
        assert_eq!(p.metadata.as_ref().unwrap().r#type, "InstanceResponse");
        let v: serde_json::Value = serde_json::from_slice(&p.body.unwrap().value).unwrap();
        assert_eq!(v["type"], "registerInstance");
        assert_eq!(v["requestId"], "7");
        assert_eq!(v["success"], true);
    }

    #[test]
    fn strings_are_escaped_exactly_like_serde_json() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "ctl\u{1}\n\t",
            "uni\u{2028}é",
            "",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn an_envelope_without_type_is_refused() {
        let p = Payload {
            metadata: None,
            body: None,
        };
        assert_eq!(open(&p).unwrap_err(), EnvelopeError::MissingType);
    }
}
