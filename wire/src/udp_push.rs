//! Nacos 1.x UDP push: the push packet the server sends, the ack a client answers with, the
//! gzip framing of large packets and the User-Agent rule that decides who gets pushes.
//!
//! Facts (Nacos 2.5.1 `UdpPushService`/`UdpConnector`, identical in 1.4.8 `PushService`):
//! - a push is `{"type":"dom","data":"<ServiceInfo JSON as a string>","lastRefTime":N}`;
//!   `data` is JSON inside a JSON string (double-encoded);
//! - the whole packet is gzipped when it is at least [`GZIP_FROM`] bytes; clients sniff the gzip
//!   magic `1F 8B`, so small packets stay plain;
//! - the ack is `{"type":"push-ack","lastRefTime":"N","data":""}`: Java and Go send
//!   `lastRefTime` as a string, the Node SDK as a number; the server matches it with the
//!   datagram's source address.
//!
//! Why the ack decoder is strict: it reads bytes anyone can send to the push socket. It takes
//! at most [`MAX_ACK`] bytes, needs a `type` string and a non-negative integer `lastRefTime`
//! (string or number), and ignores every other field. It has a fuzz target (`fuzz/`,
//! `udp_ack`) and a stable mirror (`wire/tests/fuzz_udp_push.rs`).

use std::borrow::Cow;

use crate::payload::{push_int, push_str};

/// Packets of at least this many bytes are gzipped (Nacos `UdpPushService`).
pub const GZIP_FROM: usize = 1024;

/// The largest UDP payload over IPv4; a larger push cannot be sent.
pub const MAX_DATAGRAM: usize = 65_507;

/// The largest ack read (Nacos's receive buffer is 64 KiB).
pub const MAX_ACK: usize = 64 * 1024;

/// Why bytes are not an ack (or not a push packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpError(pub String);

impl std::fmt::Display for UdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(m: impl Into<String>) -> UdpError {
    UdpError(m.into())
}

/// The kind of an ack (its `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// `push-ack`: the answer to a `dom` push.
    Push,
    /// `dump-ack` (answer to a `dump`, which no server sends).
    Dump,
    /// Anything else (`unknown-ack`, Go's `unknow-ack`, ...).
    Other,
}

/// A decoded ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Its `type`.
    pub kind: AckKind,
    /// The `lastRefTime` of the push it answers.
    pub ref_time: u64,
}

/// `lastRefTime` as the SDKs send it: a string (Java, Go) or a number (Node).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RefTime<'a> {
    Number(u64),
    Text(#[serde(borrow)] Cow<'a, str>),
}

#[derive(serde::Deserialize)]
struct AckJson<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "lastRefTime", borrow)]
    last_ref_time: RefTime<'a>,
}

/// Decodes an ack datagram (plain JSON; no SDK compresses acks).
pub fn decode_ack(bytes: &[u8]) -> Result<Ack, UdpError> {
    if bytes.len() > MAX_ACK {
        return Err(err(format!("ack of {} bytes is too large", bytes.len())));
    }
    let json: AckJson<'_> =
        serde_json::from_slice(bytes).map_err(|e| err(format!("ack is not JSON: {e}")))?;
    let ref_time = match json.last_ref_time {
        RefTime::Number(n) => n,
        RefTime::Text(s) => {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(format!("ack lastRefTime {s:?} is not a number")));
            }
            s.parse::<u64>()
                .map_err(|_| err(format!("ack lastRefTime {s:?} is out of range")))?
        }
    };
    let kind = match &*json.kind {
        "push-ack" => AckKind::Push,
        "dump-ack" => AckKind::Dump,
        _ => AckKind::Other,
    };
    Ok(Ack { kind, ref_time })
}

/// An ack as an SDK writes it (`as_text`: Java/Go's string `lastRefTime`; else Node's number).
pub fn encode_ack(ref_time: u64, as_text: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"type\":\"push-ack\",\"lastRefTime\":");
    if as_text {
        out.push(b'"');
    }
    push_int(&mut out, ref_time);
    if as_text {
        out.push(b'"');
    }
    out.extend_from_slice(b",\"data\":\"\"}");
    out
}

/// The push datagram for a `ServiceInfo` JSON (`service_info`, UTF-8) and key `ref_time`:
/// plain below [`GZIP_FROM`] bytes, gzipped from it.
pub fn encode_push(service_info: &[u8], ref_time: u64) -> Vec<u8> {
    let out = encode_plain(service_info, ref_time);
    if out.len() >= GZIP_FROM {
        gzip(&out)
    } else {
        out
    }
}

