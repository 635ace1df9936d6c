//! Nacos's access tokens: HS256 JWTs whose claims are `sub` (the user name) and `exp` (Unix
//! seconds), signed with the cluster's secret (`JwtTokenManager`). Issued by a login, checked
//! on every request; the SDKs log in again before `exp`.
//!
//! The signature and the claims are checked by `jsonwebtoken`; the expiry is compared here
//! with the `now` the caller gives (the crate's own check would read the system clock).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest token accepted (a Nacos token is about 150 bytes).
pub const MAX_TOKEN: usize = 4096;

/// Why a token is refused, with Nacos's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, wrongly signed, another algorithm, or without `sub`/`exp`.
    Invalid,
    /// Well signed but past its `exp`.
    Expired,
}

impl TokenError {
    /// Nacos's text.
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Invalid => "token invalid!",
            TokenError::Expired => "token expired!",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// A token for `username` valid until `now + ttl` (seconds).
pub fn issue(secret: &[u8], username: &str, now: u64, ttl: u64) -> String {
    let claims = Claims {
        sub: username.to_owned(),
        exp: now.saturating_add(ttl),
    };
    // HS256 over serde-serialisable claims cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// The user name of a valid `token` at `now` (Unix seconds).
pub fn verify(secret: &[u8], token: &str, now: u64) -> Result<String, TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(TokenError::Invalid);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["sub", "exp"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|_| TokenError::Invalid)?;
    if data.claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if data.claims.sub.is_empty() {
        return Err(TokenError::Invalid);
    }
    Ok(data.claims.sub)
}
