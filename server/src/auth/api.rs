//! `/nacos/v1/auth/*`, with Nacos's parameters and answers (`UserController`,
//! `RoleController`, `PermissionController`):
//!
//! - `POST login` and `users/login` (`username`, `password`) →
//!   `{accessToken, tokenTtl, globalAdmin, username}` and `Authorization: Bearer <token>`;
//! - `POST users/admin` (`password`, optional: else a random one) → `{username, password}`,
//!   only while no administrator exists (409 afterwards);
//! - `users` (`GET` paged, `POST` create, `PUT` password, `DELETE`), `users/search`;
//! - `roles` (`GET` paged, `POST` bind, `DELETE` unbind), `roles/search`;
//! - `permissions` (`GET` paged, `POST` grant, `DELETE` revoke).
//!
//! With `--auth`, everything but login and the first admin needs `ROLE_ADMIN`, except a user
//! changing its own password. Without it, as in Nacos, nothing is checked; logins then
//! answer the placeholder token `AUTH_DISABLED` (so SDKs configured with credentials work).
//! Writes go through Raft: every node serves the same users.

use std::net::IpAddr;

use bytes::Bytes;
use engine::store::auth::{AuthCommand, ADMIN_USER};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use wire::auth::Credentials;
use wire::http_params::Params;

use super::gate::{self, Denied, Identity};
use crate::cp::CpError;

/// An HTTP answer.
pub type Resp = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    answer(status, "text/plain; charset=utf-8", body.into())
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    answer(status, "application/json", v.to_string())
}

/// A refused request to `path`: Nacos's text, or its v2 JSON envelope under `/nacos/v2/`.
pub fn refusal(path: &str, d: &Denied) -> Resp {
    if path.starts_with("/nacos/v2/") {
        let code = i32::from(d.status.as_u16());
        json_resp(
            d.status,
            &json!({"code": code, "message": d.message, "data": null}),
        )
    } else {
        text(d.status, d.message.clone())
    }
}

/// Nacos's `RestResult` success.
fn ok(data: Value) -> Resp {
    json_resp(
        StatusCode::OK,
        &json!({"code": 200, "message": null, "data": data}),
    )
}

fn failed(status: StatusCode, message: impl Into<String>) -> Resp {
    let message = message.into();
    json_resp(
        status,
        &json!({"code": status.as_u16(), "message": message, "data": null}),
    )
}

fn missing(name: &str) -> Resp {
    failed(
        StatusCode::BAD_REQUEST,
        format!("Required parameter '{name}' is not present"),
    )
}

fn cp() -> std::sync::Arc<crate::cp::Cp> {
    crate::core::with_core(|c| c.shared.cp.clone())
}

