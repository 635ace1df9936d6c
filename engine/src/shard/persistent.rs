//! Where the CP half meets the shards: an applied store effect becomes an ordinary shard
//! message, so persistent instances are served by the same views, caches and pushes as
//! ephemeral ones.
//!
//! A persistent instance at `ip:port` is published by the client
//! [`ClientId::Persistent`]`(ip, port)`, one instance per service (Nacos keys persistent
//! instances by service and address). Every node applies the Raft log, so every node feeds the
//! same messages to its own shards; Distro skips these clients.

use crate::model::{ClientId, Host, Instance, InvalidInput, Metadata, ServiceKey, Str};
use crate::store::naming::{
    ClusterDefinition, NamingCommand, NamingEffect, PersistentInstance, ServiceRef,
};
use crate::store::StoreCommand;

use super::{ClientOp, ServiceOp, ShardMsg};

/// What the driver does with one naming effect.
#[derive(Clone, Debug, PartialEq)]
pub enum EffectAction {
    /// Deliver to the owning shard (the client's owner for a [`ShardMsg::Client`], the
    /// service's owner for a [`ShardMsg::Service`]).
    Shard(ShardMsg),
    /// A cluster definition changed: the health checker's configuration.
    Cluster {
        /// Service.
        service: ServiceKey,
        /// Cluster name.
        cluster: Str,
        /// New definition (`None`: back to the defaults).
        definition: Option<ClusterDefinition>,
    },
}

/// The service key of a stored service reference.
pub fn service_key(service: &ServiceRef) -> Result<ServiceKey, InvalidInput> {
    ServiceKey::new(&service.namespace, &service.group, &service.name)
}

/// The client publishing the persistent instances at `ip:port`.
pub fn persistent_client(ip: &str, port: u16) -> Result<ClientId, InvalidInput> {
    Ok(ClientId::Persistent(Host::parse(ip)?, port))
}

/// The registry's instance for a stored persistent instance.
pub fn instance_of(stored: &PersistentInstance) -> Result<Instance, InvalidInput> {
    let mut instance = Instance::from_parts(
        Host::parse(&stored.ip)?,
        stored.port,
        stored.weight,
        stored.healthy,
        stored.enabled,
        Str::from(stored.cluster.as_str()),
        Metadata::from_map(&stored.metadata)?,
        None,
    )?;
    instance.ephemeral = false;
    Ok(instance)
}

/// Whether `cmd` holds only what the registry accepts from a client: the check a node makes
/// before it proposes a command that another node sent it (a follower's forwarded writes), so
/// a peer cannot put into the log what a client could not. Committed entries are not checked
/// this way: refusing one would stop replication for good, and [`action_for`] already keeps
/// an invalid record out of the views.
pub fn check_command(cmd: &StoreCommand) -> Result<(), InvalidInput> {
    let cmd = match cmd {
        StoreCommand::Naming(cmd) => cmd,
        StoreCommand::Namespace(ns) => {
            let (id, record) = match ns {
                crate::store::NamespaceCommand::Create { id, record }
                | crate::store::NamespaceCommand::Update { id, record } => (id, Some(record)),
                crate::store::NamespaceCommand::Delete { id } => (id, None),
            };
            return match crate::store::namespaces::invalid(id, record) {
                Some(why) => Err(InvalidInput(why)),
                None => Ok(()),
            };
        }
        StoreCommand::Auth(cmd) => {
            return crate::store::auth::check(cmd).map_err(InvalidInput);
        }
    };
    match cmd {
        NamingCommand::Register { service, instance } => {
            service_key(service)?;
            instance_of(instance).map(drop)
        }
        NamingCommand::Update {
            service,
            ip,
            change,
            ..
        } => {
            service_key(service)?;
            Host::parse(ip)?;
            match &change.metadata {
                Some(m) => Metadata::from_map(m).map(drop),
                None => Ok(()),
            }
        }
        NamingCommand::Deregister { service, ip, .. }
        | NamingCommand::SetHealth { service, ip, .. } => {
            service_key(service)?;
            Host::parse(ip).map(drop)
        }
        NamingCommand::DefineService { service, .. } | NamingCommand::DeleteService { service } => {
            service_key(service).map(drop)
        }
        NamingCommand::DefineCluster {
            service, cluster, ..
        } => {
            service_key(service)?;
            if cluster.is_empty() || cluster.len() > 256 {
                return Err(InvalidInput(format!(
                    "cluster name {cluster:?} is not valid"
                )));
            }
            Ok(())
        }
    }
}

