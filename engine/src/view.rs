//! Published read views: what every core reads without locks.
//!
//! Each service has one [`ServiceCell`] whose current [`ServiceView`] is swapped by the shard that
//! owns the service and read by any core under a crossebeam-epoch guard. The directory from
//! service key to cell is split by owner shard and then into buckets; a bucket is a small
//! copy-on-write map replaced as a whole when services appear or disappear, which is rare next
//! to view changes. Only the owner shard ever writes its buckets, so writers never contend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_epoch::{self as epoch, Atomic, Owned};

mod sorted;

use crate::model::{stable_hash, warm_refcounts, Instance, ServiceKey, StableHasher};

/// Re-exported from [`crate::model`], where it lives so that Distro messages and shards can
/// name it without depending on the views.
pub use crate::model::Publish;

/// Publishers per run a view is cut into when it is built from scratch or a run is split.
pub const RUN_TARGET: usize = 64;
/// A run grown past this is split into runs of about [`RUN_TARGET`].
pub const RUN_MAX: usize = 2 * RUN_TARGET;

/// Consecutive publishes of one service (in the owner's client order), shared by successive
/// views. Why runs: a change rebuilds only its run and the array of run pointers, so
/// republishing a service of `n` publishers costs about `RUN_TARGET + n / RUN_TARGET` instead
/// of `n` (at 500 instances per service the whole-array rebuild was a fifth of a pinned
/// registration profile).
pub struct PublishRun {
    publishes: Box<[Publish]>,
    instance_count: usize,
    /// Publishes of persistent instances (a publish holds one kind: one client's).
    persistent: usize,
}

impl PublishRun {
    /// A run of `publishes` (not empty).
    pub fn new(publishes: Box<[Publish]>) -> Arc<PublishRun> {
        let instance_count = publishes.iter().map(|p| p.len()).sum();
        let persistent = publishes
            .iter()
            .filter(|p| p.first().is_some_and(|i| !i.ephemeral))
            .count();
        Arc::new(PublishRun {
            publishes,
            instance_count,
            persistent,
        })
    }
    /// The run's publishes.
    pub fn publishes(&self) -> &[Publish] {
        &self.publishes
    }
    /// Number of publishes.
    pub fn len(&self) -> usize {
        self.publishes.len()
    }
    /// Whether the run has no publish (never the case inside a view).
    pub fn is_empty(&self) -> bool {
        self.publishes.is_empty()
    }
}

impl Drop for PublishRun {
    fn drop(&mut self) {
        // The publishes are released right after this; see `warm_refcounts` for why.
        warm_refcounts(&self.publishes);
    }
}

/// Number of encoded-answer slots a view keeps (the encoder picks what each slot means).
///
/// Tied to the one encoder that uses them, `wire::service_info` (`Query::cache_slot`): an
/// unfiltered `ServiceInfo` answer per `NameStyle` (2) × `healthy_only` (2), slot
/// `style * 2 + healthy_only`. Change both together: a slot at or past this count is not
/// cached at all ([`ServiceView::cached`] then encodes on every call), and a slot nobody uses
/// costs every view its cell.
pub const CACHE_SLOTS: usize = 4;

/// Bytes of encoded answers all views together may keep; past this, answers are encoded per
/// request. Why a budget: a cached answer is ~300 bytes per instance, more than the instance.
pub struct CacheBudget {
    limit: usize,
    used: AtomicUsize,
}

impl CacheBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<CacheBudget> {
        Arc::new(CacheBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }
    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    fn try_take(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// An immutable snapshot of one service, as answered to queries and pushed to subscribers.
pub struct ServiceView {
    /// The service.
    pub key: ServiceKey,
    /// Increases with every published change of this service.
    pub revision: u64,
    /// Wall-clock time of the change (unix ms): Nacos's `lastRefTime`.
    pub last_ref_ms: u64,
    /// Protect threshold of the service (0 by default).
    pub protect_threshold: f32,
    /// Service metadata (JSON object text, `{}` when empty).
    pub metadata: crate::model::Metadata,
    /// Every publish, in runs (in no particular order).
    runs: Box<[Arc<PublishRun>]>,
    /// Total number of instances.
    pub instance_count: usize,
    /// Publishes of persistent instances: a service holds one kind (see [`ServiceView::kind`]).
    persistent_publishes: usize,
    cache: [OnceLock<Box<[u8]>>; CACHE_SLOTS],
    budget: Option<Arc<CacheBudget>>,
}

impl std::fmt::Debug for ServiceView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceView")
            .field("key", &self.key)
            .field("revision", &self.revision)
            .field("instances", &self.instance_count)
            .finish()
    }
}