/// Serves a request under `/nacos/v1/auth/`.
pub async fn route(
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
    p: &Params<'_>,
    peer: Option<std::net::SocketAddr>,
) -> Resp {
    let source = peer.map(|a| a.ip());
    let route = path.strip_prefix("/nacos/v1/auth").unwrap_or("");
    match (method, route) {
        (&Method::POST, "/login" | "/users/login") => return login(p, source).await,
        (&Method::POST, "/users/admin") => return create_admin(p).await,
        _ => {}
    }
    // Everything else: an administrator (or, for a password change, the user itself).
    let caller = match caller(headers, p, source).await {
        Ok(c) => c,
        Err(d) => return refusal(path, &d),
    };
    let self_service = method == Method::PUT
        && route == "/users"
        && caller
            .as_ref()
            .is_some_and(|c| p.get("username") == Some(c.username.as_str()));
    if let Some(c) = &caller {
        if !c.admin && !self_service {
            return refusal(
                path,
                &Denied {
                    status: StatusCode::FORBIDDEN,
                    message: gate::AUTHORIZATION_FAILED.into(),
                },
            );
        }
    }
    match (method, route) {
        (&Method::GET, "/users") => list_users(p),
        (&Method::GET, "/users/search") => {
            search(p, "username", |s| s.users().map(str::to_owned).collect())
        }
        (&Method::POST, "/users") => create_user(p).await,
        (&Method::PUT, "/users") => set_password(p).await,
        (&Method::DELETE, "/users") => match p.get("username") {
            None => missing("username"),
            Some(u) => {
                let cmd = AuthCommand::DeleteUser {
                    username: u.to_owned(),
                };
                write(cmd, "delete user ok!").await
            }
        },
        (&Method::GET, "/roles") => list_roles(p),
        (&Method::GET, "/roles/search") => search(p, "role", |s| {
            let mut v: Vec<String> = s.roles().map(|(r, _)| r.to_owned()).collect();
            v.dedup();
            v
        }),
        (&Method::POST, "/roles") => match (p.get("role"), p.get("username")) {
            (Some(role), Some(u)) => {
                let cmd = AuthCommand::AddRole {
                    role: role.to_owned(),
                    username: u.to_owned(),
                };
                write(cmd, "add role ok!").await
            }
            (None, _) => missing("role"),
            (_, None) => missing("username"),
        },
        (&Method::DELETE, "/roles") => match p.get("role") {
            None => missing("role"),
            Some(role) => {
                let username = p.get("username").map(str::to_owned);
                let done = match &username {
                    Some(u) => format!("delete role of user {u} ok!"),
                    None => "delete role ok!".to_owned(),
                };
                let cmd = AuthCommand::DeleteRole {
                    role: role.to_owned(),
                    username,
                };
                write(cmd, &done).await
            }
        },
        (&Method::GET, "/permissions") => list_permissions(p),
        (&Method::POST | &Method::DELETE, "/permissions") => {
            let (Some(role), Some(resource), Some(action)) =
                (p.get("role"), p.get("resource"), p.get("action"))
            else {
                return missing("role, resource and action");
            };
            let (role, resource, action) =
                (role.to_owned(), resource.to_owned(), action.to_owned());
            if method == Method::POST {
                let cmd = AuthCommand::AddPermission {
                    role,
                    resource,
                    action,
                };
                write(cmd, "add permission ok!").await
            } else {
                let cmd = AuthCommand::DeletePermission {
                    role,
                    resource,
                    action,
                };
                write(cmd, "delete permission ok!").await
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no route for {method} {path}"),
        ),
    }
}

/// The caller of a management request: `None` when auth is off (nothing is checked).
async fn caller(
    headers: &http::HeaderMap,
    p: &Params<'_>,
    source: Option<IpAddr>,
) -> Result<Option<Identity>, Denied> {
    if !super::enabled() {
        return Ok(None);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A password change carries the user's *new* password in `newPassword`, never `password`.
    let creds = wire::auth::http_credentials(header("authorization"), header("accesstoken"), p);
    gate::identify(creds, source).await.map(Some)
}

async fn login(p: &Params<'_>, source: Option<IpAddr>) -> Resp {
    let (username, password) = match wire::auth::login_params(p) {
        Ok(v) => v,
        Err(_) => return text(StatusCode::FORBIDDEN, gate::USER_NOT_FOUND),
    };
    let ttl = super::settings().ttl;
    if !super::enabled() {
        return json_resp(
            StatusCode::OK,
            &json!({"accessToken": "AUTH_DISABLED", "tokenTtl": ttl, "globalAdmin": false, "username": username}),
        );
    }
    let id = match gate::identify(Credentials::Password { username, password }, source).await {
        Ok(id) => id,
        Err(d) => return text(d.status, d.message),
    };
    let space = super::current();
    let Some(secret) = super::secret(&space) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster has no token secret yet (no Raft leader?): retry",
        );
    };
    let token = engine::auth::token::issue(&secret, &id.username, super::now_s(), ttl);
    let mut r = json_resp(
        StatusCode::OK,
        &json!({"accessToken": token, "tokenTtl": ttl, "globalAdmin": id.admin, "username": id.username}),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        r.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    r
}

/// A random password for `users/admin` without one: 16 characters from 62.
fn random_password() -> Option<String> {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    // 256 % 62 = 8: the first 8 letters are slightly likelier (≈ 0.02 bits less per char).
    Some(
        bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect(),
    )
}

async fn create_admin(p: &Params<'_>) -> Resp {
    if super::current().has_admin() {
        return failed(StatusCode::CONFLICT, "have admin user cannot use it");
    }
    let password = match p.get("password") {
        Some(pw) if pw.len() > wire::auth::MAX_CREDENTIAL => {
            return failed(StatusCode::BAD_REQUEST, "password too long")
        }
        Some(pw) => pw.to_owned(),
        None => match random_password() {
            Some(pw) => pw,
            None => return failed(StatusCode::INTERNAL_SERVER_ERROR, "no randomness"),
        },
    };
    let hash = match super::hash::hash(&password).await {
        Ok(h) => h,
        Err(_) => {
            return failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is over its threshold, retry later",
            )
        }
    };
    let cmd = AuthCommand::CreateAdmin {
        username: ADMIN_USER.to_owned(),
        password_hash: hash,
    };
    match cp().write_auth(cmd).await {
        Ok(_) => json_resp(
            StatusCode::OK,
            &json!({"username": ADMIN_USER, "password": password}),
        ),
        Err(e) => cp_failure(e),
    }
}

