//! `/nacos/v1/console/namespaces`: Nacos's namespace list (`NamespaceController`):
//! `GET` → `{code:200, message:null, data:[{namespace, namespaceShowName, namespaceDesc,
//! quota, configCount, type}]}`; `public` first (`namespace` `""`, type 0, as Nacos 2.x).
//! Every namespace that holds a service is listed too (type 2), so services registered in a
//! namespace nobody created are reachable from the console.

use std::collections::BTreeSet;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use wire::http_params::Params;

use super::{json as json_resp, text, Resp};
use crate::core::with_core;

/// Nacos's default quota per namespace (configs).
const QUOTA: u32 = 200;

/// Routes one namespaces request.
pub async fn route(method: &Method, p: &Params<'_>) -> Resp {
    match *method {
        Method::GET => list(p),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} /nacos/v1/console/namespaces is not supported"),
        ),
    }
}

fn entry(id: &str, show: &str, desc: &str, kind: u8) -> Value {
    json!({
        "namespace": id,
        "namespaceShowName": show,
        "namespaceDesc": desc,
        "quota": QUOTA,
        "configCount": 0,
        "type": kind,
    })
}

fn list(_p: &Params<'_>) -> Resp {
    let index = with_core(|c| c.shared.index.clone());
    let mut seen = BTreeSet::new();
    index.for_each(|v| {
        if v.key.namespace() != "public" && !seen.contains(v.key.namespace()) {
            seen.insert(v.key.namespace().to_owned());
        }
    });
    let mut data = vec![entry("", "public", "Public Namespace", 0)];
    data.extend(seen.iter().map(|ns| entry(ns, ns, "", 2)));
    json_resp(
        StatusCode::OK,
        json!({"code": 200, "message": null, "data": data}).to_string(),
    )
}