impl Drop for ServiceView {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            let held: usize = self
                .cache
                .iter()
                .filter_map(|c| c.get())
                .map(|b| b.len())
                .sum();
            budget.give_back(held);
        }
    }
}

/// The result of filtering a view for a query.
pub struct Selection<'a> {
    /// Selected instances.
    pub instances: Vec<&'a Instance>,
    /// The protect threshold was reached: every instance is answered as healthy.
    pub reach_protection: bool,
}

/// The two kinds of Nacos instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    /// Kept alive by a client (Distro).
    Ephemeral,
    /// Stored through Raft, probed by the registry.
    Persistent,
}

impl InstanceKind {
    /// Nacos's 400 message when an instance of kind `self` is registered in `grouped_name`,
    /// a service of the other kind.
    pub fn refusal(self, grouped_name: &str) -> String {
        match self {
            InstanceKind::Ephemeral => format!(
                "Current service {grouped_name} is persistent service, can't register ephemeral instance."
            ),
            InstanceKind::Persistent => format!(
                "Current service {grouped_name} is ephemeral service, can't register persistent instance."
            ),
        }
    }
}

impl ServiceView {
    /// Builds a view from its publishes, cut into runs of [`RUN_TARGET`].
    pub fn new(
        key: ServiceKey,
        revision: u64,
        last_ref_ms: u64,
        protect_threshold: f32,
        metadata: crate::model::Metadata,
        publishes: Vec<Publish>,
        budget: Option<Arc<CacheBudget>>,
    ) -> ServiceView {
        let runs = publishes
            .chunks(RUN_TARGET)
            .map(|chunk| PublishRun::new(chunk.into()))
            .collect();
        ServiceView::from_runs(
            key,
            revision,
            last_ref_ms,
            protect_threshold,
            metadata,
            runs,
            budget,
        )
    }

    /// Builds a view from runs of publishes (none of them empty).
    pub fn from_runs(
        key: ServiceKey,
        revision: u64,
        last_ref_ms: u64,
        protect_threshold: f32,
        metadata: crate::model::Metadata,
        runs: Vec<Arc<PublishRun>>,
        budget: Option<Arc<CacheBudget>>,
    ) -> ServiceView {
        // No sorting: Nacos gives no order either, SDKs compare sorted copies, and sorting was
        // the largest cost of republishing a busy service.
        let instance_count = runs.iter().map(|r| r.instance_count).sum();
        let persistent_publishes = runs.iter().map(|r| r.persistent).sum();
        ServiceView {
            persistent_publishes,
            key,
            revision,
            last_ref_ms,
            protect_threshold,
            metadata,
            runs: runs.into_boxed_slice(),
            instance_count,
            cache: Default::default(),
            budget,
        }
    }

    /// Which kind of instances the service holds (`None`: none). Nacos fixes a service's
    /// kind with its first instance and refuses the other kind with a 400; Nacelle takes the
    /// kind from the instances present, so an emptied service accepts either again.
    pub fn kind(&self) -> Option<InstanceKind> {
        if self.persistent_publishes > 0 {
            Some(InstanceKind::Persistent)
        } else if self.instance_count > 0 {
            Some(InstanceKind::Ephemeral)
        } else {
            None
        }
    }

    /// An empty view of a service that does not exist (yet).
    pub fn empty(key: ServiceKey, now_unix_ms: u64) -> ServiceView {
        ServiceView::new(
            key,
            0,
            now_unix_ms,
            0.0,
            Default::default(),
            Vec::new(),
            None,
        )
    }

