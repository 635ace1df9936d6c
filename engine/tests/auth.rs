//! The rules of authentication: tokens (expiry, forgery, another secret), the store's users,
//! roles and permissions (Nacos's refusals, wildcard permissions, the admin bypass), and the
//! login rate limit.

use nacelle_engine::auth::ratelimit::{Limits, LoginLimiter};
use nacelle_engine::auth::token::{self, TokenError};
use nacelle_engine::auth::{permission, Action};
use nacelle_engine::store::auth::{AuthCommand, AuthSpace, ADMIN_ROLE};
use nacelle_engine::store::{Store, StoreCommand, StoreEffect, StoreResponse};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_800_000_000;

#[test]
fn a_token_is_valid_until_its_exp() {
    let t = token::issue(SECRET, "alice", NOW, 18_000);
    assert_eq!(token::verify(SECRET, &t, NOW).as_deref(), Ok("alice"));
    assert_eq!(
        token::verify(SECRET, &t, NOW + 17_999).as_deref(),
        Ok("alice")
    );
    assert_eq!(
        token::verify(SECRET, &t, NOW + 18_000),
        Err(TokenError::Expired)
    );
    assert_eq!(TokenError::Expired.message(), "token expired!");
}

#[test]
fn another_secret_or_a_forged_token_is_invalid() {
    let t = token::issue(SECRET, "alice", NOW, 60);
    let other = b"another-secret-another-secret-xx";
    assert_eq!(token::verify(other, &t, NOW), Err(TokenError::Invalid));
    // Claims changed, signature kept: sub "admin" instead of "alice".
    let parts: Vec<&str> = t.split('.').collect();
    let forged_claims = {
        let t2 = token::issue(other, "admin", NOW, 60);
        t2.split('.').nth(1).unwrap_or_default().to_string()
    };
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(
        token::verify(SECRET, &forged, NOW),
        Err(TokenError::Invalid)
    );
    // alg "none" with the same claims.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    assert_eq!(token::verify(SECRET, &none, NOW), Err(TokenError::Invalid));
    for junk in ["", "abc", "a.b.c", &"x".repeat(10_000)] {
        assert_eq!(token::verify(SECRET, junk, NOW), Err(TokenError::Invalid));
    }
    assert_eq!(TokenError::Invalid.message(), "token invalid!");
}

fn apply(store: &mut Store, cmd: AuthCommand) -> StoreResponse {
    let mut effects = Vec::new();
    let r = store.apply(&StoreCommand::Auth(cmd), &mut effects);
    if matches!(r, StoreResponse::Done { changed: true }) {
        assert!(matches!(effects.as_slice(), [StoreEffect::Auth(_)]));
    } else {
        assert!(effects.is_empty());
    }
    r
}

