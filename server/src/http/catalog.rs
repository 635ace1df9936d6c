//! The console's reads, under Nacos's names and shapes (`naming/controllers/CatalogController`
//! in Nacos 2.x): `GET /nacos/v1/ns/catalog/services`, `/catalog/service` and
//! `/catalog/instances`. All of them read the lock-free published views of the core that
//! took the request, like `/instance/list`; every answer is bounded by a page size cap.
//!
//! Beyond Nacos: each service in the list says `ephemeral` (the kind it holds), and
//! `/catalog/instances` takes `metadataFilter=key=value[,key=value]` (Nacos #3917 asks for it;
//! Nacos's console filters the current page in the browser) and `healthyOnly`.

use std::fmt::Write as _;

use engine::model::{Instance, ServiceKey};
use engine::view::{InstanceKind, ServiceView};
use http::StatusCode;
use wire::http_params::{self, Params};
use wire::payload::json_str;

use super::{json, Failure, Resp};
use crate::core::with_core;

/// Largest page of `/catalog/services` and `/catalog/instances`.
pub const MAX_PAGE: usize = 1000;

fn page_of(p: &Params<'_>, default_size: usize) -> Result<(usize, usize), Failure> {
    let no: i64 = p.number("pageNo")?.unwrap_or(1);
    let size: i64 = p.number("pageSize")?.unwrap_or(default_size as i64);
    if no < 1 {
        return Err(super::bad(format!("pageNo must be >= 1, got {no}")));
    }
    if !(1..=MAX_PAGE as i64).contains(&size) {
        return Err(super::bad(format!(
            "pageSize must be within 1..={MAX_PAGE}, got {size}"
        )));
    }
    Ok((no as usize, size as usize))
}

/// The `[start, end)` of page `no` of `size` among `count`.
fn bounds(no: usize, size: usize, count: usize) -> (usize, usize) {
    let start = (no - 1).saturating_mul(size).min(count);
    (start, start.saturating_add(size).min(count))
}

/// `GET /nacos/v1/ns/catalog/services`: `pageNo`, `pageSize`, `serviceNameParam`,
/// `groupNameParam` (substrings, as Nacos's `.*x.*`), `namespaceId`, `hasIpCount` (hide
/// services without instances) → `{count, serviceList:[{name, groupName, clusterCount,
/// ipCount, healthyInstanceCount, triggerFlag, ephemeral}]}`, sorted by group then name (Nacos
/// leaves it unsorted, which makes paging unstable).
///
/// Cost: one pass over the namespace's services in the directory's shared sorted order
/// (sorted once per change of the directory, not per request), no allocation beyond the page,
/// then the counts of the page's services only.
pub fn services(p: &Params<'_>) -> Result<Resp, Failure> {
    let (no, size) = page_of(p, 10)?;
    let namespace = p.any(&["namespaceId", "tenant"]).unwrap_or("public");
    let name_part = p.get("serviceNameParam").unwrap_or("");
    let group_part = p.get("groupNameParam").unwrap_or("");
    let has_ip = p.bool(&["hasIpCount"])?.unwrap_or(false);
    let index = with_core(|c| c.shared.index.clone());
    let start = (no - 1).saturating_mul(size);
    let end = start.saturating_add(size);
    let (count, page) = index.with_sorted_services(namespace, |keys| {
        let mut count = 0usize;
        let mut page: Vec<ServiceKey> = Vec::new();
        for k in keys {
            if !(k.name().contains(name_part) && k.group().contains(group_part)) {
                continue;
            }
            if has_ip && !index.read(k, |v| v.is_some_and(|v| v.instance_count > 0)) {
                continue;
            }
            if (start..end).contains(&count) {
                page.push(k.clone());
            }
            count += 1;
        }
        (count, page)
    });
    let mut out = String::with_capacity(64 + page.len() * 160);
    let _ = write!(out, "{{\"count\":{count},\"serviceList\":[");
    for (i, key) in page.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        index.read(key, |view| service_entry(&mut out, key, view));
    }
    out.push_str("]}");
    Ok(json(StatusCode::OK, out))
}