    /// Every instance.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.publishes().flat_map(|p| p.iter())
    }

    /// Every publish.
    pub fn publishes(&self) -> impl Iterator<Item = &Publish> {
        self.runs.iter().flat_map(|r| r.publishes.iter())
    }

    /// The runs the publishes are cut into.
    pub fn runs(&self) -> &[Arc<PublishRun>] {
        &self.runs
    }

    /// Instances of healthy state.
    pub fn healthy_count(&self) -> usize {
        self.instances().filter(|i| i.healthy).count()
    }

    /// Nacos's `selectInstancesWithHealthyProtection`: filter by cluster (empty = all), enabled
    /// and health; then, if the healthy share of the result is at or below the protect
    /// threshold, answer every selected instance as healthy.
    pub fn select(
        &self,
        clusters: &[&str],
        healthy_only: bool,
        enabled_only: bool,
    ) -> Selection<'_> {
        let instances: Vec<&Instance> = self
            .instances()
            .filter(|i| clusters.is_empty() || clusters.contains(&&*i.cluster))
            .filter(|i| !enabled_only || i.enabled)
            .filter(|i| !healthy_only || i.healthy)
            .collect();
        let total = instances.len();
        let healthy = instances.iter().filter(|i| i.healthy).count();
        let threshold = self.protect_threshold.max(0.0);
        let reach_protection = total > 0 && (healthy as f32 / total as f32) <= threshold;
        Selection {
            instances,
            reach_protection,
        }
    }

    /// The instances an instance query (`QueryServiceRequest`, `/instance/list`, a
    /// subscription) answers: `clusters` is Nacos's comma-separated cluster list (names trimmed,
    /// blank ones ignored; none at all = every cluster), only enabled instances, only healthy
    /// ones if `healthy_only`, with the health protection of [`ServiceView::select`].
    pub fn select_query(&self, clusters: &str, healthy_only: bool) -> Selection<'_> {
        let clusters: Vec<&str> = clusters
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        self.select(&clusters, healthy_only, true)
    }

    /// The encoded answer in `slot`, encoding it with `encode` the first time. Kept only while
    /// the cache budget allows; otherwise `encode` runs on every call.
    pub fn cached<R>(
        &self,
        slot: usize,
        encode: impl FnOnce(&ServiceView) -> Vec<u8>,
        use_bytes: impl FnOnce(&[u8]) -> R,
    ) -> R {
        let Some(cell) = self.cache.get(slot) else {
            return use_bytes(&encode(self));
        };
        if let Some(bytes) = cell.get() {
            return use_bytes(bytes);
        }
        let bytes = encode(self);
        match &self.budget {
            Some(budget) if budget.try_take(bytes.len()) => {
                if let Err(lost) = cell.set(bytes.into_boxed_slice()) {
                    // Another core filled it first: give our bytes' share back.
                    budget.give_back(lost.len());
                }
                match cell.get() {
                    Some(b) => use_bytes(b),
                    None => use_bytes(&[]),
                }
            }
            _ => use_bytes(&bytes),
        }
    }
}

/// One service's published slot.
pub struct ServiceCell {
    view: Atomic<Arc<ServiceView>>,
}

impl ServiceCell {
    pub(crate) fn new(view: Arc<ServiceView>) -> Arc<ServiceCell> {
        Arc::new(ServiceCell {
            view: Atomic::new(view),
        })
    }

    /// Replaces the view; only the owner shard calls this.
    pub(crate) fn publish(&self, view: Arc<ServiceView>) {
        let guard = epoch::pin();
        let old = self.view.swap(Owned::new(view), Ordering::AcqRel, &guard);
        if !old.is_null() {
            // SAFETY: `old` is unreachable for new readers; readers that loaded it hold
            // guards, and destruction waits until all of them are dropped.
            #[allow(unsafe_code)]
            unsafe {
                guard.defer_destroy(old);
            }
        }
    }

    fn load(&self) -> Option<Arc<ServiceView>> {
        let guard = epoch::pin();
        let shared = self.view.load(Ordering::Acquire, &guard);
        // SAFETY: the pointer was published by `publish` and is reclaimed only after every
        // guard pinned before its replacement is dropped; we hold one.
        #[allow(unsafe_code)]
        unsafe {
            shared.as_ref().cloned()
        }
    }