async fn create_user(p: &Params<'_>) -> Resp {
    let (Some(username), Some(password)) = (p.get("username"), p.get("password")) else {
        return missing("username and password");
    };
    if password.len() > wire::auth::MAX_CREDENTIAL {
        return failed(StatusCode::BAD_REQUEST, "password too long");
    }
    if super::current().has_user(username) {
        return failed(
            StatusCode::BAD_REQUEST,
            format!("user '{username}' already exist!"),
        );
    }
    let hash = match super::hash::hash(password).await {
        Ok(h) => h,
        Err(_) => {
            return failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is over its threshold, retry later",
            )
        }
    };
    let cmd = AuthCommand::CreateUser {
        username: username.to_owned(),
        password_hash: hash,
    };
    write(cmd, "create user ok!").await
}

async fn set_password(p: &Params<'_>) -> Resp {
    let (Some(username), Some(password)) = (p.get("username"), p.get("newPassword")) else {
        return missing("username and newPassword");
    };
    if password.len() > wire::auth::MAX_CREDENTIAL {
        return failed(StatusCode::BAD_REQUEST, "password too long");
    }
    let hash = match super::hash::hash(password).await {
        Ok(h) => h,
        Err(_) => {
            return failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is over its threshold, retry later",
            )
        }
    };
    let cmd = AuthCommand::SetPassword {
        username: username.to_owned(),
        password_hash: hash,
    };
    write(cmd, "update user ok!").await
}

fn cp_failure(e: CpError) -> Resp {
    match e {
        CpError::Refused { code, message } => {
            // Nacos answers its IllegalArgumentExceptions with 400; 409 stays a conflict.
            let status = if code == 409 && message.starts_with("have admin") {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            failed(status, message)
        }
        CpError::Unavailable(m) | CpError::KindRule(m) => {
            failed(StatusCode::SERVICE_UNAVAILABLE, m)
        }
    }
}

async fn write(cmd: AuthCommand, done: &str) -> Resp {
    if let Err(m) = engine::store::auth::check(&cmd) {
        return failed(StatusCode::BAD_REQUEST, m);
    }
    match cp().write_auth(cmd).await {
        Ok(_) => ok(Value::String(done.to_owned())),
        Err(e) => cp_failure(e),
    }
}

/// `pageNo` (from 1) and `pageSize` (1..=500, default 100).
fn page(p: &Params<'_>) -> (usize, usize) {
    let no = p
        .get("pageNo")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1);
    let size = p
        .get("pageSize")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 500);
    (no, size)
}

/// Nacos's `Page`: `{totalCount, pageNumber, pagesAvailable, pageItems}`.
fn paged(p: &Params<'_>, items: Vec<Value>) -> Resp {
    let (no, size) = page(p);
    let total = items.len();
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((no - 1).saturating_mul(size))
        .take(size)
        .collect();
    json_resp(
        StatusCode::OK,
        &json!({
            "totalCount": total,
            "pageNumber": no,
            "pagesAvailable": total.div_ceil(size),
            "pageItems": page_items,
        }),
    )
}

/// Nacos's `search=blur` filters by substring, `accurate` (the default) by equality.
fn filter(p: &Params<'_>, name: &str, value: &str) -> bool {
    match p.get(name) {
        None => true,
        Some(want) if p.get("search") == Some("blur") => value.contains(want),
        Some(want) => value == want,
    }
}

fn list_users(p: &Params<'_>) -> Resp {
    let space = super::current();
    let items = space
        .users()
        .filter(|u| filter(p, "username", u))
        .map(|u| json!({"username": u}))
        .collect();
    paged(p, items)
}

fn list_roles(p: &Params<'_>) -> Resp {
    let space = super::current();
    let items = space
        .roles()
        .filter(|(r, u)| filter(p, "role", r) && filter(p, "username", u))
        .map(|(r, u)| json!({"role": r, "username": u}))
        .collect();
    paged(p, items)
}

fn list_permissions(p: &Params<'_>) -> Resp {
    let space = super::current();
    let items = space
        .permissions()
        .filter(|(r, _, _)| filter(p, "role", r))
        .map(|(r, res, a)| json!({"role": r, "resource": res, "action": a}))
        .collect();
    paged(p, items)
}

/// `users/search?username=x`, `roles/search?role=x`: names containing `x` (at most 100).
fn search(
    p: &Params<'_>,
    name: &str,
    all: impl Fn(&engine::store::AuthSpace) -> Vec<String>,
) -> Resp {
    let want = p.get(name).unwrap_or("");
    let found: Vec<Value> = all(&super::current())
        .into_iter()
        .filter(|v| v.contains(want))
        .take(100)
        .map(Value::String)
        .collect();
    json_resp(StatusCode::OK, &Value::Array(found))
}
