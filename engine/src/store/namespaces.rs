//! The namespaces key space: the namespaces created in the console
//! (`/nacos/v1/console/namespaces`), durable and the same on every node. `public` always
//! exists and is not stored. A namespace holds no services itself: services name their
//! namespace, and deleting a namespace leaves its services where they are (as Nacos's naming
//! does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreResponse;

/// Longest namespace id (Nacos: 128).
pub const MAX_ID: usize = 128;
/// Longest show name.
pub const MAX_NAME: usize = 128;
/// Longest description.
pub const MAX_DESC: usize = 256;
/// Most namespaces stored (Nacos's console pages through far fewer).
pub const MAX_NAMESPACES: usize = 10_000;

/// A created namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// `namespaceShowName`.
    pub name: String,
    /// `namespaceDesc`.
    pub desc: String,
}

/// A write to the namespaces key space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NamespaceCommand {
    /// Creates `id`; refused (409) if it exists.
    Create {
        /// Namespace id.
        id: String,
        /// Its record.
        record: NamespaceRecord,
    },
    /// Replaces the record of `id`; refused (404) if it does not exist.
    Update {
        /// Namespace id.
        id: String,
        /// Its new record.
        record: NamespaceRecord,
    },
    /// Deletes `id` (done, unchanged, if it does not exist).
    Delete {
        /// Namespace id.
        id: String,
    },
}

/// A namespace appeared or changed (`Some`) or went (`None`).
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceEffect {
    /// Namespace id.
    pub id: String,
    /// Its record, or `None` once deleted.
    pub record: Option<NamespaceRecord>,
}

/// Why an id or record is refused, if it is.
pub fn invalid(id: &str, record: Option<&NamespaceRecord>) -> Option<String> {
    if id.is_empty() || id.len() > MAX_ID {
        return Some(format!("namespaceId must be 1..={MAX_ID} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Some(format!(
            "namespaceId {id:?} may hold only letters, digits, '-' and '_'"
        ));
    }
    if id == "public" {
        return Some("namespaceId public is reserved".into());
    }
    if let Some(r) = record {
        if r.name.trim().is_empty() || r.name.chars().count() > MAX_NAME {
            return Some(format!("namespaceName must be 1..={MAX_NAME} characters"));
        }
        if r.desc.chars().count() > MAX_DESC {
            return Some(format!(
                "namespaceDesc must be at most {MAX_DESC} characters"
            ));
        }
    }
    None
}

/// The namespaces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NamespaceSpace {
    namespaces: BTreeMap<String, NamespaceRecord>,
}