    fn with<R>(&self, f: impl FnOnce(&ServiceView) -> R) -> Option<R> {
        let guard = epoch::pin();
        let shared = self.view.load(Ordering::Acquire, &guard);
        // SAFETY: as in `load`.
        #[allow(unsafe_code)]
        let view = unsafe { shared.as_ref() };
        view.map(|v| f(v))
    }
}

impl Drop for ServiceCell {
    fn drop(&mut self) {
        // SAFETY: we have `&mut self`, so no reader can hold the pointer any more.
        #[allow(unsafe_code)]
        unsafe {
            let guard = epoch::unprotected();
            let p = self.view.load(Ordering::Relaxed, guard);
            if !p.is_null() {
                drop(p.into_owned());
            }
        }
    }
}

/// A service appearing (`Some(cell)`) in or leaving (`None`) the directory.
pub(crate) type DirectoryChange = (ServiceKey, Option<Arc<ServiceCell>>);

type Bucket = std::collections::HashMap<ServiceKey, Arc<ServiceCell>, StableHasher>;

/// Buckets per owner shard; a bucket is copied when one of its services appears or goes.
const BUCKETS_PER_SHARD: usize = 1024;

/// The directory of every service's cell, readable from every core without locks.
pub struct ReadIndex {
    shard_count: usize,
    /// Per owner shard, the largest `lastRefTime` it has published. A service that is dropped
    /// and created again, or answered while absent, starts above it, so the times a client
    /// sees for one service never go backwards (nacos-sdk-python ignores answers that do).
    stamps: Box<[std::sync::atomic::AtomicU64]>,
    buckets: Box<[Atomic<Bucket>]>,
    budget: Arc<CacheBudget>,
    sorted: sorted::SortedDirectory,
}

impl Drop for ReadIndex {
    fn drop(&mut self) {
        for b in self.buckets.iter() {
            // SAFETY: `&mut self`: no reader left.
            #[allow(unsafe_code)]
            unsafe {
                let guard = epoch::unprotected();
                let p = b.load(Ordering::Relaxed, guard);
                if !p.is_null() {
                    drop(p.into_owned());
                }
            }
        }
    }
}

impl ReadIndex {
    /// An empty index for `shard_count` owner shards, with `cache_bytes` for encoded answers.
    pub fn new(shard_count: usize, cache_bytes: usize) -> Arc<ReadIndex> {
        let shard_count = shard_count.max(1);
        let buckets = (0..shard_count * BUCKETS_PER_SHARD)
            .map(|_| Atomic::new(Bucket::default()))
            .collect();
        let stamps = (0..shard_count)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        Arc::new(ReadIndex {
            shard_count,
            stamps,
            buckets,
            budget: CacheBudget::new(cache_bytes),
            sorted: sorted::SortedDirectory::new(),
        })
    }

    /// Number of owner shards.
    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// The budget of encoded answers.
    pub fn budget(&self) -> &Arc<CacheBudget> {
        &self.budget
    }

    /// The `lastRefTime` to answer for `key` when it has no view: not before anything its
    /// owner has published.
    pub fn absent_stamp(&self, key: &ServiceKey, now_unix_ms: u64) -> u64 {
        now_unix_ms.max(self.stamps[self.owner_of(key)].load(Ordering::Relaxed))
    }

    pub(crate) fn raise_stamp(&self, shard: usize, stamp: u64) {
        self.stamps[shard].fetch_max(stamp, Ordering::Relaxed);
    }

    /// The shard that owns `key`.
    pub fn owner_of(&self, key: &ServiceKey) -> usize {
        service_shard(key, self.shard_count)
    }

    fn bucket_of(&self, key: &ServiceKey) -> usize {
        let h = stable_hash(key);
        let shard = (h % self.shard_count as u64) as usize;
        shard * BUCKETS_PER_SHARD + ((h >> 32) as usize % BUCKETS_PER_SHARD)
    }