/// The action for `effect`. An error means the store holds a record the registry would not
/// accept from a client (only possible with a store written by another version): the driver
/// logs it and goes on.
pub fn action_for(effect: &NamingEffect) -> Result<EffectAction, InvalidInput> {
    Ok(match effect {
        NamingEffect::InstanceUpserted { service, instance } => {
            EffectAction::Shard(ShardMsg::Client {
                client: persistent_client(&instance.ip, instance.port)?,
                op: ClientOp::Register {
                    service: service_key(service)?,
                    instance: instance_of(instance)?,
                },
                reply: None,
            })
        }
        NamingEffect::InstanceRemoved { service, instance } => {
            EffectAction::Shard(ShardMsg::Client {
                client: persistent_client(&instance.ip, instance.port)?,
                op: ClientOp::Deregister {
                    service: service_key(service)?,
                    host: Host::parse(&instance.ip)?,
                    port: instance.port,
                    cluster: Str::from(instance.cluster.as_str()),
                },
                reply: None,
            })
        }
        NamingEffect::ServiceDefined {
            service,
            definition: Some(definition),
        } => EffectAction::Shard(ShardMsg::Service {
            service: service_key(service)?,
            op: ServiceOp::Configure {
                protect_threshold: Some(definition.protect_threshold),
                metadata: Some(Metadata::from_map(&definition.metadata)?),
                must_exist: None,
            },
            reply: None,
        }),
        NamingEffect::ServiceDefined {
            service,
            definition: None,
        } => EffectAction::Shard(ShardMsg::Service {
            service: service_key(service)?,
            op: ServiceOp::Delete,
            reply: None,
        }),
        NamingEffect::ClusterDefined {
            service,
            cluster,
            definition,
        } => EffectAction::Cluster {
            service: service_key(service)?,
            cluster: Str::from(cluster.as_str()),
            definition: definition.clone(),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn svc() -> ServiceRef {
        ServiceRef {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            name: "db".into(),
        }
    }

    fn stored() -> PersistentInstance {
        PersistentInstance {
            ip: "127.0.0.5".into(),
            port: 3306,
            cluster: "EAST".into(),
            weight: 2.0,
            healthy: false,
            enabled: true,
            metadata: BTreeMap::from([("role".to_owned(), "primary".to_owned())]),
        }
    }

    #[test]
    fn an_upserted_instance_is_registered_by_its_persistent_client() {
        let action = action_for(&NamingEffect::InstanceUpserted {
            service: svc(),
            instance: stored(),
        })
        .unwrap();
        let EffectAction::Shard(ShardMsg::Client { client, op, reply }) = action else {
            panic!("{action:?}");
        };
        assert_eq!(client.to_string(), "127.0.0.5:3306#false");
        assert!(client.is_persistent() && !client.is_heartbeat());
        assert_eq!(reply, None);
        let ClientOp::Register { service, instance } = op else {
            panic!("{op:?}");
        };
        assert_eq!(service.grouped_name(), "DEFAULT_GROUP@@db");
        assert!(!instance.ephemeral && !instance.healthy);
        assert_eq!((instance.weight, &*instance.cluster), (2.0, "EAST"));
        assert_eq!(instance.metadata().get("role").as_deref(), Some("primary"));
    }

    #[test]
    fn a_removed_instance_is_deregistered_in_its_cluster() {
        let action = action_for(&NamingEffect::InstanceRemoved {
            service: svc(),
            instance: stored(),
        })
        .unwrap();
        let EffectAction::Shard(ShardMsg::Client {
            op: ClientOp::Deregister { port, cluster, .. },
            ..
        }) = action
        else {
            panic!("{action:?}");
        };
        assert_eq!((port, &*cluster), (3306, "EAST"));
    }

    #[test]
    fn a_stored_record_the_registry_refuses_is_an_error_not_a_panic() {
        let mut bad = stored();
        bad.weight = f64::NAN;
        let effect = NamingEffect::InstanceUpserted {
            service: svc(),
            instance: bad,
        };
        assert!(action_for(&effect).is_err());
    }
}
