//! The service side of a shard: the services whose key hashes here, their publishers and
//! subscribers. Client owners send [`ServiceOp`]s; changes wait in `pending` until
//! [`Shard::flush`] merges them into the service's runs, publishes a new view to the
//! [`ReadIndex`](crate::view::ReadIndex) and arms the push timer, so a burst of writes costs
//! one rebuild and one push.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Command, Now, OpError, OpOutcome, OpResult, ServiceOp, Shard, Timer};
use crate::model::{warm_refcounts, ClientId, Metadata, Publish, ServiceKey, StableHasher, Str};
use crate::view::{PublishRun, ServiceCell, ServiceView, RUN_MAX, RUN_TARGET};

pub(super) struct ServiceState {
    cell: Arc<ServiceCell>,
    /// Clients publishing here, sorted and cut like the view's runs: `client_runs[r][i]`
    /// publishes `view.runs()[r].publishes()[i]`. Sorted arrays instead of a map: no per-entry
    /// hashing slack, and the view needs the publishes as arrays anyway.
    client_runs: Vec<Box<[ClientId]>>,
    /// Publishes changed since the last flush (`None` = withdrawn), merged in at flush.
    pending: BTreeMap<ClientId, Option<Publish>>,
    subscribers: HashMap<u64, Str, StableHasher>,
    protect_threshold: f32,
    metadata: Metadata,
    /// Created through `/service`: survives having no instances.
    explicit: bool,
    revision: u64,
    in_dirty_list: bool,
    push_timer_set: bool,
    pushed_revision: u64,
    view: Arc<ServiceView>,
    instance_count: usize,
}

impl ServiceState {
    /// Its subscribers: (subscriber id, cluster filter).
    pub(super) fn subscriber_list(&self) -> impl Iterator<Item = (u64, Str)> + '_ {
        self.subscribers.iter().map(|(id, c)| (*id, c.clone()))
    }
}

impl ServiceState {
    /// The client's publish, including changes not yet flushed.
    fn current(&self, client: &ClientId) -> Option<&Publish> {
        if let Some(p) = self.pending.get(client) {
            return p.as_ref();
        }
        let (r, i) = self.position(client)?;
        self.view.runs().get(r)?.publishes().get(i)
    }

    /// Run and index of a published client (pending changes aside).
    fn position(&self, client: &ClientId) -> Option<(usize, usize)> {
        let after = self
            .client_runs
            .partition_point(|run| run.first().is_some_and(|first| first <= client));
        let r = after.checked_sub(1)?;
        let i = self.client_runs[r].binary_search(client).ok()?;
        Some((r, i))
    }

    /// Whether anyone publishes here, including changes not yet flushed.
    fn has_publishers(&self) -> bool {
        self.pending.values().any(Option::is_some)
            || self
                .client_runs
                .iter()
                .flat_map(|run| run.iter())
                .any(|c| !self.pending.contains_key(c))
    }

    /// Merges the pending changes into the runs; returns the view's new runs. Only the runs
    /// that changes fall into are rebuilt, the others are shared with the current view.
    fn merge_pending(&mut self) -> Vec<Arc<PublishRun>> {
        let pending = std::mem::take(&mut self.pending);
        let mut old_clients = std::mem::take(&mut self.client_runs);
        let old_runs = self.view.runs();
        let mut merged = RunMerger::with_capacity(old_runs.len() + 1);
        let mut changes = pending.into_iter().peekable();
        for r in 0..old_clients.len() {
            let clients = std::mem::take(&mut old_clients[r]);
            let Some(run) = old_runs.get(r) else {
                continue;
            };
            // A run takes the changes below the next run's first client; the last takes all.
            let touched = match (changes.peek(), old_clients.get(r + 1)) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some((changed, _)), Some(next)) => next.first().is_none_or(|n| changed < n),
            };
            if !touched {
                merged.keep(clients, run.clone());
                continue;
            }
            let upper = old_clients.get(r + 1).and_then(|next| next.first());
            let mut new_clients = Vec::with_capacity(clients.len() + 1);
            let mut new_publishes = Vec::with_capacity(clients.len() + 1);
            warm_refcounts(run.publishes());
            let mut put = |c: ClientId, p: Option<Publish>| {
                if let Some(p) = p {
                    new_clients.push(c);
                    new_publishes.push(p);
                }
            };
            for (c, p) in clients.into_vec().into_iter().zip(run.publishes()) {
                while let Some((changed, publish)) = changes.next_if(|(changed, _)| *changed < c) {
                    put(changed, publish);
                }
                match changes.next_if(|(changed, _)| *changed == c) {
                    Some((changed, publish)) => put(changed, publish),
                    None => put(c, Some(p.clone())),
                }
            }
            while let Some((changed, publish)) =
                changes.next_if(|(changed, _)| upper.is_none_or(|u| changed < u))
            {
                put(changed, publish);
            }
            merged.rebuilt(new_clients, new_publishes);
        }
        // No runs yet: everything pending starts the first ones.
        let (new_clients, new_publishes): (Vec<ClientId>, Vec<Publish>) =
            changes.filter_map(|(c, p)| Some((c, p?))).unzip();
        merged.rebuilt(new_clients, new_publishes);
        let (client_runs, runs) = merged.finish();
        self.client_runs = client_runs;
        runs
    }
}