/// The push datagram before compression.
pub fn encode_plain(service_info: &[u8], ref_time: u64) -> Vec<u8> {
    let data = String::from_utf8_lossy(service_info);
    let mut out = Vec::with_capacity(service_info.len() + service_info.len() / 8 + 64);
    out.extend_from_slice(b"{\"type\":\"dom\",\"data\":");
    push_str(&mut out, &data);
    out.extend_from_slice(b",\"lastRefTime\":");
    push_int(&mut out, ref_time);
    out.push(b'}');
    out
}

/// A push datagram as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPacket {
    /// `type` (`dom`).
    pub kind: String,
    /// `data`: the `ServiceInfo` JSON.
    pub data: String,
    /// `lastRefTime`: the key to echo in the ack.
    pub ref_time: u64,
}

#[derive(serde::Deserialize)]
struct PushJson {
    #[serde(rename = "type")]
    kind: String,
    data: String,
    #[serde(rename = "lastRefTime")]
    last_ref_time: u64,
}

/// Decodes a push datagram the way the SDKs do (gunzip when it starts with the gzip magic).
/// Used by tests and by tools that play the client.
pub fn decode_push(bytes: &[u8]) -> Result<PushPacket, UdpError> {
    let plain: Cow<'_, [u8]> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Cow::Owned(gunzip(bytes, 16 * MAX_DATAGRAM)?)
    } else {
        Cow::Borrowed(bytes)
    };
    let json: PushJson =
        serde_json::from_slice(&plain).map_err(|e| err(format!("push is not JSON: {e}")))?;
    Ok(PushPacket {
        kind: json.kind,
        data: json.data,
        ref_time: json.last_ref_time,
    })
}

/// A gzip member (RFC 1952) of `data`: the plain 10-byte header Java's `GZIPOutputStream`
/// writes, deflate at level 6, CRC-32 and length.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let deflated = miniz_oxide::deflate::compress_to_vec(data, 6);
    let mut out = Vec::with_capacity(deflated.len() + 18);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The contents of a gzip member of at most `max` bytes (header flags honoured, CRC checked).
pub fn gunzip(bytes: &[u8], max: usize) -> Result<Vec<u8>, UdpError> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let short = || err("gzip member is truncated");
    if bytes.len() < 18 || bytes[0] != 0x1f || bytes[1] != 0x8b || bytes[2] != 8 {
        return Err(err("not a gzip member"));
    }
    let flags = bytes[3];
    let mut at = 10usize;
    if flags & FEXTRA != 0 {
        let len = bytes.get(at..at + 2).ok_or_else(short)?;
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let rest = bytes.get(at..).ok_or_else(short)?;
            let end = rest.iter().position(|b| *b == 0).ok_or_else(short)?;
            at += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    let tail = bytes.len() - 8;
    let body = bytes.get(at..tail).ok_or_else(short)?;
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(body, max)
        .map_err(|e| err(format!("gzip member does not inflate: {e:?}")))?;
    let crc = u32::from_le_bytes([
        bytes[tail],
        bytes[tail + 1],
        bytes[tail + 2],
        bytes[tail + 3],
    ]);
    if crc != crc32fast::hash(&out) {
        return Err(err("gzip member fails its CRC"));
    }
    Ok(out)
}

/// Whether a client presenting `user_agent` gets UDP pushes: Nacos's `canEnablePush`
/// (N/push/UdpPushService.java, versions from N/misc/SwitchDomain.java). The Node SDK presents
/// itself as `Nacos-Java-Client:v1.0.0`, the Go SDK v1 as `Nacos-Go-Client:v1.1.6`; Python's
/// `Nacos-Python-Client` and unknown agents get none.
pub fn push_eligible(user_agent: &str) -> bool {
    const RULES: &[(&str, (u32, u32, u32))] = &[
        ("Nacos-Java-Client", (0, 1, 0)),
        ("Nacos-Go-Client", (0, 1, 0)),
        ("Nacos-DNS", (0, 4, 3)),
        ("Nacos-C-Client", (1, 0, 12)),
        ("vip-client4cpp", (1, 0, 12)),
        ("Nacos-CSharp-Client", (0, 9, 0)),
    ];
    let Some((_, least)) = RULES.iter().find(|(p, _)| user_agent.starts_with(p)) else {
        return false;
    };
    // Nacos `ClientInfo`: the version is what follows the first `:v`.
    let Some(at) = user_agent.find(":v") else {
        return false;
    };
    parse_version(&user_agent[at + 2..]) >= *least
}

/// `major.minor.patch` from the leading digits of up to three dot-separated parts (missing
/// parts are 0; `1.4.1-SNAPSHOT` is 1.4.1). Nothing parseable is 0.0.0, below every rule.
fn parse_version(s: &str) -> (u32, u32, u32) {
    let mut parts = s.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).take(9).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next().flatten();
    let minor = parts.next().flatten();
    let patch = parts.next().flatten();
    (major.unwrap_or(0), minor.unwrap_or(0), patch.unwrap_or(0))
}

