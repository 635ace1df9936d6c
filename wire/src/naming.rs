//! JSON bodies of the naming requests (Nacos 2.x `api/.../naming/remote/request`) and their
//! conversion into engine values. Unknown fields are ignored and absent ones take Nacos's
//! defaults, as Jackson does on the Java side.

use std::collections::HashMap;

use engine::model::{Host, InstanceSpec, Interner, InvalidInput, Metadata, ServiceKey};
use engine::shard::ClientOp;
use serde::Deserialize;

/// An instance as the SDK sends it.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceJson {
    /// Explicit id.
    pub instance_id: Option<String>,
    /// Address.
    pub ip: Option<String>,
    /// Port.
    pub port: Option<i64>,
    /// Weight.
    pub weight: Option<f64>,
    /// Health.
    pub healthy: Option<bool>,
    /// Enabled.
    pub enabled: Option<bool>,
    /// Ephemeral.
    pub ephemeral: Option<bool>,
    /// Cluster.
    pub cluster_name: Option<String>,
    /// Service name (ignored: the request's names the service).
    pub service_name: Option<String>,
    /// Metadata map.
    pub metadata: Option<serde_json::Value>,
}

impl InstanceJson {
    /// Converts into an engine spec.
    pub fn into_spec(self) -> Result<InstanceSpec, InvalidInput> {
        let metadata = match &self.metadata {
            Some(v) => Metadata::from_json(v)?,
            None => Metadata::default(),
        };
        Ok(InstanceSpec {
            ip: self.ip.unwrap_or_default(),
            port: self
                .port
                .ok_or_else(|| InvalidInput("instance port is required".into()))?,
            weight: self.weight,
            healthy: self.healthy,
            enabled: self.enabled,
            ephemeral: self.ephemeral,
            cluster: self.cluster_name,
            metadata,
            instance_id: self.instance_id,
        })
    }
}

/// Fields every naming request carries.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct NamingRequest {
    /// Namespace (tenant).
    pub namespace: Option<String>,
    /// Service name.
    pub service_name: Option<String>,
    /// Group.
    pub group_name: Option<String>,
    /// `registerInstance`, `deregisterInstance`, `batchRegisterInstance`, ...
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// InstanceRequest.
    pub instance: Option<InstanceJson>,
    /// BatchInstanceRequest.
    pub instances: Option<Vec<InstanceJson>>,
    /// ServiceQueryRequest cluster filter.
    pub cluster: Option<String>,
    /// SubscribeServiceRequest cluster filter.
    pub clusters: Option<String>,
    /// ServiceQueryRequest (nacos-sdk-python spells it `healthOnly`).
    #[serde(alias = "healthOnly")]
    pub healthy_only: Option<bool>,
    /// SubscribeServiceRequest: true = subscribe, false = unsubscribe.
    pub subscribe: Option<bool>,
    /// ServiceListRequest page (1-based).
    pub page_no: Option<i64>,
    /// ServiceListRequest page size.
    pub page_size: Option<i64>,
    /// Request id (server-to-client requests and their acks).
    pub request_id: Option<String>,
}

impl NamingRequest {
    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<NamingRequest, InvalidInput> {
        serde_json::from_slice(body).map_err(|e| InvalidInput(format!("invalid request body: {e}")))
    }

    /// The service key named by the request, with Nacos defaults.
    pub fn service_key(&self) -> Result<ServiceKey, InvalidInput> {
        ServiceKey::new(
            self.namespace.as_deref().unwrap_or(""),
            self.group_name.as_deref().unwrap_or(""),
            self.service_name.as_deref().unwrap_or(""),
        )
    }

    /// Parses a body that must name a service (every naming request but `ServiceListRequest`).
    pub fn parse_keyed(body: &[u8]) -> Result<(NamingRequest, ServiceKey), InvalidInput> {
        let req = NamingRequest::parse(body)?;
        let key = req.service_key()?;
        Ok((req, key))
    }

    /// The page a `ServiceListRequest` asks for: namespace (`public`), group (`DEFAULT_GROUP`),
    /// 1-based page number and a page size clamped to `1..=10000` (default 10).
    pub fn service_page(&self) -> (&str, &str, usize, usize) {
        let namespace = self
            .namespace
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("public");
        let group = self
            .group_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("DEFAULT_GROUP");
        let page_no = self.page_no.unwrap_or(1).max(1) as usize;
        let page_size = self.page_size.unwrap_or(10).clamp(1, 10_000) as usize;
        (namespace, group, page_no, page_size)
    }
}