fn service_entry(out: &mut String, key: &ServiceKey, view: Option<&ServiceView>) {
    let (clusters, ips, healthy, ephemeral) = match view {
        Some(v) => {
            let mut clusters: Vec<&str> = v.instances().map(|i| &*i.cluster).collect();
            clusters.sort_unstable();
            clusters.dedup();
            (
                clusters.len(),
                v.instance_count,
                v.healthy_count(),
                v.kind() != Some(InstanceKind::Persistent),
            )
        }
        None => (0, 0, 0, true),
    };
    let _ = write!(
        out,
        "{{\"name\":{},\"groupName\":{},\"clusterCount\":{clusters},\"ipCount\":{ips},\"healthyInstanceCount\":{healthy},\"triggerFlag\":\"{}\",\"ephemeral\":{ephemeral}}}",
        json_str(key.name()),
        json_str(key.group()),
        // Nacos: whether the healthy share is at or below the protect threshold.
        view.is_some_and(|v| ips > 0 && (healthy as f32 / ips as f32) <= v.protect_threshold)
    );
}

/// `GET /nacos/v1/ns/catalog/service`: `serviceName`, `groupName`, `namespaceId` →
/// `{service:{name, groupName, protectThreshold, selector, metadata, ephemeral}, clusters:[{name,
/// healthChecker, metadata, useIPPort4Check, defaultPort, defaultCheckPort, serviceName}]}`.
pub fn service(p: &Params<'_>) -> Result<Resp, Failure> {
    let key = p.service_key()?;
    let index = with_core(|c| c.shared.index.clone());
    let defined = with_core(|c| c.cluster_defs_of(&key));
    let body = index.read(&key, |view| {
        let view = view?;
        let mut names: Vec<&str> = view.instances().map(|i| &*i.cluster).collect();
        names.extend(defined.iter().map(|(name, _)| &**name));
        names.sort_unstable();
        names.dedup();
        let clusters: Vec<String> = names
            .iter()
            .map(|c| {
                let def = defined.iter().find(|(n, _)| &**n == *c).map(|(_, d)| d);
                let checker = def.map_or_else(
                    || r#"{"type":"TCP"}"#.to_owned(),
                    |d| super::writes::checker_json(&d.health_checker),
                );
                let metadata = def.map_or_else(
                    || "{}".to_owned(),
                    |d| serde_json::to_string(&d.metadata).unwrap_or_else(|_| "{}".into()),
                );
                let (use_port, check_port) =
                    def.map_or((true, 80), |d| (d.use_instance_port, d.check_port));
                format!(
                    "{{\"name\":{},\"healthChecker\":{checker},\"metadata\":{metadata},\"useIPPort4Check\":{use_port},\"defaultPort\":80,\"defaultCheckPort\":{check_port},\"serviceName\":{}}}",
                    json_str(c),
                    json_str(key.name())
                )
            })
            .collect();
        Some(format!(
            "{{\"service\":{{\"name\":{},\"groupName\":{},\"protectThreshold\":{},\"selector\":{{\"type\":\"none\"}},\"metadata\":{},\"ephemeral\":{}}},\"clusters\":[{}]}}",
            json_str(key.name()),
            json_str(key.group()),
            view.protect_threshold,
            view.metadata.json(),
            view.kind() != Some(InstanceKind::Persistent),
            clusters.join(",")
        ))
    });
    let body = body.ok_or_else(|| Failure {
        status: StatusCode::NOT_FOUND,
        code: 21008,
        message: format!("service {} is not found!", key.grouped_name()),
    })?;
    Ok(json(StatusCode::OK, body))
}

/// `key=value` pairs an instance's metadata must all hold.
fn metadata_filter(p: &Params<'_>) -> Result<Vec<(String, String)>, Failure> {
    let Some(raw) = p.get("metadataFilter") else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| {
                    Failure::from(http_params::bad(format!(
                        "metadataFilter must be key=value[,key=value], got {raw:?}"
                    )))
                })
        })
        .collect()
}