/// Collects the runs of a merge: keeps untouched runs as they are, splits rebuilt runs that
/// grew past [`RUN_MAX`], and joins a rebuilt run that shrank below a quarter of
/// [`RUN_TARGET`] to the run before it, so deregistrations cannot leave a trail of tiny runs.
struct RunMerger {
    clients: Vec<Box<[ClientId]>>,
    runs: Vec<Arc<PublishRun>>,
}

impl RunMerger {
    fn with_capacity(n: usize) -> RunMerger {
        RunMerger {
            clients: Vec::with_capacity(n),
            runs: Vec::with_capacity(n),
        }
    }

    fn keep(&mut self, clients: Box<[ClientId]>, run: Arc<PublishRun>) {
        self.clients.push(clients);
        self.runs.push(run);
    }

    fn rebuilt(&mut self, mut clients: Vec<ClientId>, mut publishes: Vec<Publish>) {
        if clients.is_empty() {
            return;
        }
        if clients.len() < RUN_TARGET / 4 {
            let joins = self
                .clients
                .last()
                .is_some_and(|prev| prev.len() + clients.len() <= RUN_MAX);
            if joins {
                if let (Some(prev_clients), Some(prev_run)) = (self.clients.pop(), self.runs.pop())
                {
                    let mut c = prev_clients.into_vec();
                    c.append(&mut clients);
                    let mut p = prev_run.publishes().to_vec();
                    p.append(&mut publishes);
                    clients = c;
                    publishes = p;
                }
            }
        }
        let pieces = if clients.len() > RUN_MAX {
            clients.len() / RUN_TARGET
        } else {
            1
        };
        let base = clients.len() / pieces;
        let extra = clients.len() % pieces;
        let mut clients = clients.into_iter();
        let mut publishes = publishes.into_iter();
        for piece in 0..pieces {
            let size = base + usize::from(piece < extra);
            self.clients.push(clients.by_ref().take(size).collect());
            self.runs
                .push(PublishRun::new(publishes.by_ref().take(size).collect()));
        }
    }

    fn finish(self) -> (Vec<Box<[ClientId]>>, Vec<Arc<PublishRun>>) {
        (self.clients, self.runs)
    }
}

impl Shard {
    /// Rebuilds and publishes the views changed since the last flush, arms push timers and
    /// updates the directory. Cheap when nothing changed.
    pub fn flush(&mut self, now: Now) {
        self.now = now;
        let dirty = std::mem::take(&mut self.dirty);
        for key in dirty {
            let Some(state) = self.services.get_mut(&key) else {
                continue;
            };
            state.in_dirty_list = false;
            let runs = state.merge_pending();
            let gone =
                state.client_runs.is_empty() && state.subscribers.is_empty() && !state.explicit;
            if gone {
                if let Some(state) = self.services.remove(&key) {
                    self.stats
                        .instances
                        .fetch_sub(state.instance_count as i64, Ordering::Relaxed);
                    self.stats.services.fetch_sub(1, Ordering::Relaxed);
                }
                self.directory_changes.push((key, None));
                continue;
            }
            state.revision += 1;
            // SDKs drop an answer whose lastRefTime is not newer than the one they hold
            // (nacos-sdk-python), so two changes within one millisecond still get two times.
            let last_ref_ms = now.unix_ms.max(state.view.last_ref_ms + 1);
            self.index.raise_stamp(self.id, last_ref_ms);
            let view = Arc::new(ServiceView::from_runs(
                key.clone(),
                state.revision,
                last_ref_ms,
                state.protect_threshold,
                state.metadata.clone(),
                runs,
                Some(self.index.budget().clone()),
            ));
            let delta = view.instance_count as i64 - state.instance_count as i64;
            state.instance_count = view.instance_count;
            self.stats.instances.fetch_add(delta, Ordering::Relaxed);
            state.cell.publish(view.clone());
            state.view = view;
            if !state.subscribers.is_empty() && !state.push_timer_set {
                state.push_timer_set = true;
                let at = now.mono_ms + self.cfg.push_delay_ms;
                self.timers.push(Reverse((at, Timer::Push(key))));
            }
        }
        let changes = std::mem::take(&mut self.directory_changes);
        self.index.update_directory(changes);
        for (to, result) in self.deferred_replies.drain(..) {
            self.out.push_back(Command::Reply { to, result });
        }
    }

