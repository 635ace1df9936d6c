//! What a request brings to prove who sends it, as Nacos reads it
//! (`HttpIdentityContextBuilder`, `GrpcIdentityContextBuilder`, `NacosAuthPluginService`),
//! and which naming resource it touches (`NamingResourceParser`).
//!
//! HTTP: an `Authorization: Bearer <token>` header, an `accessToken` header, an `accessToken`
//! query or form parameter, or `username` + `password` parameters (the Node SDK sends those on
//! every call). gRPC: the same names among the Payload's `metadata.headers` (the Java, Go,
//! Python and Rust SDKs put `accessToken` there). A token wins over a password.

use std::collections::HashMap;

use serde::Deserialize;

use crate::http_params::{missing, ParamError, Params};

/// Longest user name or password read from a request (longer: refused unread).
pub const MAX_CREDENTIAL: usize = 1024;

/// A request's proof of identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// An access token (a JWT) to verify.
    Token(&'a str),
    /// A user name and a password to check against the stored hash.
    Password {
        /// User name.
        username: &'a str,
        /// Password, as sent.
        password: &'a str,
    },
    /// Nothing usable.
    None,
}

fn bounded(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty() && v.len() <= MAX_CREDENTIAL * 4).then_some(v)
}

fn password_pair<'a>(username: Option<&'a str>, password: Option<&'a str>) -> Credentials<'a> {
    match (username, password) {
        (Some(u), Some(p)) if u.len() <= MAX_CREDENTIAL && p.len() <= MAX_CREDENTIAL => {
            Credentials::Password {
                username: u,
                password: p,
            }
        }
        _ => Credentials::None,
    }
}

/// The credentials of an HTTP request: `authorization` and `access_token` are the values of
/// the `Authorization` and `accessToken` headers.
pub fn http_credentials<'a>(
    authorization: Option<&'a str>,
    access_token: Option<&'a str>,
    params: &'a Params<'a>,
) -> Credentials<'a> {
    if let Some(t) = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(bounded)
    {
        return Credentials::Token(t);
    }
    if let Some(t) = access_token
        .and_then(bounded)
        .or_else(|| params.get("accessToken").and_then(bounded))
    {
        return Credentials::Token(t);
    }
    password_pair(params.get("username"), params.get("password"))
}

/// The value of `name` among gRPC metadata headers, whatever its case.
fn header<'a>(headers: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .or_else(|| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The credentials of a gRPC request, from its Payload's `metadata.headers`.
pub fn grpc_credentials(headers: &HashMap<String, String>) -> Credentials<'_> {
    if let Some(t) = header(headers, "accessToken").and_then(bounded) {
        return Credentials::Token(t);
    }
    if let Some(t) = header(headers, "Authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(bounded)
    {
        return Credentials::Token(t);
    }
    password_pair(header(headers, "username"), header(headers, "password"))
}

/// The parameters of `POST /nacos/v1/auth/login` (and `/users/login`).
pub fn login_params<'a>(params: &'a Params<'a>) -> Result<(&'a str, &'a str), ParamError> {
    let username = params.get("username").ok_or_else(|| missing("username"))?;
    let password = params.get("password").ok_or_else(|| missing("password"))?;
    if username.len() > MAX_CREDENTIAL || password.len() > MAX_CREDENTIAL {
        return Err(crate::http_params::bad(format!(
            "username and password are at most {MAX_CREDENTIAL} bytes"
        )));
    }
    Ok((username, password))
}

/// A naming resource as Nacos names it: namespace, group, bare service name; empty = any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceRef {
    /// Namespace id (`public` or empty: the default one).
    pub namespace: String,
    /// Group; empty when the request names none (lists).
    pub group: String,
    /// Bare service name; empty when the request names none (lists).
    pub service: String,
}

/// Splits `group@@name`; a service named without a group is in `DEFAULT_GROUP`.
fn split_service(group: Option<&str>, service: Option<&str>) -> (String, String) {
    match service {
        None => (group.unwrap_or("").to_owned(), String::new()),
        Some(s) => match s.split_once("@@") {
            Some((g, n)) => (group.unwrap_or(g).to_owned(), n.to_owned()),
            None => (group.unwrap_or("DEFAULT_GROUP").to_owned(), s.to_owned()),
        },
    }
}

/// The resource of an HTTP naming request.
pub fn http_resource(params: &Params<'_>) -> ResourceRef {
    let (group, service) = split_service(params.get("groupName"), params.get("serviceName"));
    ResourceRef {
        namespace: params
            .any(&["namespaceId", "tenant"])
            .unwrap_or("")
            .to_owned(),
        group,
        service,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrpcNaming {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    group_name: Option<String>,
    #[serde(default)]
    service_name: Option<String>,
}

/// The resource of a gRPC naming request body (`namespace`, `groupName`, `serviceName`).
pub fn grpc_resource(body: &[u8]) -> Result<ResourceRef, String> {
    let r: GrpcNaming =
        serde_json::from_slice(body).map_err(|e| format!("unreadable request body: {e}"))?;
    let nonempty = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let group = nonempty(&r.group_name);
    let service = nonempty(&r.service_name);
    let (group, service) = split_service(group.as_deref(), service.as_deref());
    Ok(ResourceRef {
        namespace: r.namespace.unwrap_or_default(),
        group,
        service,
    })
}
