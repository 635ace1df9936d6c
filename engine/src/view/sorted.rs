//! The directory in name order, for paging (`ServiceListRequest`, `/service/list`, the
//! console's catalog).
//!
//! Sorting every service name on every page made paging through 500,000 services cost a sort of
//! all of them per page. The order changes only when a service appears or goes, so the first
//! reader after such a change sorts the keys once and publishes them (crossbeam-epoch, like the
//! buckets); every core's later pages binary-search that list until the next change. The list
//! is one `Arc` pointer per service: bounded by the directory itself.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_epoch::{self as epoch, Atomic, Owned};

use crate::model::ServiceKey;

/// Every key of the directory, sorted by (namespace, group, name), as of `generation`.
struct SortedKeys {
    generation: u64,
    keys: Vec<ServiceKey>,
}

/// The sorted keys and the directory's generation they must match.
pub(super) struct SortedDirectory {
    /// Bumped after every batch of directory changes is visible in the buckets.
    generation: AtomicU64,
    current: Atomic<SortedKeys>,
}

impl SortedDirectory {
    pub(super) fn new() -> SortedDirectory {
        SortedDirectory {
            generation: AtomicU64::new(0),
            current: Atomic::null(),
        }
    }

    /// Called after services appeared or went (the buckets already show it).
    pub(super) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Runs `f` on the keys sorted by (namespace, group, name), sorting them first (with
    /// `walk`, which visits every key) if the directory changed since the last sort.
    pub(super) fn with<R>(
        &self,
        walk: impl FnOnce(&mut dyn FnMut(&ServiceKey)),
        f: impl FnOnce(&[ServiceKey]) -> R,
    ) -> R {
        let guard = epoch::pin();
        // Read before the walk: a change that lands during it leaves this list one generation
        // behind, so the next reader sorts again — never a stale list under a current stamp.
        let generation = self.generation.load(Ordering::Acquire);
        let cur = self.current.load(Ordering::Acquire, &guard);
        // SAFETY: lists are replaced via `swap` + `defer_destroy`; our guard keeps this alive.
        #[allow(unsafe_code)]
        if let Some(sorted) = unsafe { cur.as_ref() } {
            if sorted.generation == generation {
                return f(&sorted.keys);
            }
        }
        let mut keys = Vec::new();
        walk(&mut |k| keys.push(k.clone()));
        keys.sort_unstable();
        let fresh = Owned::new(SortedKeys { generation, keys }).into_shared(&guard);
        let old = self.current.swap(fresh, Ordering::AcqRel, &guard);
        if !old.is_null() {
            // SAFETY: unreachable for new readers; those that loaded it hold guards.
            #[allow(unsafe_code)]
            unsafe {
                guard.defer_destroy(old);
            }
        }
        // SAFETY: `fresh` is destroyed only by a later swap's `defer_destroy`, which waits
        // for our guard.
        #[allow(unsafe_code)]
        let sorted = unsafe { fresh.deref() };
        f(&sorted.keys)
    }
}

impl Drop for SortedDirectory {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader left.
        #[allow(unsafe_code)]
        unsafe {
            let p = self.current.load(Ordering::Relaxed, epoch::unprotected());
            if !p.is_null() {
                drop(p.into_owned());
            }
        }
    }
}

/// The range of `keys` (sorted by namespace, group, name) in `namespace`, and in `group` when
/// given.
pub(super) fn range_of(
    keys: &[ServiceKey],
    namespace: &str,
    group: Option<&str>,
) -> (usize, usize) {
    let before = |k: &ServiceKey| match group {
        Some(g) => (k.namespace(), k.group()) < (namespace, g),
        None => k.namespace() < namespace,
    };
    let within = |k: &ServiceKey| match group {
        Some(g) => (k.namespace(), k.group()) <= (namespace, g),
        None => k.namespace() <= namespace,
    };
    (keys.partition_point(before), keys.partition_point(within))
}