/// `GET`/`POST /nacos/v1/ns/catalog/instances`: `serviceName`, `groupName`, `namespaceId`,
/// `clusterName` (absent: every cluster), `pageNo`, `pageSize`, and Nacelle's
/// `metadataFilter`, `healthyOnly` → `{list:[Instance], count}` (sorted by cluster, ip, port).
pub fn instances(p: &Params<'_>) -> Result<Resp, Failure> {
    let key = p.service_key()?;
    let (no, size) = page_of(p, 100)?;
    let cluster = p.any(&["clusterName", "cluster"]);
    let filter = metadata_filter(p)?;
    let healthy_only = p.bool(&["healthyOnly"])?.unwrap_or(false);
    let index = with_core(|c| c.shared.index.clone());
    let body = index.read(&key, |view| {
        let Some(view) = view else {
            return Err(Failure {
                status: StatusCode::NOT_FOUND,
                code: 21008,
                message: format!("service {} is not found!", key.grouped_name()),
            });
        };
        let mut list: Vec<&Instance> = view
            .instances()
            .filter(|i| cluster.is_none_or(|c| *i.cluster == *c))
            .filter(|i| !healthy_only || i.healthy)
            .filter(|i| {
                filter
                    .iter()
                    .all(|(k, v)| i.metadata().get(k).as_deref() == Some(v.as_str()))
            })
            .collect();
        list.sort_by_cached_key(|i| (i.cluster.clone(), i.host.to_string(), i.port));
        let count = list.len();
        let (start, end) = bounds(no, size, count);
        let mut out = String::with_capacity(64 + (end - start) * 400);
        out.push_str("{\"list\":[");
        for (n, i) in list[start..end].iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            instance_json(&mut out, &key, i);
        }
        let _ = write!(out, "],\"count\":{count}}}");
        Ok(out)
    })?;
    Ok(json(StatusCode::OK, body))
}

/// Nacos's `Instance` JSON.
fn instance_json(out: &mut String, key: &ServiceKey, i: &Instance) {
    let t = i.timing();
    let _ = write!(
        out,
        "{{\"instanceId\":{},\"ip\":{},\"port\":{},\"weight\":{},\"healthy\":{},\"enabled\":{},\"ephemeral\":{},\"clusterName\":{},\"serviceName\":{},\"metadata\":{},\"instanceHeartBeatInterval\":{},\"instanceHeartBeatTimeOut\":{},\"ipDeleteTimeout\":{},\"instanceIdGenerator\":\"simple\"}}",
        json_str(&i.id_for(key)),
        json_str(&i.host.to_string()),
        i.port,
        serde_json::to_string(&i.weight).unwrap_or_else(|_| "1.0".into()),
        i.healthy,
        i.enabled,
        i.ephemeral,
        json_str(&i.cluster),
        json_str(&key.grouped_name()),
        i.metadata().json(),
        t.interval_ms,
        t.timeout_ms,
        t.delete_ms,
    );
}

/// `GET /nacos/v1/ns/service/subscribers`: `serviceName`, `groupName`, `namespaceId`,
/// `pageNo`, `pageSize` (Nacos's default 1000) → `{subscribers:[{addrStr, agent, app, ip,
/// port, namespaceId, serviceName, cluster, type}], count}`, sorted by address. Nacelle's
/// `type` says `grpc` or `udp`. Subscribers of this node only: Nacos's `aggregation=true`
/// (ask every member) is not done.
pub async fn subscribers(p: &Params<'_>) -> Result<Resp, Failure> {
    let key = p.service_key()?;
    let (no, size) = page_of(p, MAX_PAGE)?;
    let mut subs = crate::core::query::subscribers(key.clone()).await;
    subs.sort_by(|a, b| (a.addr, a.kind).cmp(&(b.addr, b.kind)));
    let count = subs.len();
    let (start, end) = bounds(no, size, count);
    let list: Vec<serde_json::Value> = subs[start..end]
        .iter()
        .map(|s| {
            serde_json::json!({
                "addrStr": s.addr.to_string(),
                "agent": s.agent,
                "app": if s.app.is_empty() { "unknown" } else { s.app.as_str() },
                "ip": s.addr.ip().to_string(),
                "port": s.addr.port(),
                "namespaceId": key.namespace(),
                "serviceName": key.grouped_name(),
                "cluster": s.clusters,
                "type": s.kind,
            })
        })
        .collect();
    let body = serde_json::json!({"subscribers": list, "count": count});
    Ok(json(StatusCode::OK, body.to_string()))
}
