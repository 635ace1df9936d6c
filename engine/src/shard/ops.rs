//! Client operations, applied by the shard that owns the client: one method per
//! [`ClientOp`], behind the dispatch in `apply_client_op`. A change of a publish is
//! recorded on the client (revision, Distro bookkeeping) and sent on as a [`ServiceOp`] to
//! the service's owner.

use std::sync::Arc;

use super::{
    next_rev, Client, ClientOp, InstancePatch, OpError, OpOutcome, OpResult, PublishEntry,
    ServiceOp, Shard,
};
use crate::model::{ClientId, Host, Instance, Publish, ServiceKey, Str};

impl Shard {
    pub(super) fn intern_instance(&mut self, mut instance: Instance) -> Instance {
        instance.cluster = self.interner.intern(&instance.cluster);
        instance
    }

    pub(super) fn apply_client_op(&mut self, client_id: ClientId, op: ClientOp) -> OpResult {
        if !self.pause_stale.is_empty() {
            self.pause_stale.remove(&client_id);
        }
        if self.distro.is_some() {
            // A write for a client held as a copy means its writer sees this node as
            // responsible (a membership change not yet seen here): take the client over.
            self.adopt_if_replica(&client_id);
        }
        match op {
            ClientOp::Register { service, instance } => {
                self.op_register(client_id, service, instance)
            }
            ClientOp::BatchRegister { service, instances } => {
                self.op_batch_register(client_id, service, instances)
            }
            ClientOp::Deregister {
                service,
                host,
                port,
                cluster,
            } => self.op_deregister(client_id, service, host, port, cluster),
            ClientOp::Update {
                service,
                host,
                port,
                cluster,
                patch,
            } => self.op_update(client_id, service, host, port, cluster, patch),
            ClientOp::Beat {
                service,
                host,
                port,
                cluster,
                reregister,
            } => self.op_beat(client_id, service, host, port, cluster, reregister),
            ClientOp::Subscribe { service, clusters } => {
                self.op_subscribe(client_id, service, clusters)
            }
            ClientOp::Unsubscribe { service } => self.op_unsubscribe(client_id, service),
            ClientOp::Disconnect => self.op_disconnect(client_id),
        }
    }

    /// [`ClientOp::Register`]: one instance replaces the client's publish in `service`.
    fn op_register(
        &mut self,
        client_id: ClientId,
        service: ServiceKey,
        instance: Instance,
    ) -> OpResult {
        let instance = self.intern_instance(instance);
        self.set_publish(client_id, service, Arc::from(vec![instance]))
    }

    /// [`ClientOp::BatchRegister`]: several instances replace the client's publish in `service`.
    fn op_batch_register(
        &mut self,
        client_id: ClientId,
        service: ServiceKey,
        instances: Vec<Instance>,
    ) -> OpResult {
        if instances.is_empty() {
            return Err(OpError::Invalid(
                "a batch registration needs at least one instance".into(),
            ));
        }
        if instances.len() > self.cfg.max_batch_instances {
            return Err(OpError::Invalid(format!(
                "a batch registration holds at most {} instances",
                self.cfg.max_batch_instances
            )));
        }
        let instances: Vec<Instance> = instances
            .into_iter()
            .map(|i| self.intern_instance(i))
            .collect();
        self.set_publish(client_id, service, Arc::from(instances))
    }

    /// [`ClientOp::Deregister`]: withdraws one instance from the client's publish in `service`.
    fn op_deregister(
        &mut self,
        client_id: ClientId,
        service: ServiceKey,
        host: Host,
        port: u16,
        cluster: Str,
    ) -> OpResult {
        let service = self.interner.service(service);
        let Some(client) = self.clients.get_mut(&client_id) else {
            self.deregistered_absent(&client_id);
            return Ok(OpOutcome::Unchanged);
        };
        let Some(pos) = client.entry(&service).ok() else {
            return Ok(OpOutcome::Unchanged);
        };
        let publish = &client.publishes[pos].publish;
        // A client holds one publish per service (Nacos): withdrawing a single-instance
        // publish removes it whatever cluster the request names; from a batch, only the
        // matching instance goes.
        let remaining: Vec<Instance> = if publish.len() <= 1 {
            Vec::new()
        } else {
            publish
                .iter()
                .filter(|i| !i.is_at(&host, port, &cluster))
                .cloned()
                .collect()
        };
        if remaining.len() == publish.len() {
            return Ok(OpOutcome::Unchanged);
        }
        let rev = next_rev(&mut self.clock, self.now.unix_ms);
        client.revision = rev;
        let old_rev = client.publishes[pos].rev;
        let service = client.publishes[pos].service.clone();
        let new_rev = (!remaining.is_empty()).then_some(rev);
        if remaining.is_empty() {
            client.publishes.remove(pos);
            self.native_entry_changed(&client_id, &service, Some(old_rev), new_rev);
            self.send_service_op(
                service,
                ServiceOp::Remove {
                    client: client_id.clone(),
                },
            );
        } else {
            let publish: Publish = Arc::from(remaining);
            client.publishes[pos].publish = publish.clone();
            client.publishes[pos].rev = rev;
            self.native_entry_changed(&client_id, &service, Some(old_rev), new_rev);
            self.send_service_op(
                service,
                ServiceOp::Upsert {
                    client: client_id.clone(),
                    publish,
                },
            );
        }
        self.drop_client_if_empty(&client_id);
        Ok(OpOutcome::Changed)
    }