    /// Runs `f` on the current view of `key` (None if the service does not exist).
    pub fn read<R>(&self, key: &ServiceKey, f: impl FnOnce(Option<&ServiceView>) -> R) -> R {
        let guard = epoch::pin();
        let bucket = self.buckets[self.bucket_of(key)].load(Ordering::Acquire, &guard);
        // SAFETY: buckets are replaced via `swap` + `defer_destroy`; our guard keeps this alive.
        #[allow(unsafe_code)]
        let bucket = unsafe { bucket.as_ref() };
        match bucket.and_then(|b| b.get(key)) {
            Some(cell) => {
                let mut f = Some(f);
                let r = cell.with(|v| (f.take().expect("called once"))(Some(v)));
                match r {
                    Some(r) => r,
                    None => (f.take().expect("not called"))(None),
                }
            }
            None => f(None),
        }
    }

    /// The current view of `key`, kept beyond the read.
    pub fn view(&self, key: &ServiceKey) -> Option<Arc<ServiceView>> {
        let guard = epoch::pin();
        let bucket = self.buckets[self.bucket_of(key)].load(Ordering::Acquire, &guard);
        // SAFETY: as in `read`.
        #[allow(unsafe_code)]
        let bucket = unsafe { bucket.as_ref() };
        bucket.and_then(|b| b.get(key)).and_then(|c| c.load())
    }

    /// Visits every service with its current view (order unspecified).
    pub fn for_each(&self, mut f: impl FnMut(&ServiceView)) {
        let guard = epoch::pin();
        for b in self.buckets.iter() {
            let bucket = b.load(Ordering::Acquire, &guard);
            // SAFETY: as in `read`.
            #[allow(unsafe_code)]
            let Some(bucket) = (unsafe { bucket.as_ref() }) else {
                continue;
            };
            for cell in bucket.values() {
                cell.with(&mut f);
            }
        }
    }

    /// Visits every service's key without loading its view (order unspecified): a filter on
    /// names alone costs a walk of the directory.
    pub fn for_each_key(&self, mut f: impl FnMut(&ServiceKey)) {
        let guard = epoch::pin();
        for b in self.buckets.iter() {
            let bucket = b.load(Ordering::Acquire, &guard);
            // SAFETY: as in `read`.
            #[allow(unsafe_code)]
            let Some(bucket) = (unsafe { bucket.as_ref() }) else {
                continue;
            };
            bucket.keys().for_each(&mut f);
        }
    }

    /// Reads `key` to answer an instance query: `f` gets the current view (None if the service
    /// does not exist) and the `lastRefTime` to answer when it does not
    /// ([`ReadIndex::absent_stamp`] at `now_unix_ms`, taken before the read). What the gRPC
    /// `QueryServiceRequest` / `SubscribeServiceRequest` and HTTP `/instance/list` answers are
    /// built from; the instances themselves are [`ServiceView::select_query`].
    pub fn read_instances<R>(
        &self,
        key: &ServiceKey,
        now_unix_ms: u64,
        f: impl FnOnce(Option<&ServiceView>, u64) -> R,
    ) -> R {
        let absent_ms = self.absent_stamp(key, now_unix_ms);
        self.read(key, |view| f(view, absent_ms))
    }

    /// Nacos's service list (gRPC `ServiceListRequest`, HTTP `/service/list`): the services of
    /// `namespace` (and of `group`, when given) sorted by the name answered, the total count of
    /// them and page `page_no` (1-based; 0 counts as 1) of `page_size` names — empty past the
    /// end. `grouped` names them `group@@name`, otherwise by their bare name.
    pub fn list_services(
        &self,
        namespace: &str,
        group: Option<&str>,
        page_no: usize,
        page_size: usize,
        grouped: bool,
    ) -> (usize, Vec<String>) {
        let name = |k: &ServiceKey| {
            if grouped {
                k.grouped_name()
            } else {
                k.name().to_owned()
            }
        };
        self.sorted.with(
            |visit| self.for_each_key(visit),
            |keys| {
                let (from, to) = sorted::range_of(keys, namespace, group);
                let keys = &keys[from..to];
                let count = keys.len();
                let start = (page_no.saturating_sub(1))
                    .saturating_mul(page_size)
                    .min(count);
                let end = start.saturating_add(page_size).min(count);
                match group {
                    // Within one group, (group, name) order is name order.
                    Some(_) => (count, keys[start..end].iter().map(name).collect()),
                    None => {
                        let mut names: Vec<String> = keys.iter().map(name).collect();
                        names.sort_unstable();
                        (count, names[start..end].to_vec())
                    }
                }
            },
        )
    }

