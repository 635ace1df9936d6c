//! The naming key space: persistent instances (Nacos `ephemeral=false`), service definitions
//! (`/nacos/v1/ns/service`) and cluster definitions (`/nacos/v1/ns/cluster`, which carry the
//! health checker).
//!
//! Records are plain owned data (no interned strings, no `Arc`s): they are what goes into the
//! log and the snapshots, so their shape is a storage format and changes to it are migrations.
//! Identity follows Nacos 2.x: a persistent instance is keyed by (service, `ip`, `port`); its
//! cluster is a field, so a re-registration in another cluster moves it
//! (`PersistentClientOperationServiceImpl` keeps one publish per client per service).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreResponse;

/// A service's identity: namespace, group and bare name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Namespace id.
    pub namespace: String,
    /// Group name.
    pub group: String,
    /// Bare service name (no `group@@`).
    pub name: String,
}

impl ServiceRef {
    /// Nacos's `group@@name`, as error messages show it.
    pub fn grouped_name(&self) -> String {
        format!("{}@@{}", self.group, self.name)
    }
}

/// A persistent instance as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistentInstance {
    /// Address (IPv4, IPv6 or a host name), as registered.
    pub ip: String,
    /// Port.
    pub port: u16,
    /// Cluster name.
    pub cluster: String,
    /// Weight, `0..=10000`.
    pub weight: f64,
    /// Health: the registration's value, then only what the health checker decided.
    pub healthy: bool,
    /// Whether consumers may route to it.
    pub enabled: bool,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A change of a persistent instance's mutable fields (HTTP `PUT`/`PATCH`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceChange {
    /// New weight.
    pub weight: Option<f64>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New health flag (HTTP `PATCH`/health API; the checker uses [`NamingCommand::SetHealth`]).
    pub healthy: Option<bool>,
    /// New metadata (replaces the old).
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A service definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceDefinition {
    /// Protect threshold, `0..=1`.
    pub protect_threshold: f32,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Selector as Nacos's JSON text (`{"type":"none"}` when absent).
    pub selector: Option<String>,
}

/// A change of a service definition (fields left `None` keep their value; a new definition
/// starts from Nacos's defaults: threshold 0, no metadata, no selector).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceChange {
    /// New protect threshold.
    pub protect_threshold: Option<f32>,
    /// New metadata.
    pub metadata: Option<BTreeMap<String, String>>,
    /// New selector JSON.
    pub selector: Option<String>,
}

/// How the responsible node probes a cluster's persistent instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthChecker {
    /// TCP connect (Nacos's default).
    Tcp,
    /// HTTP GET of `path` with `headers`; only 200 is healthy.
    Http {
        /// Path, starting with `/`.
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// No probing: health stays what was registered.
    None,
}

/// A cluster definition (`PUT /nacos/v1/ns/cluster`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterDefinition {
    /// The checker.
    pub health_checker: HealthChecker,
    /// Port probed when `use_instance_port` is false.
    pub check_port: u16,
    /// Probe each instance's own port (Nacos's default) rather than `check_port`.
    pub use_instance_port: bool,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Default for ClusterDefinition {
    /// Nacos's `ClusterMetadata` defaults: TCP on the instance's port (80 otherwise).
    fn default() -> Self {
        ClusterDefinition {
            health_checker: HealthChecker::Tcp,
            check_port: 80,
            use_instance_port: true,
            metadata: BTreeMap::new(),
        }
    }
}

/// A write to the naming key space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NamingCommand {
    /// Registers (or replaces) the persistent instance at `instance.ip:port` in `service`.
    Register {
        /// Service.
        service: ServiceRef,
        /// The instance.
        instance: PersistentInstance,
    },
    /// Removes the persistent instance at `ip:port` from `service` (absent: done, unchanged,
    /// as Nacos answers `ok`).
    Deregister {
        /// Service.
        service: ServiceRef,
        /// Address.
        ip: String,
        /// Port.
        port: u16,
    },
    /// Changes fields of a registered persistent instance (404 when absent).
    Update {
        /// Service.
        service: ServiceRef,
        /// Address.
        ip: String,
        /// Port.
        port: u16,
        /// The change.
        change: InstanceChange,
    },
    /// A health checker's verdict: applied only if the instance still exists (Nacos's
    /// `CHANGE`), so a flip racing a deregistration never brings the instance back.
    SetHealth {
        /// Service.
        service: ServiceRef,
        /// Address.
        ip: String,
        /// Port.
        port: u16,
        /// New health.
        healthy: bool,
    },
    /// Creates or changes a service definition. `must_exist`: `Some(true)` refuses a missing
    /// service (PUT), `Some(false)` refuses an existing definition (POST), `None` upserts.
    DefineService {
        /// Service.
        service: ServiceRef,
        /// The change.
        change: ServiceChange,
        /// Existence requirement.
        must_exist: Option<bool>,
    },
    /// Deletes a service definition; refused while the service has persistent instances.
    DeleteService {
        /// Service.
        service: ServiceRef,
    },
    /// Creates or replaces a cluster definition. The front end refuses it for a service it
    /// does not know; the store cannot tell (a service of ephemeral instances is not in it).
    DefineCluster {
        /// Service.
        service: ServiceRef,
        /// Cluster name.
        cluster: String,
        /// The definition.
        definition: ClusterDefinition,
    },
}