    /// [`ClientOp::Update`]: changes fields of one registered instance.
    fn op_update(
        &mut self,
        client_id: ClientId,
        service: ServiceKey,
        host: Host,
        port: u16,
        cluster: Str,
        patch: InstancePatch,
    ) -> OpResult {
        let service = self.interner.service(service);
        let Some(client) = self.clients.get_mut(&client_id) else {
            return Err(OpError::NotFound(format!(
                "no instance {host}:{port} in {service:?}"
            )));
        };
        let found = client.entry(&service).ok().and_then(|pos| {
            let p = &client.publishes[pos].publish;
            p.iter()
                .position(|i| i.is_at(&host, port, &cluster))
                .map(|ipos| (pos, ipos))
        });
        let Some((pos, ipos)) = found else {
            return Err(OpError::NotFound(format!(
                "no instance {host}:{port} in cluster {cluster} of {service:?}"
            )));
        };
        let mut instances: Vec<Instance> = client.publishes[pos].publish.to_vec();
        let inst = &mut instances[ipos];
        if let Some(w) = patch.weight {
            if !w.is_finite() || w < 0.0 {
                return Err(OpError::Invalid(format!(
                    "weight {w} must be a number >= 0"
                )));
            }
            inst.weight = w.min(crate::model::MAX_WEIGHT);
        }
        if let Some(e) = patch.enabled {
            inst.enabled = e;
        }
        if let Some(h) = patch.healthy {
            inst.healthy = h;
        }
        if let Some(m) = patch.metadata {
            inst.set_metadata(m).map_err(|e| OpError::Invalid(e.0))?;
        }
        let service = client.publishes[pos].service.clone();
        self.set_publish(client_id, service, Arc::from(instances))
    }

    /// [`ClientOp::Beat`]: a heartbeat; re-registers an unknown instance if `reregister` says how.
    fn op_beat(
        &mut self,
        client_id: ClientId,
        service: ServiceKey,
        host: Host,
        port: u16,
        cluster: Str,
        reregister: Option<Instance>,
    ) -> OpResult {
        let now_ms = self.now.mono_ms;
        let service = self.interner.service(service);
        let found = self.clients.get_mut(&client_id).and_then(|client| {
            let pos = client.entry(&service).ok()?;
            let entry = &mut client.publishes[pos];
            let inst = entry
                .publish
                .iter()
                .find(|i| i.is_at(&host, port, &cluster))?;
            entry.last_beat_ms = now_ms;
            Some((inst.healthy, inst.timing().interval_ms))
        });
        match (found, reregister) {
            (Some((true, interval_ms)), _) => Ok(OpOutcome::Beat { interval_ms }),
            (Some((false, interval_ms)), _) => {
                self.set_health(&client_id, &service, true);
                Ok(OpOutcome::Beat { interval_ms })
            }
            (None, Some(instance)) => {
                let interval_ms = instance.timing().interval_ms;
                let instance = self.intern_instance(instance);
                self.set_publish(client_id, service, Arc::from(vec![instance]))?;
                Ok(OpOutcome::Beat { interval_ms })
            }
            (None, None) => Err(OpError::NotFound(format!(
                "instance {host}:{port} in cluster {cluster} of {service:?} is not registered"
            ))),
        }
    }

    /// [`ClientOp::Subscribe`]: a connection client subscribes to `service`.
    fn op_subscribe(
        &mut self,
        client_id: ClientId,
        service: ServiceKey,
        clusters: Str,
    ) -> OpResult {
        let ClientId::Conn(subscriber) = client_id else {
            return Err(OpError::Invalid(
                "only connection clients can subscribe".into(),
            ));
        };
        let service = self.interner.service(service);
        let limit = self.cfg.max_services_per_client;
        let subscribed = self.subscriptions.entry(subscriber).or_default();
        // Interned keys: a pointer comparison per subscription, not three strings.
        if !subscribed.iter().any(|s| s.ptr_eq(&service)) {
            if subscribed.len() >= limit {
                return Err(OpError::Invalid(format!(
                    "a client may subscribe to at most {limit} services"
                )));
            }
            subscribed.push(service.clone());
        }
        self.clients.entry(client_id.clone()).or_insert_with(|| {
            self.stats.count_client(&client_id, 1);
            Client::new()
        });
        self.send_service_op(
            service,
            ServiceOp::Subscribe {
                subscriber,
                clusters,
            },
        );
        Ok(OpOutcome::Changed)
    }