    /// Runs `f` on the services of `namespace` sorted by group, then name (sorted once per
    /// change of the directory, shared by every core until the next: paging costs a binary
    /// search, not a sort).
    pub fn with_sorted_services<R>(
        &self,
        namespace: &str,
        f: impl FnOnce(&[ServiceKey]) -> R,
    ) -> R {
        self.sorted.with(
            |visit| self.for_each_key(visit),
            |keys| {
                let (from, to) = sorted::range_of(keys, namespace, None);
                f(&keys[from..to])
            },
        )
    }

    /// Applies inserts (`Some`) and removals (`None`) to the buckets; called by the owner shard
    /// only, once per flush, so a burst of new services copies each bucket once.
    pub(crate) fn update_directory(&self, changes: Vec<DirectoryChange>) {
        if changes.is_empty() {
            return;
        }
        let mut by_bucket: ahash::HashMap<usize, Vec<DirectoryChange>> = Default::default();
        for (k, c) in changes {
            by_bucket
                .entry(self.bucket_of(&k))
                .or_default()
                .push((k, c));
        }
        let guard = epoch::pin();
        for (idx, changes) in by_bucket {
            let slot = &self.buckets[idx];
            let cur = slot.load(Ordering::Acquire, &guard);
            // SAFETY: as in `read`.
            #[allow(unsafe_code)]
            let mut next: Bucket = unsafe { cur.as_ref() }.cloned().unwrap_or_default();
            for (k, c) in changes {
                match c {
                    Some(cell) => next.insert(k, cell),
                    None => next.remove(&k),
                };
            }
            let old = slot.swap(Owned::new(next), Ordering::AcqRel, &guard);
            if !old.is_null() {
                // SAFETY: readers that loaded `old` hold guards; destruction waits for them.
                #[allow(unsafe_code)]
                unsafe {
                    guard.defer_destroy(old);
                }
            }
        }
        self.sorted.changed();
    }
}

