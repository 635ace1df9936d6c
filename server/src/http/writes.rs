//! The OpenAPI's writes: instances (ephemeral ones to the owner of their heartbeat client,
//! persistent ones through Raft), service definitions and cluster definitions (through Raft).
//!
//! Which kind an instance write is: its `ephemeral` parameter (Nacos's default: true); a
//! deregistration or update without it goes to the kind the service holds here, so a
//! persistent instance is not "deregistered" as an unknown ephemeral one (Nacos answers `ok`
//! to that and keeps the instance).

use engine::health::{parse_health_checker, CheckSpec};
use engine::model::{ClientId, ServiceKey};
use engine::shard::ClientOp;
use engine::store::naming::{ClusterDefinition, HealthChecker, ServiceChange};
use engine::view::InstanceKind;
use http::StatusCode;
use wire::http_params::{self, Api, Params};

use super::{bad, ok_answer, submit, Failure, Resp};
use crate::core::with_core;
use crate::cp::{naming as cp, CpError};

impl From<CpError> for Failure {
    fn from(e: CpError) -> Failure {
        match e {
            CpError::Unavailable(m) => Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: 503,
                message: m,
            },
            // Nacos answers its runtime refusals (the service-kind rule) with the
            // exception's own text as a plain body: "errCode: 400, errMsg: ... ".
            CpError::KindRule(message) => Failure {
                status: StatusCode::BAD_REQUEST,
                code: 400,
                message: format!("errCode: 400, errMsg: {message} "),
            },
            CpError::Refused { code, message } => Failure {
                status: StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
                code: if code == 404 { 20004 } else { i32::from(code) },
                message,
            },
        }
    }
}

/// Whether an instance write with this `ephemeral` parameter is persistent.
fn persistent(p: &Params<'_>, key: &ServiceKey) -> Result<bool, Failure> {
    Ok(match p.bool(&["ephemeral"])? {
        Some(ephemeral) => !ephemeral,
        None => cp::kind_of(key) == Some(InstanceKind::Persistent),
    })
}

pub(super) async fn register(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let key = p.service_key()?;
    let spec = p.instance_spec()?;
    let instance = with_core(|c| spec.build(&mut c.interner)).map_err(|e| bad(e.0))?;
    if !instance.ephemeral {
        cp::register(key, &instance).await?;
        return Ok(ok_answer(api));
    }
    cp::check_kind(&key, InstanceKind::Ephemeral)?;
    let client = ClientId::for_address(&instance.host, instance.port);
    submit(
        client,
        ClientOp::Register {
            service: key,
            instance,
        },
    )
    .await?;
    Ok(ok_answer(api))
}

/// PUT: replaces the fields of an existing instance with the request's (Nacos builds the
/// instance from the parameters, defaults included); an unknown instance is an error.
pub(super) async fn update(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let (key, host, port, cluster) = p.address()?;
    let patch = p.replacement()?;
    if persistent(p, &key)? {
        cp::update(key, &host, port, patch).await?;
        return Ok(ok_answer(api));
    }
    let op = ClientOp::Update {
        service: key,
        host: host.clone(),
        port,
        cluster,
        patch,
    };
    submit(ClientId::for_address(&host, port), op).await?;
    Ok(ok_answer(api))
}

pub(super) async fn patch(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let (key, host, port, cluster) = p.address()?;
    let patch = p.patch()?;
    if persistent(p, &key)? {
        cp::update(key, &host, port, patch).await?;
        return Ok(ok_answer(api));
    }
    let client = ClientId::for_address(&host, port);
    submit(
        client,
        ClientOp::Update {
            service: key,
            host,
            port,
            cluster,
            patch,
        },
    )
    .await?;
    Ok(ok_answer(api))
}

pub(super) async fn deregister(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let (key, host, port, cluster) = p.address()?;
    if persistent(p, &key)? {
        cp::deregister(key, &host, port).await?;
        return Ok(ok_answer(api));
    }
    let client = ClientId::for_address(&host, port);
    submit(
        client,
        ClientOp::Deregister {
            service: key,
            host,
            port,
            cluster,
        },
    )
    .await?;
    Ok(ok_answer(api))
}

/// POST (`must_exist: Some(false)`) and PUT (`Some(true)`) of `/service`: durable through
/// Raft, applied to the views on every node.
pub(super) async fn configure_service(
    api: Api,
    p: &Params<'_>,
    must_exist: Option<bool>,
) -> Result<Resp, Failure> {
    let http_params::ServiceConfig {
        key,
        protect_threshold,
        metadata,
    } = p.service_config()?;
    if let Some(t) = protect_threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(bad(format!("protectThreshold {t} must be within 0..=1")));
        }
    }
    let selector = match p.get("selector") {
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(v) if v.is_object() => Some(v.to_string()),
            _ => return Err(bad(format!("selector {raw:?} is not a JSON object"))),
        },
        None => None,
    };
    let change = ServiceChange {
        protect_threshold,
        metadata: metadata.map(|m| m.to_map()),
        selector,
    };
    cp::define_service(key, change, must_exist).await?;
    Ok(ok_answer(api))
}

pub(super) async fn delete_service(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let key = p.service_key()?;
    cp::delete_service(key).await?;
    Ok(ok_answer(api))
}

/// `PUT /nacos/v1/ns/cluster`: a cluster's health checker, check port and metadata.
pub(super) async fn update_cluster(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let key = p.service_key()?;
    let cluster = p.cluster().to_owned();
    engine::model::validate_cluster_name(&cluster).map_err(|e| bad(e.0))?;
    let check_port: u16 = p
        .number::<u16>("checkPort")?
        .ok_or_else(|| bad("Required parameter 'checkPort' is not present"))?;
    let use_instance_port = p
        .bool(&["useInstancePort4Check"])?
        .ok_or_else(|| bad("Required parameter 'useInstancePort4Check' is not present"))?;
    let checker = p.required("healthChecker").map_err(Failure::from)?;
    let spec = parse_health_checker(checker).map_err(|e| bad(e.to_string()))?;
    let metadata = p.metadata()?.map(|m| m.to_map()).unwrap_or_default();
    let definition = ClusterDefinition {
        health_checker: HealthChecker::from(&spec),
        check_port,
        use_instance_port,
        metadata,
    };
    cp::define_cluster(key, &cluster, definition).await?;
    Ok(ok_answer(api))
}

/// A stored checker as Nacos's `healthChecker` JSON.
pub(crate) fn checker_json(checker: &HealthChecker) -> String {
    CheckSpec::from(checker).to_json().to_string()
}
