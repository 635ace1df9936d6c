//! The auth key space: users (bcrypt hashes, never passwords), role bindings, permissions and
//! the cluster-wide token secret — Nacos's `users`, `roles` and `permissions` tables, plus
//! what Nacos keeps in `nacos.core.auth.plugin.nacos.token.secret.key`.
//!
//! Why in the Raft store: every node must know the same users and verify the same tokens, and
//! a token issued by one node must be accepted by every other (one secret for the cluster).
//! The secret is proposed by whichever node first finds none ([`AuthCommand::InitSecret`]):
//! the first one applied wins, later ones change nothing, so every replica ends with the same.
//!
//! Passwords are hashed by the front end before the command is built (hashing is slow and not
//! deterministic: the salt is random); the store only keeps the hash.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::StoreResponse;
use crate::auth::permission::{self, Action};

/// Nacos's global administrator role: passes every check.
pub const ADMIN_ROLE: &str = "ROLE_ADMIN";
/// The user `POST /nacos/v1/auth/users/admin` creates (Nacos 2.4+).
pub const ADMIN_USER: &str = "nacos";

/// Most users the store keeps.
pub const MAX_USERS: usize = 10_000;
/// Most role bindings and most permissions, each.
pub const MAX_BINDINGS: usize = 100_000;
/// Longest user name, role name or action.
pub const MAX_NAME: usize = 256;
/// Longest permission resource.
pub const MAX_RESOURCE: usize = 1024;
/// Longest password hash (bcrypt's are 60 bytes).
pub const MAX_HASH: usize = 256;
/// Shortest token secret (Nacos: base64 of at least 32 bytes).
pub const MIN_SECRET: usize = 32;
/// Longest token secret.
pub const MAX_SECRET: usize = 1024;

/// The auth state every replica holds.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSpace {
    /// User name → bcrypt hash of the password.
    users: BTreeMap<String, String>,
    /// (role, user name).
    roles: BTreeSet<(String, String)>,
    /// (role, resource pattern, action).
    permissions: BTreeSet<(String, String, String)>,
    /// The HS256 key of the tokens, once a node proposed one.
    secret: Option<Vec<u8>>,
}

/// The secret never reaches a log line.
impl std::fmt::Debug for AuthSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSpace")
            .field("users", &self.users.len())
            .field("roles", &self.roles.len())
            .field("permissions", &self.permissions.len())
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A write to the auth key space.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Sets the token secret unless one is set already (then: done, unchanged).
    InitSecret {
        /// At least [`MIN_SECRET`] random bytes.
        secret: Vec<u8>,
    },
    /// Creates a user (409 if it exists).
    CreateUser {
        /// Name.
        username: String,
        /// bcrypt hash.
        password_hash: String,
    },
    /// Creates `username` with [`ADMIN_ROLE`], only while no user holds that role (409).
    CreateAdmin {
        /// Name.
        username: String,
        /// bcrypt hash.
        password_hash: String,
    },
    /// Replaces a user's password hash (404 if absent).
    SetPassword {
        /// Name.
        username: String,
        /// bcrypt hash.
        password_hash: String,
    },
    /// Deletes a user and its role bindings; refused for an administrator (400, as Nacos).
    DeleteUser {
        /// Name.
        username: String,
    },
    /// Binds `role` to an existing user; [`ADMIN_ROLE`] cannot be granted this way (400).
    AddRole {
        /// Role name.
        role: String,
        /// User name.
        username: String,
    },
    /// Unbinds `role` from `username`, or from everybody when `None`; never [`ADMIN_ROLE`].
    DeleteRole {
        /// Role name.
        role: String,
        /// User name; `None`: every user.
        username: Option<String>,
    },
    /// Grants `action` (`r`, `w`, `rw`) on `resource` to an existing role (404 otherwise).
    AddPermission {
        /// Role name.
        role: String,
        /// `namespace:group:naming/service`, `*` a wildcard.
        resource: String,
        /// `r`, `w` or `rw`.
        action: String,
    },
    /// Removes a permission (absent: done, unchanged).
    DeletePermission {
        /// Role name.
        role: String,
        /// Resource pattern.
        resource: String,
        /// Action.
        action: String,
    },
}

/// Neither hashes nor the secret reach a log line.
impl std::fmt::Debug for AuthCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthCommand::InitSecret { .. } => f.write_str("InitSecret"),
            AuthCommand::CreateUser { username, .. } => write!(f, "CreateUser({username})"),
            AuthCommand::CreateAdmin { username, .. } => write!(f, "CreateAdmin({username})"),
            AuthCommand::SetPassword { username, .. } => write!(f, "SetPassword({username})"),
            AuthCommand::DeleteUser { username } => write!(f, "DeleteUser({username})"),
            AuthCommand::AddRole { role, username } => write!(f, "AddRole({role}, {username})"),
            AuthCommand::DeleteRole { role, username } => {
                write!(f, "DeleteRole({role}, {username:?})")
            }
            AuthCommand::AddPermission {
                role,
                resource,
                action,
            } => write!(f, "AddPermission({role}, {resource}, {action})"),
            AuthCommand::DeletePermission {
                role,
                resource,
                action,
            } => write!(f, "DeletePermission({role}, {resource}, {action})"),
        }
    }
}

