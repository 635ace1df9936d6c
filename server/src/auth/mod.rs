//! Nacos-compatible authentication on this node: the request checks of every client API
//! (HTTP and gRPC), the `/nacos/v1/auth/*` endpoints, and the bootstrap of the cluster's token
//! secret and first administrator.
//!
//! The rules are the engine's (`engine::auth`: tokens, permission patterns, the login rate
//! limit) and the durable state is the Raft store's `auth` key space: every node applies the
//! same users, roles, permissions and secret, so a token issued by one node is valid on all.
//! The Raft thread publishes each new state here ([`publish`]); a core reads it through a
//! per-core copy refreshed when the published version moves (one atomic load per request).
//!
//! # Layout
//! - this file: settings, the published auth state, the clock;
//! - `gate`: who sends a request (token or password) and whether it may do what it asks;
//! - `hash`: bcrypt off the cores (a small thread pool) and the per-core cache of password
//!   checks that passed, for clients that send a password on every call;
//! - `api`: `/nacos/v1/auth/login`, `users`, `roles`, `permissions`, `users/admin`;
//! - `bootstrap`: the secret and `--admin-password` written to the store at start.

pub mod api;
pub mod bootstrap;
pub mod gate;
pub mod hash;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use engine::store::AuthSpace;

/// The settings every core reads (from `--auth*`).
pub struct Settings {
    /// `--auth`.
    pub enabled: bool,
    /// Token lifetime (s).
    pub ttl: u64,
    /// `--auth-token-secret`, decoded: takes the place of the store's secret.
    pub secret: Option<Vec<u8>>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the settings once, at start (before any request).
pub fn init(cfg: &crate::config::Config) {
    let _ = SETTINGS.set(Settings {
        enabled: cfg.auth.auth,
        ttl: cfg.auth.auth_token_ttl,
        secret: cfg.auth.secret.clone(),
    });
}

/// The settings (auth off until [`init`]).
pub fn settings() -> &'static Settings {
    static OFF: Settings = Settings {
        enabled: false,
        ttl: 18_000,
        secret: None,
    };
    SETTINGS.get().unwrap_or(&OFF)
}

/// Whether requests are checked.
pub fn enabled() -> bool {
    settings().enabled
}

/// The last auth state the store applied, and its version.
struct Published {
    version: AtomicU64,
    space: Mutex<Arc<AuthSpace>>,
}

fn published() -> &'static Published {
    static P: OnceLock<Published> = OnceLock::new();
    P.get_or_init(|| Published {
        version: AtomicU64::new(0),
        space: Mutex::new(Arc::new(AuthSpace::default())),
    })
}

/// Publishes a new auth state (on the Raft thread, in log order).
pub fn publish(space: Arc<AuthSpace>) {
    let p = published();
    let mut slot = p.space.lock().unwrap_or_else(|e| e.into_inner());
    *slot = space;
    p.version.fetch_add(1, Ordering::Release);
}

thread_local! {
    static LOCAL: RefCell<(u64, Arc<AuthSpace>)> = RefCell::new((0, Arc::new(AuthSpace::default())));
}

/// This core's copy of the auth state.
pub fn current() -> Arc<AuthSpace> {
    let p = published();
    let v = p.version.load(Ordering::Acquire);
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        if l.0 != v {
            let space = p.space.lock().unwrap_or_else(|e| e.into_inner()).clone();
            *l = (v, space);
        }
        l.1.clone()
    })
}

/// The key tokens are signed with: `--auth-token-secret`, else the store's.
pub fn secret(space: &AuthSpace) -> Option<Vec<u8>> {
    settings()
        .secret
        .clone()
        .or_else(|| space.secret().map(<[u8]>::to_vec))
}

/// Unix time in seconds (tokens' `exp`).
pub fn now_s() -> u64 {
    crate::core::unix_ms() / 1000
}
