//! The web console on every node's HTTP port: the single-page app at `/nacos/` (assets from
//! the `nacelle-console` crate), and the console's own APIs under Nacos's names:
//! `GET /nacos/v1/console/server/state`, `GET /nacos/v1/console/namespaces`, and Nacelle's
//! `GET /nacos/v1/console/metrics/history` (the live charts' ring, see `metrics_ring`).

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use wire::http_params::Params;

use super::{json as json_resp, text, Resp};
use crate::core::with_core;

/// Whether requests must prove who they are (`--auth`): the console then shows its login
/// page first.
pub fn auth_enabled() -> bool {
    crate::auth::enabled()
}

/// Whether `path` is the console's page or one of its assets (not an API).
pub fn is_console_path(path: &str) -> bool {
    path == "/nacos"
        || (path.starts_with("/nacos/")
            && !path.starts_with("/nacos/v1/")
            && !path.starts_with("/nacos/v2/")
            && !path.starts_with("/nacos/v3/"))
}

/// Serves the console's page and assets: `/nacos` redirects to `/nacos/`; `GET`/`HEAD` only;
/// gzip when the client accepts it; `index.html` `no-cache`, hashed assets `immutable`.
pub fn asset(method: &Method, path: &str, headers: &HeaderMap) -> Resp {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the console's files are read-only",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/nacos" {
        let mut r = text(StatusCode::FOUND, "");
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/nacos/"));
        return r;
    }
    let rest = path.strip_prefix("/nacos/").unwrap_or("");
    let Some(a) = console::lookup(rest) else {
        return text(StatusCode::NOT_FOUND, format!("no console file {path}"));
    };
    let gzip_ok = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|q| q.trim().replace(' ', "") == "q=0");
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        });
    let (body, gzipped) = match (&a.gzip, gzip_ok) {
        (Some(g), true) => (g.as_slice(), true),
        _ => (a.body.as_slice(), false),
    };
    let len = body.len();
    let body = if method == Method::HEAD {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::from_static(body)
    };
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&a.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(a.cache_control),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if method == Method::HEAD {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// `GET /nacos/v1/console/server/state`: Nacos's flat map of strings
/// (`AuthModuleStateBuilder` and `ServerStateController`).
pub fn server_state() -> Resp {
    let clustered = with_core(|c| c.shared.cluster.is_some());
    let mode = if clustered { "cluster" } else { "standalone" };
    let auth = if auth_enabled() { "true" } else { "false" };
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "server": "nacelle",
        "standalone_mode": mode,
        "startup_mode": mode,
        "function_mode": "naming",
        "console_ui_enabled": "true",
        "login_page_enabled": auth,
        "auth_enabled": auth,
        "auth_system_type": "nacos",
        "auth_admin_request": "false",
    });
    json_resp(StatusCode::OK, body.to_string())
}

/// `GET /nacos/v1/console/metrics/history[?last=N]`: the last `N` (default and at most
/// 600) one-second samples of this node's metrics.
pub fn metrics_history(p: &Params<'_>) -> Resp {
    let last = match p.number::<usize>("last") {
        Ok(n) => n.unwrap_or(crate::metrics_ring::SAMPLES),
        Err(e) => return text(StatusCode::BAD_REQUEST, e.message),
    };
    json_resp(
        StatusCode::OK,
        crate::metrics_ring::history_json(last.min(crate::metrics_ring::SAMPLES)),
    )
}