/// The shard that owns a service, out of `shard_count`.
pub fn service_shard(key: &ServiceKey, shard_count: usize) -> usize {
    (stable_hash(key) % shard_count.max(1) as u64) as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Host;

    fn key(namespace: &str, group: &str, name: &str) -> ServiceKey {
        ServiceKey::new(namespace, group, name).unwrap()
    }

    fn index_of(keys: &[ServiceKey]) -> Arc<ReadIndex> {
        let index = ReadIndex::new(2, 0);
        for k in keys {
            let cell = ServiceCell::new(Arc::new(ServiceView::empty(k.clone(), 0)));
            index.update_directory(vec![(k.clone(), Some(cell))]);
        }
        index
    }

    fn inst(ip: &str, cluster: &str, healthy: bool, enabled: bool) -> Instance {
        let mut i = Instance::new(Host::parse(ip).unwrap(), 80, cluster.into());
        i.healthy = healthy;
        i.enabled = enabled;
        i
    }

    #[test]
    fn list_services_filters_sorts_and_pages() {
        let index = index_of(&[
            key("public", "DEFAULT_GROUP", "c"),
            key("public", "DEFAULT_GROUP", "a"),
            key("public", "DEFAULT_GROUP", "b"),
            key("public", "other", "a"),
            key("dev", "DEFAULT_GROUP", "z"),
        ]);
        let grouped = |page_no, page_size| {
            index.list_services("public", Some("DEFAULT_GROUP"), page_no, page_size, true)
        };
        assert_eq!(
            grouped(1, 10),
            (
                3,
                vec![
                    "DEFAULT_GROUP@@a".to_owned(),
                    "DEFAULT_GROUP@@b".to_owned(),
                    "DEFAULT_GROUP@@c".to_owned()
                ]
            )
        );
        assert_eq!(grouped(2, 2), (3, vec!["DEFAULT_GROUP@@c".to_owned()]));
        assert_eq!(grouped(0, 1), (3, vec!["DEFAULT_GROUP@@a".to_owned()]));
        assert_eq!(grouped(3, 2), (3, Vec::<String>::new()));
        assert_eq!(
            index.list_services("public", Some("other"), 1, 10, false),
            (1, vec!["a".to_owned()])
        );
        assert_eq!(
            index.list_services("public", None, 1, 10, false),
            (
                4,
                vec![
                    "a".to_owned(),
                    "a".to_owned(),
                    "b".to_owned(),
                    "c".to_owned()
                ]
            )
        );
        assert_eq!(
            index.list_services("nowhere", None, 1, 10, true),
            (0, Vec::<String>::new())
        );
    }

    #[test]
    fn the_sorted_list_follows_services_that_appear_and_go() {
        let index = index_of(&[key("public", "g", "b"), key("public", "g", "d")]);
        let page = |index: &ReadIndex| index.list_services("public", Some("g"), 1, 10, false);
        assert_eq!(page(&index), (2, vec!["b".to_owned(), "d".to_owned()]));
        // A second read is served from the same sorted list.
        assert_eq!(page(&index), (2, vec!["b".to_owned(), "d".to_owned()]));
        let a = key("public", "g", "a");
        let cell = ServiceCell::new(Arc::new(ServiceView::empty(a.clone(), 0)));
        index.update_directory(vec![(a, Some(cell))]);
        assert_eq!(
            page(&index),
            (3, vec!["a".to_owned(), "b".to_owned(), "d".to_owned()])
        );
        index.update_directory(vec![(key("public", "g", "b"), None)]);
        assert_eq!(page(&index), (2, vec!["a".to_owned(), "d".to_owned()]));
        let names = index.with_sorted_services("public", |keys| {
            keys.iter().map(|k| k.name().to_owned()).collect::<Vec<_>>()
        });
        assert_eq!(names, ["a", "d"]);
    }

    #[test]
    fn select_query_parses_the_cluster_list_and_keeps_enabled_instances() {
        let k = key("public", "DEFAULT_GROUP", "s");
        let publishes: Vec<Publish> = vec![
            vec![
                inst("10.0.0.1", "A", true, true),
                inst("10.0.0.2", "A", false, true),
            ]
            .into(),
            vec![inst("10.0.0.3", "B", true, true)].into(),
            vec![inst("10.0.0.4", "C", true, false)].into(),
        ];
        let view = ServiceView::new(k, 1, 5, 0.0, Default::default(), publishes, None);
        let hosts = |clusters: &str, healthy_only: bool| {
            let mut h: Vec<String> = view
                .select_query(clusters, healthy_only)
                .instances
                .iter()
                .map(|i| i.host.to_string())
                .collect();
            h.sort();
            h
        };
        assert_eq!(hosts("", false), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(hosts(" , ", false), hosts("", false));
        assert_eq!(hosts(" A , ,B", true), ["10.0.0.1", "10.0.0.3"]);
        assert_eq!(hosts("A", false), ["10.0.0.1", "10.0.0.2"]);
        assert!(hosts("C", false).is_empty());
        // Same selection and protection as `select` with the parsed list, enabled only.
        let direct = view.select(&["A", "B"], false, true);
        let parsed = view.select_query("A,B", false);
        assert_eq!(direct.instances, parsed.instances);
        assert_eq!(direct.reach_protection, parsed.reach_protection);
    }

    #[test]
    fn read_instances_gives_the_view_or_the_absent_stamp() {
        let present = key("public", "DEFAULT_GROUP", "present");
        let index = index_of(std::slice::from_ref(&present));
        let absent = key("public", "DEFAULT_GROUP", "absent");
        index.raise_stamp(index.owner_of(&absent), 9_000);
        let (found, stamp) = index.read_instances(&absent, 1_000, |v, ms| (v.is_some(), ms));
        assert!(!found);
        assert_eq!(stamp, 9_000);
        let (found, stamp) =
            index.read_instances(&present, 20_000, |v, ms| (v.map(|v| v.key.clone()), ms));
        assert_eq!(found, Some(present.clone()));
        assert_eq!(stamp, index.absent_stamp(&present, 20_000));
    }
}