    /// [`ClientOp::Unsubscribe`]: a connection client stops its subscription to `service`.
    fn op_unsubscribe(&mut self, client_id: ClientId, service: ServiceKey) -> OpResult {
        let ClientId::Conn(subscriber) = client_id else {
            return Ok(OpOutcome::Unchanged);
        };
        let Some(subscribed) = self.subscriptions.get_mut(&subscriber) else {
            return Ok(OpOutcome::Unchanged);
        };
        let before = subscribed.len();
        subscribed.retain(|s| s != &service);
        if subscribed.len() == before {
            return Ok(OpOutcome::Unchanged);
        }
        if subscribed.is_empty() {
            self.subscriptions.remove(&subscriber);
        }
        self.send_service_op(service, ServiceOp::Unsubscribe { subscriber });
        self.drop_client_if_empty(&client_id);
        Ok(OpOutcome::Changed)
    }

    /// [`ClientOp::Disconnect`]: the client is gone; everything it published or subscribed goes.
    fn op_disconnect(&mut self, client_id: ClientId) -> OpResult {
        let Some(client) = self.clients.swap_remove(&client_id) else {
            return Ok(OpOutcome::Unchanged);
        };
        self.stats.count_client(&client_id, -1);
        for entry in &client.publishes {
            self.digest_entry(&client_id, None, entry.rev, false);
        }
        if !client.publishes.is_empty() {
            self.note_native_change(&client_id, None);
        }
        for entry in client.publishes {
            self.send_service_op(
                entry.service,
                ServiceOp::Remove {
                    client: client_id.clone(),
                },
            );
        }
        if let ClientId::Conn(subscriber) = client_id {
            for service in self.subscriptions.remove(&subscriber).unwrap_or_default() {
                self.send_service_op(service, ServiceOp::Unsubscribe { subscriber });
            }
        }
        Ok(OpOutcome::Changed)
    }

    /// Replaces the client's publish in `service`; the heart of register, batch and update.
    pub(super) fn set_publish(
        &mut self,
        client_id: ClientId,
        service: ServiceKey,
        publish: Publish,
    ) -> OpResult {
        let now_ms = self.now.mono_ms;
        let limit = self.cfg.max_services_per_client;
        let service = self.interner.service(service);
        let client = self.clients.entry(client_id.clone()).or_insert_with(|| {
            self.stats.count_client(&client_id, 1);
            Client::new()
        });
        let old_rev = match client.entry(&service) {
            Ok(pos) => {
                let entry = &mut client.publishes[pos];
                entry.last_beat_ms = now_ms;
                if entry.publish == publish {
                    return Ok(OpOutcome::Unchanged);
                }
                entry.publish = publish.clone();
                let rev = next_rev(&mut self.clock, self.now.unix_ms);
                client.revision = rev;
                Some(std::mem::replace(&mut entry.rev, rev))
            }
            Err(pos) => {
                if client.publishes.len() >= limit {
                    return Err(OpError::Invalid(format!(
                        "a client may publish in at most {limit} services"
                    )));
                }
                let rev = next_rev(&mut self.clock, self.now.unix_ms);
                client.revision = rev;
                client.publishes.insert(
                    pos,
                    PublishEntry {
                        service: service.clone(),
                        publish: publish.clone(),
                        last_beat_ms: now_ms,
                        rev,
                    },
                );
                None
            }
        };
        let rev = client.revision;
        self.native_entry_changed(&client_id, &service, old_rev, Some(rev));
        self.send_service_op(
            service,
            ServiceOp::Upsert {
                client: client_id,
                publish,
            },
        );
        Ok(OpOutcome::Changed)
    }

    pub(super) fn drop_client_if_empty(&mut self, client_id: &ClientId) {
        let subscribes = match client_id {
            ClientId::Conn(id) => self.subscriptions.contains_key(id),
            _ => false,
        };
        let empty = !subscribes
            && self
                .clients
                .get(client_id)
                .is_some_and(|c| c.publishes.is_empty());
        if empty {
            self.clients.swap_remove(client_id);
            self.stats.count_client(client_id, -1);
            if !self.pause_stale.is_empty() {
                self.pause_stale.remove(client_id);
            }
            self.note_owned_removal(client_id);
        }
    }
}
