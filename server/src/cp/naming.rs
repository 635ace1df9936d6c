//! Persistent naming writes as the front ends make them: validated engine types in, a store
//! command through Raft, the answer once this node's views show it.
//!
//! The service-kind rule (a service holds ephemeral or persistent instances, never both) is
//! checked here against this node's views before the write is proposed, as Nacos checks its
//! service registry; two writers racing on an empty service on different nodes can both pass,
//! as in Nacos.

use std::sync::Arc;

use engine::model::{ClientId, Host, Instance, ServiceKey};
use engine::shard::InstancePatch;
use engine::store::naming::{
    ClusterDefinition, InstanceChange, NamingCommand, PersistentInstance, ServiceChange, ServiceRef,
};
use engine::store::StoreCommand;
use engine::view::{service_shard, InstanceKind};

use super::{Cp, CpError};
use crate::core::with_core;

/// The stored reference of a service key.
pub fn service_ref(key: &ServiceKey) -> ServiceRef {
    ServiceRef {
        namespace: key.namespace().to_owned(),
        group: key.group().to_owned(),
        name: key.name().to_owned(),
    }
}

/// The stored form of a validated instance.
pub fn stored_instance(instance: &Instance) -> PersistentInstance {
    PersistentInstance {
        ip: instance.host.to_string(),
        port: instance.port,
        cluster: instance.cluster.to_string(),
        weight: instance.weight,
        healthy: instance.healthy,
        enabled: instance.enabled,
        metadata: instance.metadata().to_map(),
    }
}

/// The store's change for an instance patch.
pub fn change_of(patch: InstancePatch) -> InstanceChange {
    InstanceChange {
        weight: patch.weight,
        enabled: patch.enabled,
        healthy: patch.healthy,
        metadata: patch.metadata.map(|m| m.to_map()),
    }
}

/// The kind of instances `key` holds on this node (`None`: none).
pub fn kind_of(key: &ServiceKey) -> Option<InstanceKind> {
    let index = with_core(|c| c.shared.index.clone());
    index.view(key).and_then(|v| v.kind())
}

/// Refuses an instance of `kind` in a service holding the other kind, with Nacos's text.
pub fn check_kind(key: &ServiceKey, kind: InstanceKind) -> Result<(), CpError> {
    match kind_of(key) {
        Some(held) if held != kind => Err(CpError::KindRule(kind.refusal(&key.grouped_name()))),
        _ => Ok(()),
    }
}

fn cp() -> Result<Arc<Cp>, CpError> {
    Ok(with_core(|c| c.shared.cp.clone()))
}

fn cores() -> usize {
    with_core(|c| c.shared.cfg.cores)
}

fn client_core(host: &Host, port: u16) -> usize {
    let client = ClientId::Persistent(host.clone(), port);
    engine::shard::client_shard(&client, cores())
}

/// Registers (or replaces) a persistent instance.
pub async fn register(key: ServiceKey, instance: &Instance) -> Result<(), CpError> {
    check_kind(&key, InstanceKind::Persistent)?;
    let core = client_core(&instance.host, instance.port);
    let cmd = NamingCommand::Register {
        service: service_ref(&key),
        instance: stored_instance(instance),
    };
    cp()?
        .write(StoreCommand::Naming(cmd), Some((core, key)))
        .await
        .map(drop)
}

/// Deregisters the persistent instance at `host:port` (absent: done, as Nacos answers ok).
pub async fn deregister(key: ServiceKey, host: &Host, port: u16) -> Result<(), CpError> {
    let core = client_core(host, port);
    let cmd = NamingCommand::Deregister {
        service: service_ref(&key),
        ip: host.to_string(),
        port,
    };
    cp()?
        .write(StoreCommand::Naming(cmd), Some((core, key)))
        .await
        .map(drop)
}

/// Changes fields of a persistent instance (404 when absent).
pub async fn update(
    key: ServiceKey,
    host: &Host,
    port: u16,
    patch: InstancePatch,
) -> Result<(), CpError> {
    let core = client_core(host, port);
    let cmd = NamingCommand::Update {
        service: service_ref(&key),
        ip: host.to_string(),
        port,
        change: change_of(patch),
    };
    cp()?
        .write(StoreCommand::Naming(cmd), Some((core, key)))
        .await
        .map(drop)
}

/// A health checker's verdict (no barrier: nobody waits to read it).
pub async fn set_health(
    key: &ServiceKey,
    host: &Host,
    port: u16,
    healthy: bool,
) -> Result<(), CpError> {
    let cmd = NamingCommand::SetHealth {
        service: service_ref(key),
        ip: host.to_string(),
        port,
        healthy,
    };
    cp()?.write(StoreCommand::Naming(cmd), None).await.map(drop)
}

/// Creates or changes a service definition. A service that exists only through its
/// ephemeral instances exists for `must_exist = Some(true)` (PUT) too.
pub async fn define_service(
    key: ServiceKey,
    change: ServiceChange,
    must_exist: Option<bool>,
) -> Result<(), CpError> {
    let must_exist = match must_exist {
        Some(true) if kind_of(&key).is_some() => None,
        other => other,
    };
    let core = service_shard(&key, cores());
    let cmd = NamingCommand::DefineService {
        service: service_ref(&key),
        change,
        must_exist,
    };
    cp()?
        .write(StoreCommand::Naming(cmd), Some((core, key)))
        .await
        .map(drop)
}

/// Deletes a service definition; refused while the service has instances of either kind.
pub async fn delete_service(key: ServiceKey) -> Result<(), CpError> {
    if kind_of(&key) == Some(InstanceKind::Ephemeral) {
        return Err(CpError::Refused {
            code: 400,
            message: format!(
                "service {} is not empty, can't be delete. Please unregister instance first",
                key.grouped_name()
            ),
        });
    }
    let core = service_shard(&key, cores());
    let cmd = NamingCommand::DeleteService {
        service: service_ref(&key),
    };
    cp()?
        .write(StoreCommand::Naming(cmd), Some((core, key)))
        .await
        .map(drop)
}

/// Creates or replaces a cluster definition (health checker, check port) of a service that
/// exists (Nacos: "service not found" otherwise).
pub async fn define_cluster(
    key: ServiceKey,
    cluster: &str,
    definition: ClusterDefinition,
) -> Result<(), CpError> {
    let defined = with_core(|c| c.shared.index.clone()).view(&key).is_some();
    if !defined {
        return Err(CpError::Refused {
            code: 404,
            message: format!("service not found:{}", key.grouped_name()),
        });
    }
    let cmd = NamingCommand::DefineCluster {
        service: service_ref(&key),
        cluster: cluster.to_owned(),
        definition,
    };
    cp()?.write(StoreCommand::Naming(cmd), None).await.map(drop)
}
