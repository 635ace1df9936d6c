//! What a health check is: the Nacos `healthChecker` JSON of a cluster, parsed and validated
//! once at configuration time, and how a probe's raw result counts.
//!
//! Nacos stores the checker per cluster (`PUT /nacos/v1/ns/cluster`, `healthChecker=`) as a
//! JSON object polymorphic on `"type"`: `TCP`, `HTTP`, `MYSQL`, `NONE`. Nacelle checks TCP
//! and HTTP and honours NONE; MYSQL is refused here with [`SpecError::Unsupported`], so an
//! operator learns it at configuration time instead of seeing instances never checked.
//!
//! Differences from Nacos, on purpose:
//! - a `"type"` Nacos does not know is an error here (Jackson maps it to NONE through
//!   `defaultImpl`, which silently turns checks off after a typo); a missing `"type"` is NONE
//!   as in Nacos. Type names are accepted in any case.
//! - header names and values are validated (an HTTP token; no control characters), and the
//!   path must be a path: the probe writes them into a request line, so a CR/LF could
//!   otherwise inject a second request.
//! - `expectedResponseCode` is accepted and ignored, as in Nacos (nothing under
//!   naming/src/main reads it): only 200 is healthy.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use crate::model::Host;

/// Longest HTTP check path accepted.
pub const MAX_PATH_LEN: usize = 1024;
/// Most custom headers of an HTTP check.
pub const MAX_HEADERS: usize = 32;
/// Longest header name or value.
pub const MAX_HEADER_LEN: usize = 512;

/// The check of a persistent instance. `Default` is TCP: Nacos probes every persistent
/// instance over TCP when its cluster has no metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckSpec {
    /// A TCP connect to the instance (500 ms timeout): connected is healthy, refused fails at
    /// once, a timeout is a soft failure.
    #[default]
    Tcp,
    /// An HTTP GET.
    Http(HttpCheck),
    /// No check: the stored `healthy` flag stays as it is.
    None,
}

/// An HTTP GET check: `GET http://ip:port{path}` with `User-Agent: VIPServer` and these
/// headers, no redirects; only status 200 is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// The request target, always starting with `/` (`/` when Nacos's path was empty).
    pub path: Box<str>,
    /// Custom headers, in the order given (Nacos `headers` = `k1:v1|k2:v2`).
    pub headers: Vec<Header>,
}

/// One header of an HTTP check: name, value.
pub type Header = (Box<str>, Box<str>);

/// Why a `healthChecker` is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// A checker type Nacelle does not run (MYSQL).
    Unsupported(String),
    /// Malformed JSON, an unknown type, or an invalid field.
    Invalid(String),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Unsupported(m) | SpecError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SpecError {}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

impl CheckSpec {
    /// The Nacos type name (`TCP`, `HTTP`, `NONE`).
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckSpec::Tcp => "TCP",
            CheckSpec::Http(_) => "HTTP",
            CheckSpec::None => "NONE",
        }
    }

    /// Whether this spec is ever probed.
    pub fn probes(&self) -> bool {
        !matches!(self, CheckSpec::None)
    }

    /// The Nacos JSON of this spec (what `GET /nacos/v1/ns/cluster`-style answers show).
    pub fn to_json(&self) -> Value {
        match self {
            CheckSpec::Http(h) => {
                let headers: Vec<String> =
                    h.headers.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                serde_json::json!({
                    "type": "HTTP",
                    "path": &*h.path,
                    "headers": headers.join("|"),
                    "expectedResponseCode": 200,
                })
            }
            other => serde_json::json!({ "type": other.type_name() }),
        }
    }
}