/// A change of the auth key space: the whole new state (it is small and rarely written), for
/// the server to publish to its cores.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthEffect {
    /// The auth state is now this.
    Changed(Arc<AuthSpace>),
}

/// Why a command's fields are refused (the front ends check the same before proposing).
pub fn check(cmd: &AuthCommand) -> Result<(), String> {
    let name = |what: &str, v: &str| -> Result<(), String> {
        if v.is_empty() || v.len() > MAX_NAME || v.chars().any(char::is_control) {
            Err(format!(
                "{what} must be 1 to {MAX_NAME} bytes without control characters"
            ))
        } else {
            Ok(())
        }
    };
    let hash = |h: &str| -> Result<(), String> {
        if h.is_empty() || h.len() > MAX_HASH {
            Err("bad password hash".into())
        } else {
            Ok(())
        }
    };
    match cmd {
        AuthCommand::InitSecret { secret } => {
            if secret.len() < MIN_SECRET || secret.len() > MAX_SECRET {
                return Err(format!(
                    "the token secret must be {MIN_SECRET} to {MAX_SECRET} bytes"
                ));
            }
            Ok(())
        }
        AuthCommand::CreateUser {
            username,
            password_hash,
        }
        | AuthCommand::CreateAdmin {
            username,
            password_hash,
        }
        | AuthCommand::SetPassword {
            username,
            password_hash,
        } => {
            name("username", username)?;
            hash(password_hash)
        }
        AuthCommand::DeleteUser { username } => name("username", username),
        AuthCommand::AddRole { role, username } => {
            name("role", role)?;
            name("username", username)
        }
        AuthCommand::DeleteRole { role, username } => {
            name("role", role)?;
            username.as_deref().map_or(Ok(()), |u| name("username", u))
        }
        AuthCommand::AddPermission {
            role,
            resource,
            action,
        }
        | AuthCommand::DeletePermission {
            role,
            resource,
            action,
        } => {
            name("role", role)?;
            if resource.is_empty()
                || resource.len() > MAX_RESOURCE
                || resource.chars().any(char::is_control)
            {
                return Err(format!("resource must be 1 to {MAX_RESOURCE} bytes"));
            }
            if !matches!(action.as_str(), "r" | "w" | "rw") {
                return Err(format!("action must be r, w or rw, got {action:?}"));
            }
            Ok(())
        }
    }
}

impl AuthSpace {
    /// Applies `cmd`; `emit` receives the new state when it changed.
    pub fn apply(&mut self, cmd: &AuthCommand, emit: &mut dyn FnMut(AuthEffect)) -> StoreResponse {
        if let Err(m) = check(cmd) {
            return StoreResponse::refused(400, m);
        }
        let response = self.apply_checked(cmd);
        if matches!(response, StoreResponse::Done { changed: true }) {
            emit(AuthEffect::Changed(Arc::new(self.clone())));
        }
        response
    }

