//! The replicated state machine of Nacelle's CP half: what Raft stores and every node applies
//! in log order. Pure and deterministic — no IO, no clock, no randomness — so that every
//! replica that applies the same commands holds the same [`Store`], and tests can assert the
//! exact [`StoreEffect`]s of a command.
//!
//! The store is organised in *key spaces*, one per kind of durable data, so that the log format
//! is not naming-only: [`naming`] (persistent instances, service and cluster definitions),
//! [`auth`] (users, roles, permissions, the token secret); configuration items later, each a
//! variant of [`StoreCommand`] and a field of [`Store`]. A Raft entry carries a batch of commands (one entry per batch of
//! client writes); the Raft glue (`nacelle-raft`) owns the entry and snapshot byte formats.
//!
//! # Layout
//! - this file: [`StoreCommand`], [`StoreResponse`], [`StoreEffect`] and [`Store`] (dispatch,
//!   snapshot replacement as a diff);
//! - [`naming`]: the naming key space — its records, commands, effects and rules;
//! - [`namespaces`]: the console's namespaces.
//! - [`auth`]: the auth key space — users, role bindings, permissions, the token secret.
//!
//! # Why effects
//! The registry's query path (lock-free views, answer caches, pushes) lives in the shards. The
//! store does not replace it: each applied command yields effects ("instance X upserted in
//! service S", "service S defined"), and the server feeds them to the shards as ordinary
//! operations, so persistent instances are served exactly like ephemeral ones.

pub mod auth;
pub mod namespaces;
pub mod naming;

use serde::{Deserialize, Serialize};

pub use auth::{AuthCommand, AuthEffect, AuthSpace};
pub use namespaces::{NamespaceCommand, NamespaceEffect, NamespaceSpace};
pub use naming::{NamingCommand, NamingEffect, NamingSpace};

/// One replicated write. Commands are built by the front ends from validated input; applying
/// one never panics whatever it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StoreCommand {
    /// A write to the naming key space.
    Naming(NamingCommand),
    /// A write to the namespaces key space (the console's namespaces).
    Namespace(NamespaceCommand),
    /// A write to the auth key space.
    Auth(AuthCommand),
}

/// The outcome of one command, the same on every replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StoreResponse {
    /// Applied; `changed` is false when the state already was so.
    Done {
        /// Whether the command changed the store.
        changed: bool,
    },
    /// Refused by a rule of the store; nothing changed. `code` is HTTP-like: 400 invalid,
    /// 404 not found, 409 conflict.
    Refused {
        /// 400, 404 or 409.
        code: u16,
        /// Nacos's message text where Nacos has one.
        message: String,
    },
}

impl StoreResponse {
    pub(crate) fn done(changed: bool) -> StoreResponse {
        StoreResponse::Done { changed }
    }

    pub(crate) fn refused(code: u16, message: impl Into<String>) -> StoreResponse {
        StoreResponse::Refused {
            code,
            message: message.into(),
        }
    }
}

/// A change of the store, for the server to carry into the registry's views.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEffect {
    /// A change in the naming key space.
    Naming(NamingEffect),
    /// A namespace created, changed or deleted.
    Namespace(NamespaceEffect),
    /// A change in the auth key space.
    Auth(AuthEffect),
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    /// The naming key space.
    pub naming: NamingSpace,
    /// The namespaces key space.
    pub namespaces: NamespaceSpace,
    /// The auth key space.
    pub auth: AuthSpace,
}

impl Store {
    /// Applies `cmd`, appending what changed to `effects`.
    pub fn apply(&mut self, cmd: &StoreCommand, effects: &mut Vec<StoreEffect>) -> StoreResponse {
        match cmd {
            StoreCommand::Naming(cmd) => self.naming.apply(cmd, &mut |e| {
                effects.push(StoreEffect::Naming(e));
            }),
            StoreCommand::Namespace(cmd) => self.namespaces.apply(cmd, &mut |e| {
                effects.push(StoreEffect::Namespace(e));
            }),
            StoreCommand::Auth(cmd) => self.auth.apply(cmd, &mut |e| {
                effects.push(StoreEffect::Auth(e));
            }),
        }
    }

    /// Replaces the whole state (a snapshot was installed, or loaded at startup), appending
    /// the difference to `effects`: what the views must drop, then what they must show.
    pub fn replace_with(&mut self, new: Store, effects: &mut Vec<StoreEffect>) {
        let old = std::mem::replace(self, new);
        self.naming.recount();
        self.naming.diff_from(&old.naming, &mut |e| {
            effects.push(StoreEffect::Naming(e));
        });
        self.namespaces.diff_from(&old.namespaces, &mut |e| {
            effects.push(StoreEffect::Namespace(e));
        });
        if self.auth != old.auth {
            effects.push(StoreEffect::Auth(AuthEffect::Changed(std::sync::Arc::new(
                self.auth.clone(),
            ))));
        }
    }

    /// Number of records (instances, definitions, namespaces), for metrics.
    pub fn len(&self) -> usize {
        self.naming.len() + self.namespaces.len() + self.auth.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
