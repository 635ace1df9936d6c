//! `/nacos/v1/console/namespaces` as Nacos's `NamespaceController` answers it:
//! - `GET` → `{code:200, message:null, data:[{namespace, namespaceShowName, namespaceDesc,
//!   quota, configCount, type}]}`: `public` first (`namespace` `""`, type 0, as Nacos 2.x),
//!   then the created ones (type 2), then any other namespace that holds a service (type 2,
//!   Nacelle's `created: false`), so services registered in a namespace nobody created are
//!   reachable from the console. Nacelle adds `serviceCount`.
//! - `POST` (`customNamespaceId` — generated when absent —, `namespaceName`,
//!   `namespaceDesc`), `PUT` (`namespace`, `namespaceShowName`, `namespaceDesc`), `DELETE`
//!   (`namespaceId`) → `true`; durable through the Raft store (`store::namespaces`), applied on
//!   every node. Refusals: 400 (bad id or name), 404 (update of an unknown one), 409 (exists).

use std::collections::BTreeMap;

use engine::store::namespaces::NamespaceRecord;
use engine::store::{NamespaceCommand, StoreCommand};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use wire::http_params::Params;

use super::{json as json_resp, text, Resp};
use crate::core::with_core;

/// Nacos's default quota per namespace (configs).
const QUOTA: u32 = 200;

/// Routes one namespaces request.
pub async fn route(method: &Method, p: &Params<'_>) -> Resp {
    let cmd = match *method {
        Method::GET => return list(p),
        Method::POST => {
            let id = match p.get("customNamespaceId") {
                Some(id) => id.trim().to_owned(),
                None => generated_id(),
            };
            NamespaceCommand::Create {
                id,
                record: record(p, "namespaceName"),
            }
        }
        Method::PUT => NamespaceCommand::Update {
            id: p.get("namespace").unwrap_or("").to_owned(),
            record: record(p, "namespaceShowName"),
        },
        Method::DELETE => NamespaceCommand::Delete {
            id: p.get("namespaceId").unwrap_or("").to_owned(),
        },
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} /nacos/v1/console/namespaces is not supported"),
            )
        }
    };
    let id = match &cmd {
        NamespaceCommand::Create { id, .. }
        | NamespaceCommand::Update { id, .. }
        | NamespaceCommand::Delete { id } => id.clone(),
    };
    let record = match &cmd {
        NamespaceCommand::Create { record, .. } | NamespaceCommand::Update { record, .. } => {
            Some(record)
        }
        NamespaceCommand::Delete { .. } => None,
    };
    if let Some(why) = engine::store::namespaces::invalid(&id, record) {
        return text(StatusCode::BAD_REQUEST, why);
    }
    let cp = with_core(|c| c.shared.cp.clone());
    match cp.write_here(StoreCommand::Namespace(cmd)).await {
        Ok(_) => json_resp(StatusCode::OK, "true"),
        Err(e) => {
            let f = super::Failure::from(e);
            text(f.status, f.message)
        }
    }
}

fn record(p: &Params<'_>, name_param: &str) -> NamespaceRecord {
    NamespaceRecord {
        name: p.get(name_param).unwrap_or("").trim().to_owned(),
        desc: p.get("namespaceDesc").unwrap_or("").to_owned(),
    }
}

/// An id for a namespace created without one (Nacos makes a UUID): time and a per-process
/// counter, unique enough for ids a person created one by one.
fn generated_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = u64::from(std::process::id());
    format!("{:016x}-{:04x}", nanos ^ (pid << 48), seq & 0xffff)
}

fn entry(id: &str, show: &str, desc: &str, kind: u8, services: usize, created: bool) -> Value {
    json!({
        "namespace": id,
        "namespaceShowName": show,
        "namespaceDesc": desc,
        "quota": QUOTA,
        "configCount": 0,
        "type": kind,
        "serviceCount": services,
        "created": created,
    })
}

fn list(_p: &Params<'_>) -> Resp {
    let index = with_core(|c| c.shared.index.clone());
    let created = with_core(|c| c.namespaces.clone());
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut last: Option<(String, usize)> = None;
    index.for_each_key(|k| {
        // Keys of one namespace mostly come in runs: count without a lookup per key.
        match &mut last {
            Some((ns, n)) if ns == k.namespace() => *n += 1,
            _ => {
                if let Some((ns, n)) = last.take() {
                    *counts.entry(ns).or_default() += n;
                }
                last = Some((k.namespace().to_owned(), 1));
            }
        }
    });
    if let Some((ns, n)) = last {
        *counts.entry(ns).or_default() += n;
    }
    let count = |id: &str| counts.get(id).copied().unwrap_or(0);
    let mut data = vec![entry(
        "",
        "public",
        "Public Namespace",
        0,
        count("public"),
        true,
    )];
    data.extend(
        created
            .iter()
            .map(|(id, r)| entry(id, &r.name, &r.desc, 2, count(id), true)),
    );
    data.extend(
        counts
            .iter()
            .filter(|(id, _)| id.as_str() != "public" && !created.contains_key(id.as_str()))
            .map(|(id, n)| entry(id, id, "", 2, *n, false)),
    );
    json_resp(
        StatusCode::OK,
        json!({"code": 200, "message": null, "data": data}).to_string(),
    )
}