/// `InstanceRequest` and `BatchInstanceRequest` carry ephemeral instances only (Nacos: a
/// persistent one goes through `PersistentInstanceRequest`, batches refuse it).
fn ephemeral_only(instance: &engine::Instance) -> Result<(), String> {
    if instance.ephemeral {
        Ok(())
    } else {
        Err(format!(
            "instance {}:{} is not ephemeral: register persistent instances with PersistentInstanceRequest (batches take ephemeral instances only)",
            instance.host, instance.port
        ))
    }
}

/// The engine operation of an `InstanceRequest` or `BatchInstanceRequest` (`kind`) whose body
/// is `req` naming `key`: register, deregister or batch register, by `req.kind`. Cluster names
/// are interned by `interner`. The error is the message of an `INVALID_PARAM` answer.
pub fn instance_op(
    kind: &str,
    req: NamingRequest,
    key: ServiceKey,
    interner: &mut Interner,
) -> Result<ClientOp, String> {
    let op_type = req.kind.as_deref().unwrap_or_default();
    match (kind, op_type) {
        ("InstanceRequest", "registerInstance") => {
            let spec = req
                .instance
                .ok_or("instance is required")?
                .into_spec()
                .map_err(|e| e.0)?;
            let instance = spec.build(interner).map_err(|e| e.0)?;
            ephemeral_only(&instance)?;
            Ok(ClientOp::Register {
                service: key,
                instance,
            })
        }
        ("InstanceRequest", "deregisterInstance") => {
            let spec = req
                .instance
                .ok_or("instance is required")?
                .into_spec()
                .map_err(|e| e.0)?;
            let host = Host::parse(&spec.ip).map_err(|e| e.0)?;
            let port = u16::try_from(spec.port)
                .map_err(|_| format!("port {} is out of range", spec.port))?;
            let cluster = interner.intern(
                spec.cluster
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("DEFAULT"),
            );
            Ok(ClientOp::Deregister {
                service: key,
                host,
                port,
                cluster,
            })
        }
        ("BatchInstanceRequest", "batchRegisterInstance") => {
            let list = req.instances.ok_or("instances is required")?;
            let mut instances = Vec::with_capacity(list.len());
            for i in list {
                let instance = i
                    .into_spec()
                    .and_then(|s| s.build(interner))
                    .map_err(|e| e.0)?;
                ephemeral_only(&instance)?;
                instances.push(instance);
            }
            Ok(ClientOp::BatchRegister {
                service: key,
                instances,
            })
        }
        (_, other) => Err(format!("unknown {kind} type {other:?}")),
    }
}

/// `ConnectionSetupRequest`.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionSetup {
    /// e.g. `Nacos-Java-Client:v2.5.1`.
    pub client_version: Option<String>,
    /// Namespace of the client.
    pub tenant: Option<String>,
    /// Labels; the naming SDK sends `module=naming`.
    pub labels: HashMap<String, String>,
    /// Present when the client negotiates abilities (then it waits for SetupAckRequest).
    pub ability_table: Option<serde_json::Value>,
}

/// A server-to-client response coming back on the stream (`NotifySubscriberResponse`,
/// `ClientDetectionResponse`, ...).
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct StreamAck {
    /// Echo of the request id.
    pub request_id: Option<String>,
    /// 200 on success.
    pub result_code: Option<i32>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn instance_request_parses_with_defaults_and_ignores_unknown_fields() {
        let body = br#"{"headers":{},"namespace":"public","serviceName":"demo","groupName":"DEFAULT_GROUP",
            "type":"registerInstance","instance":{"ip":"10.0.0.9","port":8080,"weight":2.0,"clusterName":"c1",
            "metadata":{"v":"1","n":2},"instanceHeartBeatInterval":5000,"surprise":[1]},"module":"naming"}"#;
        let r = NamingRequest::parse(body).unwrap();
        assert_eq!(r.kind.as_deref(), Some("registerInstance"));
        let key = r.service_key().unwrap();
        assert_eq!(key.name(), "demo");
        let spec = r.instance.unwrap().into_spec().unwrap();
        assert_eq!(spec.port, 8080);
        assert_eq!(spec.cluster.as_deref(), Some("c1"));
        assert_eq!(spec.metadata.json(), r#"{"n":"2","v":"1"}"#);
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &b"{"[..],
            b"[]",
            b"{\"instance\":5}",
            b"\xff\xfe",
            b"{\"port\":\"x\"}",
        ] {
            let _ = NamingRequest::parse(body).map(|r| r.instance.map(|i| i.into_spec()));
        }
        assert!(NamingRequest::parse(b"{").is_err());
        let no_port = NamingRequest::parse(br#"{"instance":{"ip":"1.2.3.4"}}"#).unwrap();
        assert!(no_port.instance.unwrap().into_spec().is_err());
    }
}