fn refused(r: StoreResponse) -> (u16, String) {
    match r {
        StoreResponse::Refused { code, message } => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn user(name: &str) -> AuthCommand {
    AuthCommand::CreateUser {
        username: name.into(),
        password_hash: format!("hash-of-{name}"),
    }
}

fn with_users() -> Store {
    let mut s = Store::default();
    let admin = AuthCommand::CreateAdmin {
        username: "nacos".into(),
        password_hash: "h".into(),
    };
    assert_eq!(apply(&mut s, admin), StoreResponse::Done { changed: true });
    for u in ["alice", "bob"] {
        assert_eq!(
            apply(&mut s, user(u)),
            StoreResponse::Done { changed: true }
        );
    }
    s
}

#[test]
fn the_first_secret_wins() {
    let mut s = Store::default();
    let a = AuthCommand::InitSecret {
        secret: vec![1; 32],
    };
    let b = AuthCommand::InitSecret {
        secret: vec![2; 32],
    };
    assert_eq!(apply(&mut s, a), StoreResponse::Done { changed: true });
    assert_eq!(apply(&mut s, b), StoreResponse::Done { changed: false });
    assert_eq!(s.auth.secret(), Some(&[1u8; 32][..]));
    let short = AuthCommand::InitSecret {
        secret: vec![3; 31],
    };
    assert_eq!(refused(apply(&mut s, short)).0, 400);
}

#[test]
fn users_roles_and_permissions_follow_nacos_rules() {
    let mut s = with_users();
    let again = AuthCommand::CreateAdmin {
        username: "other".into(),
        password_hash: "h".into(),
    };
    assert_eq!(refused(apply(&mut s, again)).0, 409);
    assert_eq!(
        refused(apply(&mut s, user("alice"))),
        (409, "user 'alice' already exist!".into())
    );
    let grant_admin = AuthCommand::AddRole {
        role: ADMIN_ROLE.into(),
        username: "alice".into(),
    };
    assert_eq!(refused(apply(&mut s, grant_admin)).0, 400);
    let ghost = AuthCommand::AddRole {
        role: "dev".into(),
        username: "ghost".into(),
    };
    assert_eq!(
        refused(apply(&mut s, ghost)),
        (404, "user 'ghost' not found!".into())
    );
    let no_role = AuthCommand::AddPermission {
        role: "dev".into(),
        resource: "*:*:*".into(),
        action: "r".into(),
    };
    assert_eq!(refused(apply(&mut s, no_role)).0, 404);
    let del_admin = AuthCommand::DeleteUser {
        username: "nacos".into(),
    };
    assert_eq!(
        refused(apply(&mut s, del_admin)),
        (400, "cannot delete admin: nacos".into())
    );
    let bad_action = AuthCommand::AddPermission {
        role: "dev".into(),
        resource: "x".into(),
        action: "x".into(),
    };
    assert_eq!(refused(apply(&mut s, bad_action)).0, 400);
}

fn grant(s: &mut Store, role: &str, user: &str, resource: &str, action: &str) {
    let r = apply(
        s,
        AuthCommand::AddRole {
            role: role.into(),
            username: user.into(),
        },
    );
    assert!(matches!(r, StoreResponse::Done { .. }));
    let p = AuthCommand::AddPermission {
        role: role.into(),
        resource: resource.into(),
        action: action.into(),
    };
    assert_eq!(apply(s, p), StoreResponse::Done { changed: true });
}

#[test]
fn permissions_match_with_wildcards_and_actions() {
    let mut s = with_users();
    grant(&mut s, "readers", "alice", "dev:*:*", "r");
    grant(
        &mut s,
        "order-writers",
        "bob",
        ":DEFAULT_GROUP:naming/order-*",
        "rw",
    );
    let a: &AuthSpace = &s.auth;
    let dev_svc = permission::resource("dev", "G", "svc");
    let public_order = permission::resource("public", "DEFAULT_GROUP", "order-api");
    let public_pay = permission::resource("", "DEFAULT_GROUP", "pay");
    assert!(a.allows("alice", &dev_svc, Action::Read));
    assert!(!a.allows("alice", &dev_svc, Action::Write));
    assert!(!a.allows("alice", &public_order, Action::Read));
    assert!(a.allows("bob", &public_order, Action::Write));
    assert!(a.allows("bob", &public_order, Action::Read));
    assert!(!a.allows("bob", &public_pay, Action::Read));
    assert!(!a.allows("bob", &dev_svc, Action::Read));
    // The administrator passes everything; an unknown user nothing.
    assert!(a.allows("nacos", &dev_svc, Action::Write));
    assert!(!a.allows("ghost", &dev_svc, Action::Read));
    // Deleting a user drops its roles: re-created, it has no permission left.
    let mut s2 = s.clone();
    apply(
        &mut s2,
        AuthCommand::DeleteUser {
            username: "alice".into(),
        },
    );
    apply(&mut s2, user("alice"));
    assert!(!s2.auth.allows("alice", &dev_svc, Action::Read));
    // Deleting a role (for everybody) drops its permissions.
    apply(
        &mut s,
        AuthCommand::DeleteRole {
            role: "readers".into(),
            username: None,
        },
    );
    assert!(!s.auth.allows("alice", &dev_svc, Action::Read));
    assert_eq!(s.auth.permissions().count(), 1);
}

#[test]
fn a_snapshot_carries_the_auth_space() {
    let mut s = with_users();
    apply(
        &mut s,
        AuthCommand::InitSecret {
            secret: vec![7; 32],
        },
    );
    let mut fresh = Store::default();
    let mut effects = Vec::new();
    fresh.replace_with(s.clone(), &mut effects);
    assert_eq!(fresh.auth, s.auth);
    assert!(effects.iter().any(|e| matches!(e, StoreEffect::Auth(_))));
}

#[test]
fn the_rate_limit_allows_a_burst_then_a_steady_rate_per_source() {
    let limits = Limits {
        burst: 3,
        per_minute: 60,
        max_sources: 4,
    };
    let mut l = LoginLimiter::new(limits);
    let a = "127.0.0.1".parse().unwrap_or_else(|_| unreachable!());
    let b = "127.0.0.2".parse().unwrap_or_else(|_| unreachable!());
    for _ in 0..3 {
        assert!(l.try_acquire(a, 0));
    }
    assert!(!l.try_acquire(a, 0));
    assert!(!l.try_acquire(a, 500));
    // Another source is not affected.
    assert!(l.try_acquire(b, 500));
    // One attempt a second comes back.
    assert!(l.try_acquire(a, 1_000));
    assert!(!l.try_acquire(a, 1_100));
    // The table stays bounded however many sources try.
    for i in 0..1000u32 {
        let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        assert!(l.try_acquire(ip, 2_000));
        assert!(l.len() <= 4);
    }
}
