//! The pure parts of Nacos-compatible authentication: tokens, permission matching and the
//! login rate limit. The durable state (users, roles, permissions, the token secret) is the
//! [`crate::store::auth`] key space; the HTTP and gRPC glue is the server's `auth` module.
//!
//! Nothing here reads a clock or draws randomness: the time is an argument (seconds since the
//! Unix epoch), the secret comes from the store.
//!
//! # Layout
//! - [`token`]: HS256 JWTs with `sub` and `exp`, as Nacos's `JwtTokenManager` issues them;
//! - [`permission`]: Nacos's resource strings (`namespace:group:naming/service`), its `*`
//!   patterns and actions;
//! - [`ratelimit`]: a bounded per-source token bucket for password checks.

pub mod permission;
pub mod ratelimit;
pub mod token;

pub use permission::Action;