/// What changed in the naming key space.
#[derive(Clone, Debug, PartialEq)]
pub enum NamingEffect {
    /// A persistent instance is new or changed: the views show `instance` (its cluster may
    /// differ from the previous one's).
    InstanceUpserted {
        /// Service.
        service: ServiceRef,
        /// The instance as it now is.
        instance: PersistentInstance,
    },
    /// A persistent instance is gone.
    InstanceRemoved {
        /// Service.
        service: ServiceRef,
        /// The instance as it was.
        instance: PersistentInstance,
    },
    /// A service definition is new or changed (`None`: deleted).
    ServiceDefined {
        /// Service.
        service: ServiceRef,
        /// The definition.
        definition: Option<ServiceDefinition>,
    },
    /// A cluster definition is new or changed (`None`: gone with its service).
    ClusterDefined {
        /// Service.
        service: ServiceRef,
        /// Cluster name.
        cluster: String,
        /// The definition.
        definition: Option<ClusterDefinition>,
    },
}

/// Everything stored about one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Its explicit definition, if it was created or changed through the service API.
    pub definition: Option<ServiceDefinition>,
    /// Its cluster definitions.
    pub clusters: BTreeMap<String, ClusterDefinition>,
    /// Its persistent instances by `(ip, port)` (a tuple key: the binary snapshot codecs take
    /// it, JSON would not).
    pub instances: BTreeMap<(String, u16), PersistentInstance>,
}

impl ServiceRecord {
    fn is_empty(&self) -> bool {
        self.definition.is_none() && self.clusters.is_empty() && self.instances.is_empty()
    }
}

/// The naming key space. Records that become empty are dropped, so the space holds nothing
/// for a service nobody defined and nobody registers in.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NamingSpace {
    services: BTreeMap<ServiceRef, ServiceRecord>,
    /// Kept for metrics; not stored (a snapshot's would be trusted blindly), recounted by
    /// [`NamingSpace::recount`] when a whole space is installed.
    #[serde(skip)]
    instance_count: usize,
}

impl PartialEq for NamingSpace {
    /// Equal when the records are: the instance count is derived.
    fn eq(&self, other: &NamingSpace) -> bool {
        self.services == other.services
    }
}

impl NamingSpace {
    /// The record of `service`.
    pub fn service(&self, service: &ServiceRef) -> Option<&ServiceRecord> {
        self.services.get(service)
    }