    fn apply_checked(&mut self, cmd: &AuthCommand) -> StoreResponse {
        match cmd {
            AuthCommand::InitSecret { secret } => {
                if self.secret.is_some() {
                    return StoreResponse::done(false);
                }
                self.secret = Some(secret.clone());
                StoreResponse::done(true)
            }
            AuthCommand::CreateUser {
                username,
                password_hash,
            } => self.create_user(username, password_hash),
            AuthCommand::CreateAdmin {
                username,
                password_hash,
            } => {
                if self.has_admin() {
                    return StoreResponse::refused(409, "have admin user cannot use it");
                }
                if self.users.len() >= MAX_USERS && !self.users.contains_key(username) {
                    return StoreResponse::refused(400, format!("at most {MAX_USERS} users"));
                }
                self.users.insert(username.clone(), password_hash.clone());
                self.roles.insert((ADMIN_ROLE.into(), username.clone()));
                StoreResponse::done(true)
            }
            AuthCommand::SetPassword {
                username,
                password_hash,
            } => match self.users.get_mut(username) {
                None => StoreResponse::refused(404, format!("user {username} not exist!")),
                Some(h) if h == password_hash => StoreResponse::done(false),
                Some(h) => {
                    *h = password_hash.clone();
                    StoreResponse::done(true)
                }
            },
            AuthCommand::DeleteUser { username } => {
                if self.is_admin(username) {
                    return StoreResponse::refused(400, format!("cannot delete admin: {username}"));
                }
                if self.users.remove(username).is_none() {
                    return StoreResponse::done(false);
                }
                self.roles.retain(|(_, u)| u != username);
                StoreResponse::done(true)
            }
            AuthCommand::AddRole { role, username } => self.add_role(role, username),
            AuthCommand::DeleteRole { role, username } => {
                if role == ADMIN_ROLE {
                    return StoreResponse::refused(
                        400,
                        format!("role '{ADMIN_ROLE}' is not permitted to delete!"),
                    );
                }
                let before = self.roles.len();
                self.roles
                    .retain(|(r, u)| !(r == role && username.as_ref().is_none_or(|x| x == u)));
                if username.is_none() {
                    self.permissions.retain(|(r, _, _)| r != role);
                }
                StoreResponse::done(self.roles.len() != before)
            }
            AuthCommand::AddPermission {
                role,
                resource,
                action,
            } => {
                if !self.roles.iter().any(|(r, _)| r == role) {
                    return StoreResponse::refused(404, format!("role {role} not found!"));
                }
                if self.permissions.len() >= MAX_BINDINGS {
                    return StoreResponse::refused(
                        400,
                        format!("at most {MAX_BINDINGS} permissions"),
                    );
                }
                let key = (role.clone(), resource.clone(), action.clone());
                StoreResponse::done(self.permissions.insert(key))
            }
            AuthCommand::DeletePermission {
                role,
                resource,
                action,
            } => {
                let key = (role.clone(), resource.clone(), action.clone());
                StoreResponse::done(self.permissions.remove(&key))
            }
        }
    }

    fn create_user(&mut self, username: &str, password_hash: &str) -> StoreResponse {
        if self.users.contains_key(username) {
            return StoreResponse::refused(409, format!("user '{username}' already exist!"));
        }
        if self.users.len() >= MAX_USERS {
            return StoreResponse::refused(400, format!("at most {MAX_USERS} users"));
        }
        self.users.insert(username.into(), password_hash.into());
        StoreResponse::done(true)
    }

    fn add_role(&mut self, role: &str, username: &str) -> StoreResponse {
        if !self.users.contains_key(username) {
            return StoreResponse::refused(404, format!("user '{username}' not found!"));
        }
        if role == ADMIN_ROLE {
            return StoreResponse::refused(
                400,
                format!("role '{ADMIN_ROLE}' is not permitted to create!"),
            );
        }
        if self.roles.len() >= MAX_BINDINGS {
            return StoreResponse::refused(400, format!("at most {MAX_BINDINGS} role bindings"));
        }
        StoreResponse::done(self.roles.insert((role.into(), username.into())))
    }

    /// The token secret, once set.
    pub fn secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }

    /// The bcrypt hash of `username`'s password.
    pub fn password_hash(&self, username: &str) -> Option<&str> {
        self.users.get(username).map(String::as_str)
    }

    /// Whether `username` exists.
    pub fn has_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// User names, in order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Role bindings `(role, user)`, in order.
    pub fn roles(&self) -> impl Iterator<Item = (&str, &str)> {
        self.roles.iter().map(|(r, u)| (r.as_str(), u.as_str()))
    }

    /// Permissions `(role, resource, action)`, in order.
    pub fn permissions(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.permissions
            .iter()
            .map(|(r, res, a)| (r.as_str(), res.as_str(), a.as_str()))
    }

    /// Whether some user holds [`ADMIN_ROLE`].
    pub fn has_admin(&self) -> bool {
        self.roles.iter().any(|(r, _)| r == ADMIN_ROLE)
    }

    /// Whether `username` holds [`ADMIN_ROLE`].
    pub fn is_admin(&self, username: &str) -> bool {
        self.roles
            .contains(&(ADMIN_ROLE.to_string(), username.to_string()))
    }

    /// Nacos's `hasPermission`: an administrator passes; otherwise some role of the user has a
    /// permission whose action contains `action` and whose pattern matches `resource`.
    pub fn allows(&self, username: &str, resource: &str, action: Action) -> bool {
        if self.is_admin(username) {
            return true;
        }
        self.roles
            .iter()
            .filter(|(_, u)| u == username)
            .any(|(role, _)| {
                self.permissions
                    .range((role.clone(), String::new(), String::new())..)
                    .take_while(|(r, _, _)| r == role)
                    .any(|(_, pattern, act)| {
                        permission::action_covers(act, action)
                            && permission::matches(pattern, resource)
                    })
            })
    }

    /// Number of records, for metrics.
    pub fn len(&self) -> usize {
        self.users.len() + self.roles.len() + self.permissions.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.secret.is_none()
    }
}