/// Parses and validates a Nacos `healthChecker` JSON.
///
/// `{"type":"TCP"}` → [`CheckSpec::Tcp`]; `{"type":"HTTP","path":"/health","headers":
/// "k1:v1|k2:v2"}` → [`CheckSpec::Http`]; `{"type":"NONE"}` or no `"type"` →
/// [`CheckSpec::None`]; `{"type":"MYSQL",…}` → [`SpecError::Unsupported`]. Header entries
/// that are not exactly `name:value` are skipped, as Nacos does (`Http.getCustomHeaders`).
pub fn parse_health_checker(json: &str) -> Result<CheckSpec, SpecError> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| invalid(format!("healthChecker is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(invalid("healthChecker must be a JSON object"));
    };
    let ty = match obj.get("type") {
        None | Some(Value::Null) => return Ok(CheckSpec::None),
        Some(Value::String(s)) => s.trim().to_ascii_uppercase(),
        Some(_) => return Err(invalid("healthChecker type must be a string")),
    };
    match ty.as_str() {
        "TCP" => Ok(CheckSpec::Tcp),
        "NONE" => Ok(CheckSpec::None),
        "MYSQL" => Err(SpecError::Unsupported(
            "health checker type MYSQL is not supported by nacelle (use TCP, HTTP or NONE)"
                .to_string(),
        )),
        "HTTP" => {
            let path = string_field(&obj, "path")?;
            let headers = string_field(&obj, "headers")?;
            Ok(CheckSpec::Http(HttpCheck {
                path: parse_path(path)?,
                headers: parse_headers(headers)?,
            }))
        }
        _ => Err(invalid(format!(
            "unknown health checker type {ty:?} (TCP, HTTP or NONE)"
        ))),
    }
}

fn string_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, SpecError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("healthChecker {name} must be a string"))),
    }
}

/// The request target of an HTTP check. Nacos resolves the path against
/// `http://ip:port` (`new URL(host, path)`): empty is `/`, `health` is `/health`, a fragment
/// is dropped. A path naming another host or scheme is refused.
fn parse_path(path: &str) -> Result<Box<str>, SpecError> {
    let path = path.split('#').next().unwrap_or_default();
    if path.len() > MAX_PATH_LEN {
        return Err(invalid(format!(
            "health check path longer than {MAX_PATH_LEN} bytes"
        )));
    }
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "health check path contains {c:?}: only visible ASCII is allowed (percent-encode the rest)"
        )));
    }
    if path.starts_with("//") {
        return Err(invalid("health check path must not name a host"));
    }
    if path.starts_with('/') {
        return Ok(path.into());
    }
    let first_segment = path.split(['/', '?']).next().unwrap_or_default();
    if first_segment.contains(':') {
        return Err(invalid("health check path must be a path, not a URL"));
    }
    Ok(format!("/{path}").into())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn parse_headers(raw: &str) -> Result<Vec<Header>, SpecError> {
    let mut out = Vec::new();
    if raw.trim().is_empty() {
        return Ok(out);
    }
    if raw.chars().any(|c| c.is_control()) {
        return Err(invalid("health check headers contain a control character"));
    }
    for entry in raw.split('|') {
        let parts: Vec<&str> = entry.split(':').collect();
        // Java's String.split drops trailing empty strings: "k:" is one part, skipped.
        let parts_len = if parts.last().is_some_and(|p| p.is_empty()) {
            parts.len() - 1
        } else {
            parts.len()
        };
        if parts_len != 2 {
            continue;
        }
        let (name, value) = (parts[0].trim(), parts[1].trim());
        if name.is_empty() || name.len() > MAX_HEADER_LEN || !name.chars().all(is_token_char) {
            return Err(invalid(format!(
                "health check header name {name:?} is not a valid HTTP header name"
            )));
        }
        if value.len() > MAX_HEADER_LEN || value.chars().any(|c| c.is_control()) {
            return Err(invalid(format!(
                "health check header {name} has an invalid value"
            )));
        }
        if out.len() == MAX_HEADERS {
            return Err(invalid(format!(
                "more than {MAX_HEADERS} health check headers"
            )));
        }
        out.push((name.into(), value.into()));
    }
    Ok(out)
}