/// The push target a `GET /instance/list` names: `udpPort` (and `clientIP`, `app`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListTarget<'a> {
    /// `udpPort` (1..=65535).
    pub udp_port: u16,
    /// `clientIP`, when it is an address.
    pub client_ip: Option<std::net::IpAddr>,
    /// `app` (empty when absent).
    pub app: &'a str,
}

/// The push target of a list call's parameters: `None` without a usable `udpPort` (absent, 0,
/// not a port). Lenient, as a list call is answered either way; `app` is cut to 128 bytes.
pub fn list_target<'a>(p: &'a crate::http_params::Params<'_>) -> Option<ListTarget<'a>> {
    let udp_port = p
        .get("udpPort")?
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|n| *n > 0)?;
    let client_ip = p
        .get("clientIP")
        .and_then(|s| s.trim().parse::<std::net::IpAddr>().ok());
    let app = p.get("app").unwrap_or("");
    let cut = (0..=app.len().min(128))
        .rev()
        .find(|i| app.is_char_boundary(*i))
        .unwrap_or(0);
    Some(ListTarget {
        udp_port,
        client_ip,
        app: &app[..cut],
    })
}

/// Property of the `udp_ack` fuzz target: `data` as a datagram reaching the push socket (an
/// ack) and as one reaching a client (a push). Nothing panics; an ack that decodes re-encodes
/// (both `lastRefTime` forms) to the same key; a push that decodes re-encodes to the same
/// contents; any bytes as a `ServiceInfo` make a push that decodes back to them (lossy UTF-8),
/// gzipped exactly when it is large.
pub fn fuzz_property(data: &[u8]) {
    if let Ok(ack) = decode_ack(data) {
        for as_text in [false, true] {
            let again = decode_ack(&encode_ack(ack.ref_time, as_text)).expect("an ack re-decodes");
            assert_eq!(again.ref_time, ack.ref_time);
            assert_eq!(again.kind, AckKind::Push);
        }
    }
    if let Ok(p) = decode_push(data) {
        let again = decode_push(&encode_push(p.data.as_bytes(), p.ref_time)).expect("re-decodes");
        assert_eq!(
            again,
            PushPacket {
                kind: "dom".into(),
                ..p
            }
        );
    }
    let ref_time = data.len() as u64 * 7919;
    let packet = encode_push(data, ref_time);
    let p = decode_push(&packet).expect("a push decodes");
    assert_eq!(p.data, String::from_utf8_lossy(data));
    assert_eq!(p.ref_time, ref_time);
    assert_eq!(
        packet.starts_with(&[0x1f, 0x8b]),
        encode_plain(data, ref_time).len() >= GZIP_FROM,
        "gzipped exactly from GZIP_FROM bytes"
    );
    let _ = push_eligible(&String::from_utf8_lossy(data));
}

