//! Who sends a request, and whether it may do what it asks: the one check at the entry of
//! every HTTP request ([`http_gate`]) and of every gRPC request ([`grpc_gate`]).
//!
//! What is checked, as in Nacos: the naming API (HTTP v1/v2 `/ns/*`, gRPC instance,
//! query, subscribe and list requests) needs action `r` (reads) or `w` (writes) on the
//! resource `namespace:group:naming/service`; `/ns/operator/metrics` (server status, the Node
//! SDK's health check) and the other APIs under `/nacos/v1` and `/nacos/v2`
//! (cluster status, console data) need a valid identity. Open: health probes
//! (`/nacos/v1/console/health/*`), Prometheus `/metrics`, the console's `server/state` and
//! static pages, the gRPC handshake and health checks, and `/nacos/v1/auth/*` (which checks
//! its own callers: see `api`).

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::Instant;

use engine::auth::ratelimit::{Limits, LoginLimiter};
use engine::auth::{permission, token, Action};
use http::{Method, StatusCode};
use wire::auth::{Credentials, ResourceRef};
use wire::http_params::Params;
use wire::payload::{self, code};
use wire::proto::Payload;

use super::api::{refusal, Resp};

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Identity {
    /// User name.
    pub username: String,
    /// Holds `ROLE_ADMIN`.
    pub admin: bool,
}

/// A refused request: status and Nacos's message.
#[derive(Clone, Debug)]
pub struct Denied {
    /// 403, or 429 (too many password attempts), 503 (no secret yet, bcrypt pool full).
    pub status: StatusCode,
    /// Nacos's text.
    pub message: String,
}

impl Denied {
    fn forbidden(message: &str) -> Denied {
        Denied {
            status: StatusCode::FORBIDDEN,
            message: message.to_owned(),
        }
    }

    fn busy(message: &str) -> Denied {
        Denied {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.to_owned(),
        }
    }
}

/// Nacos's answer to missing or wrong user names and passwords.
pub const USER_NOT_FOUND: &str = "user not found!";
/// Nacos's answer to a valid identity without the permission.
pub const AUTHORIZATION_FAILED: &str = "authorization failed!";
/// Nacos's answer to a well-signed token whose user is gone.
pub const UNKNOWN_USER: &str = "unknown user!";

thread_local! {
    static LIMITER: RefCell<LoginLimiter> = RefCell::new(LoginLimiter::new(Limits::default()));
}

fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Takes one password attempt for `source` (per core: a source spread over `n` cores gets
/// `n` times the rate at most).
pub fn attempt_allowed(source: Option<IpAddr>) -> bool {
    let Some(ip) = source else {
        return true;
    };
    let now = monotonic_ms();
    LIMITER.with(|l| l.borrow_mut().try_acquire(ip, now))
}

/// Checks a user name and password: a pair this core saw pass costs a hash lookup; any other
/// is rate-limited per source, then checked with bcrypt off the core.
pub async fn check_password(
    username: &str,
    password: &str,
    source: Option<IpAddr>,
) -> Result<Identity, Denied> {
    let space = super::current();
    let stored = space.password_hash(username).map(str::to_owned);
    if let Some(h) = stored.as_deref() {
        if super::hash::known_good(username, password, h) {
            return Ok(Identity {
                username: username.to_owned(),
                admin: space.is_admin(username),
            });
        }
    }
    if !attempt_allowed(source) {
        return Err(Denied {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "too many login attempts from this address, retry later".into(),
        });
    }
    let ok = super::hash::verify(password, stored.as_deref())
        .await
        .map_err(|_| Denied::busy("server is over its threshold, retry later"))?;
    match (ok, stored) {
        (true, Some(h)) => {
            super::hash::remember(username, password, &h);
            Ok(Identity {
                username: username.to_owned(),
                admin: space.is_admin(username),
            })
        }
        _ => Err(Denied::forbidden(USER_NOT_FOUND)),
    }
}

/// Who `creds` names.
pub async fn identify(creds: Credentials<'_>, source: Option<IpAddr>) -> Result<Identity, Denied> {
    match creds {
        Credentials::None => Err(Denied::forbidden(USER_NOT_FOUND)),
        Credentials::Token(t) => {
            let space = super::current();
            let Some(secret) = super::secret(&space) else {
                return Err(Denied::busy(
                    "the cluster has no token secret yet (no Raft leader?): retry",
                ));
            };
            let username = token::verify(&secret, t, super::now_s())
                .map_err(|e| Denied::forbidden(e.message()))?;
            if !space.has_user(&username) {
                return Err(Denied::forbidden(UNKNOWN_USER));
            }
            let admin = space.is_admin(&username);
            Ok(Identity { username, admin })
        }
        Credentials::Password { username, password } => {
            check_password(username, password, source).await
        }
    }
}

/// Whether `id` may do `action` on `r`.
pub fn permitted(id: &Identity, r: &ResourceRef, action: Action) -> bool {
    if id.admin {
        return true;
    }
    let resource = permission::resource(&r.namespace, &r.group, &r.service);
    super::current().allows(&id.username, &resource, action)
}

/// What an HTTP request needs.
enum Need {
    Open,
    Identity,
    Resource(Action),
}

fn need_of(method: &Method, path: &str) -> Need {
    // Server status (the Node SDK's health check) needs an identity, not a service's rights.
    if path.ends_with("/ns/operator/metrics") {
        return Need::Identity;
    }
    if path.starts_with("/nacos/v1/ns/") || path.starts_with("/nacos/v2/ns/") {
        return Need::Resource(if method == Method::GET {
            Action::Read
        } else {
            Action::Write
        });
    }
    let open = path == "/metrics"
        || path.starts_with("/nacos/v1/console/health/")
        || path == "/nacos/v1/console/server/state"
        || path.starts_with("/nacos/v1/auth/")
        || !(path.starts_with("/nacos/v1/") || path.starts_with("/nacos/v2/"));
    if open {
        Need::Open
    } else {
        Need::Identity
    }
}

/// The check at the entry of every HTTP request: `Err` is the refusal to send.
pub async fn http_gate(
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
    params: &Params<'_>,
    peer: Option<std::net::SocketAddr>,
) -> Result<(), Resp> {
    if !super::enabled() {
        return Ok(());
    }
    let need = need_of(method, path);
    if matches!(need, Need::Open) {
        return Ok(());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let creds =
        wire::auth::http_credentials(header("authorization"), header("accesstoken"), params);
    let id = identify(creds, peer.map(|p| p.ip()))
        .await
        .map_err(|d| refusal(path, &d))?;
    match need {
        Need::Resource(action) => {
            let r = wire::auth::http_resource(params);
            if permitted(&id, &r, action) {
                Ok(())
            } else {
                Err(refusal(path, &Denied::forbidden(AUTHORIZATION_FAILED)))
            }
        }
        _ => Ok(()),
    }
}

/// The response class Nacos answers a refused gRPC request of `kind` with, and the action it
/// needs; `None`: not checked.
fn grpc_need(kind: &str) -> Option<(&'static str, Action)> {
    Some(match kind {
        "InstanceRequest" | "PersistentInstanceRequest" => ("InstanceResponse", Action::Write),
        "BatchInstanceRequest" => ("BatchInstanceResponse", Action::Write),
        "ServiceQueryRequest" => ("QueryServiceResponse", Action::Read),
        "SubscribeServiceRequest" => ("SubscribeServiceResponse", Action::Read),
        "ServiceListRequest" => ("ServiceListResponse", Action::Read),
        _ => return None,
    })
}

/// The check at the entry of every gRPC request: `Some` is the refusal to answer, the
/// handler's own response type with `errorCode` 403 (Nacos's `RemoteRequestAuthFilter`).
pub async fn grpc_gate(
    kind: &str,
    headers: &std::collections::HashMap<String, String>,
    body: &[u8],
    source: Option<IpAddr>,
) -> Option<Payload> {
    if !super::enabled() {
        return None;
    }
    let (response, action) = grpc_need(kind)?;
    let creds = wire::auth::grpc_credentials(headers);
    let id = match identify(creds, source).await {
        Ok(id) => id,
        Err(d) => {
            let c = if d.status == StatusCode::FORBIDDEN {
                code::NO_RIGHT
            } else {
                code::OVER_THRESHOLD
            };
            return Some(payload::typed_error(response, c, &d.message));
        }
    };
    let r = match wire::auth::grpc_resource(body) {
        Ok(r) => r,
        Err(e) => return Some(payload::typed_error(response, code::INVALID_PARAM, &e)),
    };
    if permitted(&id, &r, action) {
        None
    } else {
        Some(payload::typed_error(
            response,
            code::NO_RIGHT,
            AUTHORIZATION_FAILED,
        ))
    }
}
