//! The properties of the auth fuzz targets (`fuzz/fuzz_targets/auth_*.rs`), shared with their
//! stable mirror `wire/tests/fuzz_auth.rs`, and their seeds.
//!
//! - [`auth_credentials`]: the bytes are `authorization\naccessToken\nquery\nbody` (the two
//!   header values, then what `Params` parses). Reading the credentials, the login parameters
//!   and the naming resource never panics; a token found is a trimmed part of what was sent
//!   and bounded; a password pair is bounded; the gRPC reading of the same values as metadata
//!   headers agrees with the HTTP one on which kind of proof it is; the resource reader of a
//!   gRPC body never panics.
//! - [`auth_token`]: the bytes are a token (lossy UTF-8). Verifying it never panics and never
//!   accepts it (no input can carry the property's secret's signature but by a 2^-256 chance;
//!   the seeds are signed with another);
//!   a token issued for any user name (the bytes again, up to the store's 256) verifies to that name before its
//!   `exp` and is expired at it.

use std::collections::HashMap;

use crate::auth::{self, Credentials, MAX_CREDENTIAL};
use crate::http_params::Params;

/// The secret tokens are checked with in the properties.
const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";
const NOW: u64 = 1_800_000_000;

fn split4(data: &[u8]) -> [&[u8]; 4] {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let mut out: [&[u8]; 4] = [b""; 4];
    for slot in out.iter_mut() {
        *slot = parts.next().unwrap_or(b"");
    }
    out
}

/// Property of the `auth_credentials` target (see the module documentation).
pub fn auth_credentials(data: &[u8]) {
    let [authorization, access_token, query, body] = split4(data);
    let authorization = String::from_utf8_lossy(authorization);
    let access_token = String::from_utf8_lossy(access_token);
    let query = String::from_utf8_lossy(query);
    let p = Params::parse(Some(&query), body);
    let creds = auth::http_credentials(Some(&authorization), Some(&access_token), &p);
    fn kind(c: &Credentials<'_>) -> u8 {
        match c {
            Credentials::Token(_) => 0,
            Credentials::Password { .. } => 1,
            Credentials::None => 2,
        }
    }
    match creds {
        Credentials::Token(t) => {
            assert!(
                !t.is_empty() && t.len() <= MAX_CREDENTIAL * 4,
                "token bounds"
            );
            assert!(
                authorization.contains(t)
                    || access_token.contains(t)
                    || p.get("accessToken").is_some_and(|v| v.contains(t)),
                "token {t:?} is not part of the request"
            );
        }
        Credentials::Password { username, password } => {
            assert!(username.len() <= MAX_CREDENTIAL && password.len() <= MAX_CREDENTIAL);
            assert_eq!(Some(username), p.get("username"));
            assert_eq!(Some(password), p.get("password"));
        }
        Credentials::None => {}
    }
    let _ = auth::login_params(&p);
    let _ = auth::http_resource(&p);
    // The same values as gRPC metadata headers.
    let mut headers = HashMap::new();
    headers.insert("Authorization".to_owned(), authorization.to_string());
    headers.insert("accessToken".to_owned(), access_token.to_string());
    for name in ["username", "password"] {
        if let Some(v) = p.get(name) {
            headers.insert(name.to_owned(), v.to_owned());
        }
    }
    let grpc = auth::grpc_credentials(&headers);
    if !matches!(creds, Credentials::Token(_)) {
        assert!(
            !matches!(grpc, Credentials::Token(_)) || access_token.trim().is_empty(),
            "gRPC found a token where HTTP found none"
        );
    }
    if matches!(creds, Credentials::Token(_)) && !access_token.trim().is_empty() {
        assert_eq!(kind(&grpc), kind(&creds));
    }
    let _ = auth::grpc_resource(body);
}

/// Property of the `auth_token` target (see the module documentation).
pub fn auth_token(data: &[u8]) {
    use engine::auth::token::{issue, verify, TokenError};
    let text = String::from_utf8_lossy(data);
    assert!(
        verify(SECRET, &text, NOW).is_err(),
        "an arbitrary input verified ({} bytes)",
        text.len()
    );
    // User names are at most 256 bytes (the store's bound); tokens for longer ones would
    // pass the token bound.
    if text.is_empty() || text.len() > engine::store::auth::MAX_NAME {
        return;
    }
    let t = issue(SECRET, &text, NOW, 60);
    assert_eq!(verify(SECRET, &t, NOW).as_deref(), Ok(&*text));
    assert_eq!(verify(SECRET, &t, NOW + 60), Err(TokenError::Expired));
    assert_eq!(
        verify(b"another-secret-another-secret-xx", &t, NOW),
        Err(TokenError::Invalid)
    );
}

/// Seeds: `(target, name, bytes)`.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    // Signed with another secret than the properties check with: no input may verify.
    let token =
        engine::auth::token::issue(b"seed-secret-seed-secret-seed-sec", "nacos", NOW, 18_000);
    vec![
        ("auth_credentials", "bearer", format!("Bearer {token}\n\nserviceName=a\n").into_bytes()),
        ("auth_credentials", "header", format!("\n{token}\nserviceName=a&groupName=G\n").into_bytes()),
        ("auth_credentials", "query", format!("\n\naccessToken={token}&serviceName=G%40%40a\n").into_bytes()),
        ("auth_credentials", "node-password", b"\n\nserviceName=a&username=nacos&password=pw&namespaceId=dev\nip=1.2.3.4&port=80".to_vec()),
        ("auth_credentials", "login-form", b"\n\n\nusername=nacos&password=p%40ss".to_vec()),
        ("auth_credentials", "grpc-body", b"\n\n\n{\"namespace\":\"public\",\"groupName\":\"G\",\"serviceName\":\"s\",\"module\":\"naming\"}".to_vec()),
        ("auth_token", "valid", token.clone().into_bytes()),
        ("auth_token", "none-alg", b"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJuYWNvcyIsImV4cCI6OTk5OTk5OTk5OX0.".to_vec()),
        ("auth_token", "three-dots", b"a.b.c".to_vec()),
    ]
}