/// Seeds of the `udp_ack` target: acks as each SDK sends them, a push of each size class.
pub fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("java-ack", encode_ack(1_234_567_890_123, true)),
        ("node-ack", encode_ack(42, false)),
        (
            "go-unknown-ack",
            br#"{"type":"unknow-ack","lastRefTime":"7","data":""}"#.to_vec(),
        ),
        (
            "dump-ack",
            br#"{"type":"dump-ack","lastRefTime":9,"data":"{\"a@@b\":{}}"}"#.to_vec(),
        ),
        (
            "small-push",
            encode_push(br#"{"name":"DEFAULT_GROUP@@svc","hosts":[]}"#, 3),
        ),
        (
            "gzipped-push",
            encode_push(
                format!(
                    r#"{{"name":"DEFAULT_GROUP@@svc","hosts":[{}]}}"#,
                    vec![r#"{"ip":"10.0.0.1","port":80}"#; 40].join(",")
                )
                .as_bytes(),
                4,
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn acks_of_every_sdk_decode() {
        let java = br#"{"type":"push-ack","lastRefTime":"123456789012345","data":""}"#;
        assert_eq!(
            decode_ack(java).unwrap(),
            Ack {
                kind: AckKind::Push,
                ref_time: 123_456_789_012_345
            }
        );
        let node = br#"{"type":"push-ack","lastRefTime":17,"data":""}"#;
        assert_eq!(decode_ack(node).unwrap().ref_time, 17);
        let go = br#"{"type":"unknow-ack","lastRefTime":"5","data":""}"#;
        assert_eq!(decode_ack(go).unwrap().kind, AckKind::Other);
        // Field order and extra fields do not matter.
        let odd = br#"{"data":"","x":[1,{}],"lastRefTime":"8","type":"push-ack"}"#;
        assert_eq!(decode_ack(odd).unwrap().ref_time, 8);
    }

    #[test]
    fn malformed_acks_are_refused() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            br#"{"type":"push-ack"}"#,
            br#"{"lastRefTime":1}"#,
            br#"{"type":"push-ack","lastRefTime":-1}"#,
            br#"{"type":"push-ack","lastRefTime":1.5}"#,
            br#"{"type":"push-ack","lastRefTime":"1e3"}"#,
            br#"{"type":"push-ack","lastRefTime":" 12"}"#,
            br#"{"type":"push-ack","lastRefTime":"99999999999999999999"}"#,
            br#"{"type":"push-ack","lastRefTime":""}"#,
            br#"{"type":7,"lastRefTime":1}"#,
            b"\x1f\x8b\x08\x00",
        ] {
            assert!(
                decode_ack(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = br#"{"type":"push-ack","lastRefTime":1,"data":""#.to_vec();
        huge.resize(MAX_ACK + 10, b'a');
        huge.extend_from_slice(b"\"}");
        assert!(decode_ack(&huge).is_err());
    }

    #[test]
    fn small_push_is_plain_json_with_double_encoded_data() {
        let info = br#"{"name":"DEFAULT_GROUP@@svc","hosts":[]}"#;
        let packet = encode_push(info, 99);
        assert_eq!(
            std::str::from_utf8(&packet).unwrap(),
            r#"{"type":"dom","data":"{\"name\":\"DEFAULT_GROUP@@svc\",\"hosts\":[]}","lastRefTime":99}"#
        );
        let p = decode_push(&packet).unwrap();
        assert_eq!(p.data.as_bytes(), info);
        assert_eq!(p.ref_time, 99);
    }

    #[test]
    fn push_is_gzipped_from_1024_bytes() {
        // The envelope around `data` is 40 bytes here (`lastRefTime` 1, nothing to escape).
        let envelope = encode_push(b"", 1).len();
        assert_eq!(envelope, 40);
        let below = vec![b'a'; GZIP_FROM - envelope - 1];
        assert_eq!(encode_push(&below, 1).len(), GZIP_FROM - 1);
        let at = vec![b'a'; GZIP_FROM - envelope];
        let packet = encode_push(&at, 1);
        assert!(packet.starts_with(&[0x1f, 0x8b]));
        assert!(packet.len() < 100, "1 KiB of one letter compresses");
        assert_eq!(decode_push(&packet).unwrap().data.len(), at.len());
    }

    #[test]
    fn gzip_round_trips_and_checks_its_crc() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        let z = gzip(&data);
        assert_eq!(gunzip(&z, 1 << 20).unwrap(), data);
        let mut broken = z.clone();
        let n = broken.len();
        broken[n - 6] ^= 1;
        assert!(gunzip(&broken, 1 << 20).is_err());
        assert!(gunzip(&z, 100).is_err(), "limit is honoured");
        assert!(gunzip(&z[..12], 1 << 20).is_err());
    }

    #[test]
    fn user_agents_follow_nacos_rule() {
        for yes in [
            "Nacos-Java-Client:v1.0.0",
            "Nacos-Java-Client:v1.4.1-SNAPSHOT",
            "Nacos-Go-Client:v1.1.6",
            "Nacos-DNS:v0.4.3",
            "Nacos-C-Client:v1.0.12",
            "vip-client4cpp:v2.0",
            "Nacos-CSharp-Client:v0.9.0",
        ] {
            assert!(push_eligible(yes), "{yes}");
        }
        for no in [
            "",
            "Nacos-Python-Client:v0.1.16",
            "curl/8.0",
            "Nacos-Java-Client",
            "Nacos-Java-Client:v0.0.9",
            "Nacos-Java-Client:vX",
            "Nacos-DNS:v0.4.2",
            "Nacos-C-Client:v1.0.11",
            "nacos-java-client:v1.0.0",
        ] {
            assert!(!push_eligible(no), "{no}");
        }
    }

    #[test]
    fn list_targets_need_a_port() {
        use crate::http_params::Params;
        let q = |s: &str| {
            let p = Params::parse(Some(s), b"");
            list_target(&p).map(|t| (t.udp_port, t.client_ip, t.app.to_owned()))
        };
        assert_eq!(
            q("serviceName=a&udpPort=5000&clientIP=10.0.0.1&app=web"),
            Some((5000, Some("10.0.0.1".parse().unwrap()), "web".into()))
        );
        assert_eq!(
            q("serviceName=a&udpPort=5000&clientIP=bogus"),
            Some((5000, None, "".into()))
        );
        for none in [
            "serviceName=a",
            "udpPort=0",
            "udpPort=65536",
            "udpPort=-1",
            "udpPort=x",
        ] {
            assert_eq!(q(none), None, "{none}");
        }
        let long = format!("udpPort=1&app={}", "é".repeat(100));
        assert_eq!(q(&long).unwrap().2.len(), 128);
    }

    #[test]
    fn fuzz_seeds_keep_the_property() {
        for (_, seed) in fuzz_seeds() {
            fuzz_property(&seed);
        }
    }
}