/// The port a cluster's check probes (Nacos `ClusterMetadata`): the instance's own port when
/// `useInstancePortForCheck` (the default), `checkPort` otherwise.
pub fn check_port(instance_port: u16, check_port: u16, use_instance_port: bool) -> u16 {
    if use_instance_port {
        instance_port
    } else {
        check_port
    }
}

/// The address to probe for an instance at `host`: an IPv4 or IPv6 literal (brackets
/// allowed). `None` for a host name: Nacelle does not resolve names on a core, so such an
/// instance is not checked (the driver keeps its stored flag).
pub fn probe_addr(host: &Host, port: u16) -> Option<SocketAddr> {
    let ip = match host {
        Host::V4(ip) => IpAddr::V4(*ip),
        Host::Name(name) => {
            let s = name.trim_start_matches('[').trim_end_matches(']');
            s.parse::<IpAddr>().ok()?
        }
    };
    Some(SocketAddr::new(ip, port))
}

/// The raw result of one probe, as the driver's executor reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// TCP: the connection was established.
    Connected,
    /// HTTP: the status code of the answer.
    Status(u16),
    /// The connection was refused (TCP RST).
    Refused,
    /// Connect or read did not finish in time.
    Timeout,
    /// Anything else (unreachable network, reset, unparsable answer…).
    Error,
}

/// How a result counts towards the thresholds (Nacos `checkOk` / `checkFail` /
/// `checkFailNow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy: counts towards flipping an unhealthy instance back.
    Ok,
    /// A soft failure: counts towards flipping a healthy instance.
    Fail,
    /// A failure that flips a healthy instance at once.
    FailNow,
}

impl ProbeResult {
    /// How Nacos counts it: 200 and an established connection are OK; 503 and 302, a
    /// timeout and other errors are soft failures; a refused connection and any other status
    /// fail at once.
    pub fn verdict(self) -> Verdict {
        match self {
            ProbeResult::Connected | ProbeResult::Status(200) => Verdict::Ok,
            ProbeResult::Status(503 | 302) | ProbeResult::Timeout | ProbeResult::Error => {
                Verdict::Fail
            }
            ProbeResult::Status(_) | ProbeResult::Refused => Verdict::FailNow,
        }
    }
}

/// A stored checker (the Raft store's cluster definition) as the check it runs.
impl From<&crate::store::naming::HealthChecker> for CheckSpec {
    fn from(stored: &crate::store::naming::HealthChecker) -> CheckSpec {
        use crate::store::naming::HealthChecker as Stored;
        match stored {
            Stored::Tcp => CheckSpec::Tcp,
            Stored::Http { path, headers } => CheckSpec::Http(HttpCheck {
                path: path.as_str().into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                    .collect(),
            }),
            Stored::None => CheckSpec::None,
        }
    }
}