impl NamespaceSpace {
    /// Every namespace, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &NamespaceRecord)> {
        self.namespaces.iter()
    }

    /// Number of namespaces.
    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    /// Whether none exists.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Applies `cmd`, reporting what changed to `effect`.
    pub fn apply(
        &mut self,
        cmd: &NamespaceCommand,
        effect: &mut dyn FnMut(NamespaceEffect),
    ) -> StoreResponse {
        match cmd {
            NamespaceCommand::Create { id, record } | NamespaceCommand::Update { id, record } => {
                if let Some(why) = invalid(id, Some(record)) {
                    return StoreResponse::refused(400, why);
                }
                let exists = self.namespaces.contains_key(id);
                let create = matches!(cmd, NamespaceCommand::Create { .. });
                if create && exists {
                    return StoreResponse::refused(409, format!("namespace {id} already exists"));
                }
                if !create && !exists {
                    return StoreResponse::refused(404, format!("namespace {id} does not exist"));
                }
                if create && self.namespaces.len() >= MAX_NAMESPACES {
                    return StoreResponse::refused(
                        400,
                        format!("at most {MAX_NAMESPACES} namespaces"),
                    );
                }
                if self.namespaces.get(id) == Some(record) {
                    return StoreResponse::done(false);
                }
                self.namespaces.insert(id.clone(), record.clone());
                effect(NamespaceEffect {
                    id: id.clone(),
                    record: Some(record.clone()),
                });
                StoreResponse::done(true)
            }
            NamespaceCommand::Delete { id } => {
                if self.namespaces.remove(id).is_none() {
                    return StoreResponse::done(false);
                }
                effect(NamespaceEffect {
                    id: id.clone(),
                    record: None,
                });
                StoreResponse::done(true)
            }
        }
    }

    /// What differs from `old`: the removed, then the new or changed namespaces.
    pub fn diff_from(&self, old: &NamespaceSpace, effect: &mut dyn FnMut(NamespaceEffect)) {
        for id in old.namespaces.keys() {
            if !self.namespaces.contains_key(id) {
                effect(NamespaceEffect {
                    id: id.clone(),
                    record: None,
                });
            }
        }
        for (id, r) in &self.namespaces {
            if old.namespaces.get(id) != Some(r) {
                effect(NamespaceEffect {
                    id: id.clone(),
                    record: Some(r.clone()),
                });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(name: &str) -> NamespaceRecord {
        NamespaceRecord {
            name: name.into(),
            desc: String::new(),
        }
    }

    fn create(id: &str, name: &str) -> NamespaceCommand {
        NamespaceCommand::Create {
            id: id.into(),
            record: rec(name),
        }
    }

    #[test]
    fn create_update_delete_with_their_refusals_and_effects() {
        let mut s = NamespaceSpace::default();
        let mut fx = Vec::new();
        let mut push = |e| fx.push(e);
        assert_eq!(
            s.apply(&create("dev", "Dev"), &mut push),
            StoreResponse::done(true)
        );
        assert!(matches!(
            s.apply(&create("dev", "Again"), &mut push),
            StoreResponse::Refused { code: 409, .. }
        ));
        assert!(matches!(
            s.apply(&create("public", "P"), &mut push),
            StoreResponse::Refused { code: 400, .. }
        ));
        assert!(matches!(
            s.apply(&create("a b", "x"), &mut push),
            StoreResponse::Refused { code: 400, .. }
        ));
        assert!(matches!(
            s.apply(&create("ok", " "), &mut push),
            StoreResponse::Refused { code: 400, .. }
        ));
        let update = NamespaceCommand::Update {
            id: "nope".into(),
            record: rec("x"),
        };
        assert!(matches!(
            s.apply(&update, &mut push),
            StoreResponse::Refused { code: 404, .. }
        ));
        let update = NamespaceCommand::Update {
            id: "dev".into(),
            record: rec("Development"),
        };
        assert_eq!(s.apply(&update, &mut push), StoreResponse::done(true));
        assert_eq!(s.apply(&update, &mut push), StoreResponse::done(false));
        let delete = NamespaceCommand::Delete { id: "dev".into() };
        assert_eq!(s.apply(&delete, &mut push), StoreResponse::done(true));
        assert_eq!(s.apply(&delete, &mut push), StoreResponse::done(false));
        assert!(s.is_empty());
        let ids: Vec<_> = fx
            .iter()
            .map(|e| (e.id.as_str(), e.record.is_some()))
            .collect();
        assert_eq!(ids, [("dev", true), ("dev", true), ("dev", false)]);
    }

    #[test]
    fn a_diff_names_what_went_and_what_came() {
        let mut old = NamespaceSpace::default();
        let mut new = NamespaceSpace::default();
        old.apply(&create("gone", "G"), &mut |_| {});
        old.apply(&create("kept", "K"), &mut |_| {});
        new.apply(&create("kept", "K"), &mut |_| {});
        new.apply(&create("came", "C"), &mut |_| {});
        let mut fx = Vec::new();
        new.diff_from(&old, &mut |e| fx.push(e));
        let ids: Vec<_> = fx
            .iter()
            .map(|e| (e.id.as_str(), e.record.is_some()))
            .collect();
        assert_eq!(ids, [("gone", false), ("came", true)]);
    }
}