    pub(super) fn service_state(&mut self, service: ServiceKey) -> &mut ServiceState {
        let service = self.interner.service(service);
        if !self.services.contains_key(&service) {
            let stamp = self.index.absent_stamp(&service, self.now.unix_ms);
            let view = Arc::new(ServiceView::empty(service.clone(), stamp));
            let cell = ServiceCell::new(view.clone());
            self.directory_changes
                .push((service.clone(), Some(cell.clone())));
            self.stats.services.fetch_add(1, Ordering::Relaxed);
            self.services.insert(
                service.clone(),
                ServiceState {
                    cell,
                    client_runs: Vec::new(),
                    pending: BTreeMap::new(),
                    subscribers: HashMap::default(),
                    protect_threshold: 0.0,
                    metadata: Metadata::default(),
                    explicit: false,
                    revision: 0,
                    in_dirty_list: false,
                    push_timer_set: false,
                    pushed_revision: 0,
                    view,
                    instance_count: 0,
                },
            );
        }
        match self.services.get_mut(&service) {
            Some(s) => s,
            None => unreachable!("inserted above"),
        }
    }

    pub(super) fn mark_dirty(&mut self, service: &ServiceKey) {
        if let Some(state) = self.services.get_mut(service) {
            if !state.in_dirty_list {
                state.in_dirty_list = true;
                self.dirty.push(service.clone());
            }
        }
    }

    pub(super) fn apply_service_op(&mut self, service: ServiceKey, op: ServiceOp) -> OpResult {
        let exists = self.services.contains_key(&service);
        let outcome = match op {
            ServiceOp::Upsert { client, publish } => {
                let state = self.service_state(service.clone());
                if state.current(&client) == Some(&publish) {
                    return Ok(OpOutcome::Unchanged);
                }
                state.pending.insert(client, Some(publish));
                OpOutcome::Changed
            }
            ServiceOp::Remove { client } => {
                let Some(state) = self.services.get_mut(&service) else {
                    return Ok(OpOutcome::Unchanged);
                };
                if state.current(&client).is_none() {
                    return Ok(OpOutcome::Unchanged);
                }
                state.pending.insert(client, None);
                OpOutcome::Changed
            }
            ServiceOp::Subscribe {
                subscriber,
                clusters,
            } => {
                let state = self.service_state(service);
                if state.subscribers.insert(subscriber, clusters).is_none() {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                // The view did not change: nothing to rebuild or push. A new service's empty
                // view reaches the directory at the next flush.
                return Ok(OpOutcome::Changed);
            }
            ServiceOp::Unsubscribe { subscriber } => {
                let Some(state) = self.services.get_mut(&service) else {
                    return Ok(OpOutcome::Unchanged);
                };
                if state.subscribers.remove(&subscriber).is_none() {
                    return Ok(OpOutcome::Unchanged);
                }
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
                let removable =
                    !state.has_publishers() && state.subscribers.is_empty() && !state.explicit;
                if !removable {
                    return Ok(OpOutcome::Changed);
                }
                // Dirty only so that `flush` drops the now unused service.
                OpOutcome::Changed
            }
            ServiceOp::Configure {
                protect_threshold,
                metadata,
                must_exist,
            } => {
                self.configure_service(&service, exists, protect_threshold, metadata, must_exist)?
            }
            ServiceOp::Barrier => return Ok(OpOutcome::Unchanged),
            ServiceOp::Delete => {
                let Some(state) = self.services.get_mut(&service) else {
                    return Err(OpError::NotFound(format!("service {service:?} not found")));
                };
                if state.has_publishers() {
                    return Err(OpError::Conflict(format!(
                        "service {service:?} has {} instance(s); deregister them first",
                        state.view.instance_count
                    )));
                }
                state.explicit = false;
                OpOutcome::Changed
            }
        };
        self.mark_dirty(&service);
        Ok(outcome)
    }

    /// [`ServiceOp::Configure`]: creates the service or changes its settings (`exists`: it
    /// existed before this op).
    fn configure_service(
        &mut self,
        service: &ServiceKey,
        exists: bool,
        protect_threshold: Option<f32>,
        metadata: Option<Metadata>,
        must_exist: Option<bool>,
    ) -> OpResult {
        match must_exist {
            Some(true) if !exists => {
                return Err(OpError::NotFound(format!("service {service:?} not found")))
            }
            Some(false)
                if exists
                    && self
                        .services
                        .get(service)
                        .is_some_and(|s| s.explicit || s.has_publishers()) =>
            {
                return Err(OpError::Conflict(format!(
                    "service {service:?} already exists"
                )))
            }
            _ => {}
        }
        if let Some(t) = protect_threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(OpError::Invalid(format!(
                    "protectThreshold {t} must be within [0, 1]"
                )));
            }
        }
        let state = self.service_state(service.clone());
        state.explicit = true;
        if let Some(t) = protect_threshold {
            state.protect_threshold = t;
        }
        if let Some(m) = metadata {
            state.metadata = m;
        }
        Ok(OpOutcome::Changed)
    }

    pub(super) fn push(&mut self, service: &ServiceKey) {
        let Some(state) = self.services.get_mut(service) else {
            return;
        };
        state.push_timer_set = false;
        if state.view.revision <= state.pushed_revision {
            return;
        }
        state.pushed_revision = state.view.revision;
        for (subscriber, clusters) in &state.subscribers {
            self.stats.pushes.fetch_add(1, Ordering::Relaxed);
            self.out.push_back(Command::Push {
                subscriber: *subscriber,
                clusters: clusters.clone(),
                view: state.view.clone(),
            });
        }
    }
}