    /// Every service record, in order.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceRef, &ServiceRecord)> {
        self.services.iter()
    }

    /// Number of persistent instances.
    pub fn instance_count(&self) -> usize {
        self.instance_count
    }

    /// Number of records (instances and definitions).
    pub fn len(&self) -> usize {
        self.instance_count
            + self
                .services
                .values()
                .map(|r| usize::from(r.definition.is_some()) + r.clusters.len())
                .sum::<usize>()
    }

    /// Whether the space holds nothing.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Applies `cmd`, reporting what changed to `effect`.
    pub fn apply(
        &mut self,
        cmd: &NamingCommand,
        effect: &mut dyn FnMut(NamingEffect),
    ) -> StoreResponse {
        match cmd {
            NamingCommand::Register { service, instance } => {
                self.register(service, instance, effect)
            }
            NamingCommand::Deregister { service, ip, port } => {
                self.deregister(service, ip, *port, effect)
            }
            NamingCommand::Update {
                service,
                ip,
                port,
                change,
            } => self.update(service, ip, *port, change, effect),
            NamingCommand::SetHealth {
                service,
                ip,
                port,
                healthy,
            } => self.set_health(service, ip, *port, *healthy, effect),
            NamingCommand::DefineService {
                service,
                change,
                must_exist,
            } => self.define_service(service, change, *must_exist, effect),
            NamingCommand::DeleteService { service } => self.delete_service(service, effect),
            NamingCommand::DefineCluster {
                service,
                cluster,
                definition,
            } => self.define_cluster(service, cluster, definition, effect),
        }
    }

    fn register(
        &mut self,
        service: &ServiceRef,
        instance: &PersistentInstance,
        effect: &mut dyn FnMut(NamingEffect),
    ) -> StoreResponse {
        let record = self.services.entry(service.clone()).or_default();
        let key = (instance.ip.clone(), instance.port);
        match record.instances.get(&key) {
            Some(old) if old == instance => return StoreResponse::done(false),
            Some(_) => {}
            None => self.instance_count += 1,
        }
        record.instances.insert(key, instance.clone());
        effect(NamingEffect::InstanceUpserted {
            service: service.clone(),
            instance: instance.clone(),
        });
        StoreResponse::done(true)
    }

    fn deregister(
        &mut self,
        service: &ServiceRef,
        ip: &str,
        port: u16,
        effect: &mut dyn FnMut(NamingEffect),
    ) -> StoreResponse {
        let Some(record) = self.services.get_mut(service) else {
            return StoreResponse::done(false);
        };
        let Some(old) = record.instances.remove(&(ip.to_owned(), port)) else {
            return StoreResponse::done(false);
        };
        self.instance_count = self.instance_count.saturating_sub(1);
        if record.is_empty() {
            self.services.remove(service);
        }
        effect(NamingEffect::InstanceRemoved {
            service: service.clone(),
            instance: old,
        });
        StoreResponse::done(true)
    }

    fn update(
        &mut self,
        service: &ServiceRef,
        ip: &str,
        port: u16,
        change: &InstanceChange,
        effect: &mut dyn FnMut(NamingEffect),
    ) -> StoreResponse {
        let Some(instance) = self
            .services
            .get_mut(service)
            .and_then(|r| r.instances.get_mut(&(ip.to_owned(), port)))
        else {
            return StoreResponse::refused(
                404,
                format!(
                    "instance not found: {ip}:{port} in service {}",
                    service.grouped_name()
                ),
            );
        };
        let mut next = instance.clone();
        if let Some(w) = change.weight {
            next.weight = w;
        }
        if let Some(e) = change.enabled {
            next.enabled = e;
        }
        if let Some(h) = change.healthy {
            next.healthy = h;
        }
        if let Some(m) = &change.metadata {
            next.metadata = m.clone();
        }
        if next == *instance {
            return StoreResponse::done(false);
        }
        *instance = next.clone();
        effect(NamingEffect::InstanceUpserted {
            service: service.clone(),
            instance: next,
        });
        StoreResponse::done(true)
    }

    fn set_health(
        &mut self,
        service: &ServiceRef,
        ip: &str,
        port: u16,
        healthy: bool,
        effect: &mut dyn FnMut(NamingEffect),
    ) -> StoreResponse {
        let Some(instance) = self
            .services
            .get_mut(service)
            .and_then(|r| r.instances.get_mut(&(ip.to_owned(), port)))
        else {
            return StoreResponse::done(false);
        };
        if instance.healthy == healthy {
            return StoreResponse::done(false);
        }
        instance.healthy = healthy;
        effect(NamingEffect::InstanceUpserted {
            service: service.clone(),
            instance: instance.clone(),
        });
        StoreResponse::done(true)
    }

    fn define_service(
        &mut self,
        service: &ServiceRef,
        change: &ServiceChange,
        must_exist: Option<bool>,
        effect: &mut dyn FnMut(NamingEffect),
    ) -> StoreResponse {
        let existing = self.services.get(service);
        let defined = existing.is_some_and(|r| r.definition.is_some());
        match must_exist {
            Some(true) if existing.is_none() => {
                return StoreResponse::refused(
                    404,
                    format!("service {} not found", service.grouped_name()),
                )
            }
            Some(false) if defined => {
                return StoreResponse::refused(
                    400,
                    format!(
                        "specified service {} already exists",
                        service.grouped_name()
                    ),
                )
            }
            _ => {}
        }
        let record = self.services.entry(service.clone()).or_default();
        let old = record.definition.clone();
        let mut next = old.clone().unwrap_or(ServiceDefinition {
            protect_threshold: 0.0,
            metadata: BTreeMap::new(),
            selector: None,
        });
        if let Some(t) = change.protect_threshold {
            next.protect_threshold = t;
        }
        if let Some(m) = &change.metadata {
            next.metadata = m.clone();
        }
        if let Some(s) = &change.selector {
            next.selector = Some(s.clone());
        }
        if old.as_ref() == Some(&next) {
            return StoreResponse::done(false);
        }
        record.definition = Some(next.clone());
        effect(NamingEffect::ServiceDefined {
            service: service.clone(),
            definition: Some(next),
        });
        StoreResponse::done(true)
    }

    fn delete_service(
        &mut self,
        service: &ServiceRef,
        effect: &mut dyn FnMut(NamingEffect),
    ) -> StoreResponse {
        let Some(record) = self.services.get(service) else {
            return StoreResponse::refused(
                404,
                format!("service {} not found", service.grouped_name()),
            );
        };
        if !record.instances.is_empty() {
            return StoreResponse::refused(
                400,
                format!(
                    "service {} is not empty, can't be delete. Please unregister instance first",
                    service.grouped_name()
                ),
            );
        }
        let Some(record) = self.services.remove(service) else {
            return StoreResponse::done(false);
        };
        for cluster in record.clusters.into_keys() {
            effect(NamingEffect::ClusterDefined {
                service: service.clone(),
                cluster,
                definition: None,
            });
        }
        if record.definition.is_some() {
            effect(NamingEffect::ServiceDefined {
                service: service.clone(),
                definition: None,
            });
        }
        StoreResponse::done(true)
    }

    fn define_cluster(
        &mut self,
        service: &ServiceRef,
        cluster: &str,
        definition: &ClusterDefinition,
        effect: &mut dyn FnMut(NamingEffect),
    ) -> StoreResponse {
        let record = self.services.entry(service.clone()).or_default();
        if record.clusters.get(cluster) == Some(definition) {
            return StoreResponse::done(false);
        }
        record
            .clusters
            .insert(cluster.to_owned(), definition.clone());
        effect(NamingEffect::ClusterDefined {
            service: service.clone(),
            cluster: cluster.to_owned(),
            definition: Some(definition.clone()),
        });
        StoreResponse::done(true)
    }

    /// Recounts the instances (after a whole space was decoded).
    pub(crate) fn recount(&mut self) {
        self.instance_count = self.services.values().map(|r| r.instances.len()).sum();
    }

    /// Reports the difference from `old` to `self` as effects: removals first (instances
    /// that are gone or moved, definitions that are gone), then everything new or changed.
    pub(crate) fn diff_from(&self, old: &NamingSpace, effect: &mut dyn FnMut(NamingEffect)) {
        let empty = ServiceRecord::default();
        for (service, before) in &old.services {
            let after = self.services.get(service).unwrap_or(&empty);
            for (key, instance) in &before.instances {
                if !after.instances.contains_key(key) {
                    effect(NamingEffect::InstanceRemoved {
                        service: service.clone(),
                        instance: instance.clone(),
                    });
                }
            }
            for cluster in before.clusters.keys() {
                if !after.clusters.contains_key(cluster) {
                    effect(NamingEffect::ClusterDefined {
                        service: service.clone(),
                        cluster: cluster.clone(),
                        definition: None,
                    });
                }
            }
            if before.definition.is_some() && after.definition.is_none() {
                effect(NamingEffect::ServiceDefined {
                    service: service.clone(),
                    definition: None,
                });
            }
        }
        for (service, after) in &self.services {
            let before = old.services.get(service).unwrap_or(&empty);
            if after.definition.is_some() && after.definition != before.definition {
                effect(NamingEffect::ServiceDefined {
                    service: service.clone(),
                    definition: after.definition.clone(),
                });
            }
            for (cluster, definition) in &after.clusters {
                if before.clusters.get(cluster) != Some(definition) {
                    effect(NamingEffect::ClusterDefined {
                        service: service.clone(),
                        cluster: cluster.clone(),
                        definition: Some(definition.clone()),
                    });
                }
            }
            for (key, instance) in &after.instances {
                if before.instances.get(key) != Some(instance) {
                    effect(NamingEffect::InstanceUpserted {
                        service: service.clone(),
                        instance: instance.clone(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