/// A parsed check in the store's form.
impl From<&CheckSpec> for crate::store::naming::HealthChecker {
    fn from(spec: &CheckSpec) -> crate::store::naming::HealthChecker {
        use crate::store::naming::HealthChecker as Stored;
        match spec {
            CheckSpec::Tcp => Stored::Tcp,
            CheckSpec::Http(h) => Stored::Http {
                path: h.path.to_string(),
                headers: h
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            CheckSpec::None => Stored::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(path: &str, headers: &[(&str, &str)]) -> CheckSpec {
        CheckSpec::Http(HttpCheck {
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        })
    }

    #[test]
    fn the_four_nacos_types_parse_and_mysql_is_refused() {
        assert_eq!(
            parse_health_checker(r#"{"type":"TCP"}"#),
            Ok(CheckSpec::Tcp)
        );
        assert_eq!(
            parse_health_checker(r#"{"type":"NONE"}"#),
            Ok(CheckSpec::None)
        );
        assert_eq!(
            parse_health_checker(
                r#"{"type":"HTTP","path":"/health","headers":"k1:v1|k2:v2","expectedResponseCode":200}"#
            ),
            Ok(http("/health", &[("k1", "v1"), ("k2", "v2")]))
        );
        let err = parse_health_checker(r#"{"type":"MYSQL","user":"u","pwd":"p","cmd":"select 1"}"#)
            .expect_err("MYSQL is not supported");
        assert!(matches!(err, SpecError::Unsupported(_)));
        assert!(err.to_string().contains("MYSQL is not supported"), "{err}");
    }

    #[test]
    fn a_missing_type_is_none_and_an_unknown_one_an_error() {
        assert_eq!(parse_health_checker("{}"), Ok(CheckSpec::None));
        assert_eq!(
            parse_health_checker(r#"{"type":"tcp"}"#),
            Ok(CheckSpec::Tcp)
        );
        assert!(matches!(
            parse_health_checker(r#"{"type":"TPC"}"#),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(
            parse_health_checker(r#"{"type":1}"#),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(
            parse_health_checker("TCP"),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(
            parse_health_checker("[1]"),
            Err(SpecError::Invalid(_))
        ));
    }

    #[test]
    fn http_paths_resolve_like_nacos_and_urls_are_refused() {
        let p = |path: &str| {
            parse_health_checker(&serde_json::json!({"type":"HTTP","path":path}).to_string())
        };
        assert_eq!(p(""), Ok(http("/", &[])));
        assert_eq!(p("health"), Ok(http("/health", &[])));
        assert_eq!(p("/a?b=c#frag"), Ok(http("/a?b=c", &[])));
        assert!(p("http://other/x").is_err());
        assert!(p("//other/x").is_err());
        assert!(p("/a b").is_err());
        assert!(p("/a\r\nX: y").is_err());
        assert!(p(&format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
        assert_eq!(
            parse_health_checker(r#"{"type":"HTTP"}"#),
            Ok(http("/", &[]))
        );
    }

    #[test]
    fn malformed_header_entries_are_skipped_and_injections_refused() {
        let h = |headers: &str| {
            parse_health_checker(
                &serde_json::json!({"type":"HTTP","path":"/","headers":headers}).to_string(),
            )
        };
        assert_eq!(
            h(" a : 1 |b|c:2:3|d:|e:5"),
            Ok(http("/", &[("a", "1"), ("e", "5")]))
        );
        assert!(h("bad name:1").is_err());
        assert!(h("x:1\r\nInjected: 1").is_err());
        assert!(h("x:1\r\nInjected").is_err());
        let many: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("h{i}:v")).collect();
        assert!(h(&many.join("|")).is_err());
    }

    #[test]
    fn specs_render_back_to_nacos_json() {
        let spec = http("/health", &[("k1", "v1"), ("k2", "v2")]);
        let json = spec.to_json().to_string();
        assert_eq!(parse_health_checker(&json), Ok(spec));
        assert_eq!(CheckSpec::Tcp.to_json(), serde_json::json!({"type":"TCP"}));
        assert_eq!(CheckSpec::default(), CheckSpec::Tcp);
        assert!(!CheckSpec::None.probes());
    }

    #[test]
    fn results_count_like_nacos() {
        use ProbeResult::*;
        assert_eq!(Connected.verdict(), Verdict::Ok);
        assert_eq!(Status(200).verdict(), Verdict::Ok);
        for soft in [Status(503), Status(302), Timeout, Error] {
            assert_eq!(soft.verdict(), Verdict::Fail, "{soft:?}");
        }
        for now in [Status(500), Status(404), Status(201), Status(301), Refused] {
            assert_eq!(now.verdict(), Verdict::FailNow, "{now:?}");
        }
    }

    #[test]
    fn probe_addresses_come_from_ip_literals_and_the_check_port() {
        let v4 = Host::parse("10.0.0.1").expect("valid");
        assert_eq!(
            probe_addr(&v4, check_port(8080, 80, true)),
            Some("10.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(check_port(8080, 80, false), 80);
        let v6 = Host::Name("[::1]".into());
        assert_eq!(probe_addr(&v6, 9), Some("[::1]:9".parse().expect("addr")));
        assert_eq!(probe_addr(&Host::Name("db.local".into()), 9), None);
    }
}
