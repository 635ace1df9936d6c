//! Nacos's permission model for naming (`NacosRoleServiceImpl.hasPermission`, `joinResource`):
//! a request needs action `r` or `w` on the resource `namespace:group:naming/service`, where
//! the `public` namespace is written as an empty string, a missing group as `*` and a missing
//! service as `*`. A permission is a pattern over that string in which `*` stands for any
//! text, and an action (`r`, `w`, `rw`) that covers the request's action if it contains it.
//!
//! Nacos turns the pattern into a Java regex by replacing `*` with `.*`, so its other regex
//! characters (a `.` above all) keep their regex meaning there; here every character but `*`
//! is literal. Patterns as the console writes them (`ns:*:*`, `:DEFAULT_GROUP:naming/svc*`)
//! match the same; a pattern relying on regex syntax does not.

/// What a request does to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reads (queries, subscriptions, lists).
    Read,
    /// Writes (registrations, updates, deletions).
    Write,
}

impl Action {
    /// Nacos's letter.
    pub fn letter(self) -> &'static str {
        match self {
            Action::Read => "r",
            Action::Write => "w",
        }
    }
}

/// Whether a permission's action (`r`, `w`, `rw`) covers `action` (Nacos: `contains`).
pub fn action_covers(granted: &str, action: Action) -> bool {
    granted.contains(action.letter())
}

/// Nacos's `joinResource` for a naming resource. `group` and `service` empty mean "any".
pub fn resource(namespace: &str, group: &str, service: &str) -> String {
    let namespace = if namespace == "public" { "" } else { namespace };
    let group = if group.is_empty() { "*" } else { group };
    let service = if service.is_empty() { "*" } else { service };
    let mut out = String::with_capacity(namespace.len() + group.len() + service.len() + 9);
    out.push_str(namespace);
    out.push(':');
    out.push_str(group);
    out.push_str(":naming/");
    out.push_str(service);
    out
}

/// Whether `pattern` (where `*` matches any run of characters, every other character only
/// itself) matches the whole of `text`. Greedy with backtracking to the last `*`: at most
/// `pattern.len() * text.len()` steps, and both are bounded by the store's limits.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_follow_nacos_join_resource() {
        assert_eq!(
            resource("public", "DEFAULT_GROUP", "svc"),
            ":DEFAULT_GROUP:naming/svc"
        );
        assert_eq!(resource("", "G", "s"), ":G:naming/s");
        assert_eq!(resource("dev", "", ""), "dev:*:naming/*");
    }

    #[test]
    fn wildcards_match_like_nacos_dot_star() {
        assert!(matches("dev:*:*", "dev:G:naming/s"));
        assert!(matches(":*:*", ":DEFAULT_GROUP:naming/a"));
        assert!(!matches("dev:*:*", "prod:G:naming/s"));
        assert!(matches(":G:naming/order-*", ":G:naming/order-api"));
        assert!(!matches(":G:naming/order-*", ":G:naming/payment"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(!matches(":G:naming/s", ":G:naming/s2"));
        // Every other character is literal (Nacos would read `.` as any character).
        assert!(!matches("a.c", "abc"));
    }

    #[test]
    fn actions_cover_by_containment() {
        assert!(action_covers("rw", Action::Read));
        assert!(action_covers("rw", Action::Write));
        assert!(action_covers("r", Action::Read));
        assert!(!action_covers("r", Action::Write));
        assert!(!action_covers("w", Action::Read));
    }
}
