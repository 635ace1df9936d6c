//! `ServiceInfo` JSON (Nacos `api/.../naming/pojo/ServiceInfo.java`), written straight from a
//! published view. The unfiltered answers are cached inside the view, so a hot query costs one
//! copy of bytes; filtered ones (a cluster list) are written per request.

use engine::model::{Host, Instance, ServiceKey, PRESERVED_INSTANCE_ID_GENERATOR};
use engine::view::{Selection, ServiceView};

use crate::payload::{push_int, push_str, push_str_contents};

/// How the service is named in `ServiceInfo.name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameStyle {
    /// Bare name (gRPC answers and pushes).
    Bare,
    /// `group@@name` (HTTP answers).
    Grouped,
}

/// `cacheMillis` Nacos sends (SwitchDomain.defaultPushCacheMillis).
pub const CACHE_MILLIS: u64 = 10_000;

/// What a query asks for.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    /// Comma-separated cluster names; empty = all.
    pub clusters: &'a str,
    /// Only healthy instances.
    pub healthy_only: bool,
}

impl Query<'_> {
    fn cache_slot(&self, style: NameStyle) -> Option<usize> {
        if !self.clusters.trim().is_empty() {
            return None;
        }
        Some((style as usize) * 2 + usize::from(self.healthy_only))
    }
}

/// Calls `f` with the `ServiceInfo` JSON of `view` for `query` (an empty service when `view` is
/// `None`). `now_unix_ms` is the `lastRefTime` of an empty answer.
pub fn with_service_info<R>(
    key: &ServiceKey,
    view: Option<&ServiceView>,
    style: NameStyle,
    query: Query<'_>,
    now_unix_ms: u64,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    match view {
        Some(view) => match query.cache_slot(style) {
            Some(slot) => view.cached(
                slot,
                |v| encode(&v.key, Some(v), style, query, now_unix_ms),
                f,
            ),
            None => f(&encode(key, Some(view), style, query, now_unix_ms)),
        },
        None => f(&encode(key, None, style, query, now_unix_ms)),
    }
}

/// Writes the `ServiceInfo` JSON.
pub fn encode(
    key: &ServiceKey,
    view: Option<&ServiceView>,
    style: NameStyle,
    query: Query<'_>,
    now_unix_ms: u64,
) -> Vec<u8> {
    let selection = view.map(|v| v.select_query(query.clusters, query.healthy_only));
    let count = selection.as_ref().map_or(0, |s| s.instances.len());
    let mut out = Vec::with_capacity(256 + count * 360);
    out.extend_from_slice(b"{\"name\":");
    let grouped = key.grouped_name();
    match style {
        NameStyle::Bare => push_str(&mut out, key.name()),
        NameStyle::Grouped => push_str(&mut out, &grouped),
    }
    out.extend_from_slice(b",\"groupName\":");
    push_str(&mut out, key.group());
    out.extend_from_slice(b",\"clusters\":");
    push_str(&mut out, query.clusters);
    out.extend_from_slice(b",\"cacheMillis\":");
    out.extend_from_slice(itoa_u64(CACHE_MILLIS).as_bytes());
    out.extend_from_slice(b",\"hosts\":[");
    let mut reach = false;
    if let Some(Selection {
        instances,
        reach_protection,
    }) = &selection
    {
        reach = *reach_protection;
        for (n, inst) in instances.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            write_instance(&mut out, &grouped, inst, *reach_protection || inst.healthy);
        }
    }
    out.extend_from_slice(b"],\"lastRefTime\":");
    let last_ref = view.map_or(now_unix_ms, |v| v.last_ref_ms);
    out.extend_from_slice(itoa_u64(last_ref).as_bytes());
    out.extend_from_slice(b",\"checksum\":\"\",\"allIPs\":false,\"reachProtectionThreshold\":");
    out.extend_from_slice(if reach { b"true" } else { b"false" });
    out.extend_from_slice(b",\"valid\":true}");
    out
}

fn itoa_u64(n: u64) -> String {
    n.to_string()
}

/// Writes an address without allocating (escaped, no quotes).
fn write_host(out: &mut Vec<u8>, host: &Host) {
    match host {
        Host::V4(a) => {
            for (i, octet) in a.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_int(out, *octet);
            }
        }
        Host::Name(n) => push_str_contents(out, n),
    }
}

/// Writes one instance as Nacos's `Instance` JSON.
pub fn write_instance(out: &mut Vec<u8>, grouped_name: &str, inst: &Instance, healthy: bool) {
    out.extend_from_slice(b"{\"instanceId\":");
    match inst.instance_id() {
        Some(id) => push_str(out, id),
        None => {
            // Nacos's default id `ip#port#cluster#group@@service`, written in place.
            out.push(b'"');
            write_host(out, &inst.host);
            out.push(b'#');
            push_int(out, inst.port);
            out.push(b'#');
            push_str_contents(out, &inst.cluster);
            out.push(b'#');
            push_str_contents(out, grouped_name);
            out.push(b'"');
        }
    }
    out.extend_from_slice(b",\"ip\":\"");
    write_host(out, &inst.host);
    out.extend_from_slice(b"\",\"port\":");
    push_int(out, inst.port);
    out.extend_from_slice(b",\"weight\":");
    // serde_json writes 1.0 as `1.0`, as Jackson does.
    let _ = serde_json::to_writer(&mut *out, &inst.weight);
    out.extend_from_slice(if healthy {
        b",\"healthy\":true"
    } else {
        b",\"healthy\":false"
    });
    out.extend_from_slice(if inst.enabled {
        b",\"enabled\":true"
    } else {
        b",\"enabled\":false"
    });
    out.extend_from_slice(if inst.ephemeral {
        b",\"ephemeral\":true,\"clusterName\":"
    } else {
        b",\"ephemeral\":false,\"clusterName\":"
    });
    push_str(out, &inst.cluster);
    out.extend_from_slice(b",\"serviceName\":");
    push_str(out, grouped_name);
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(inst.metadata().json().as_bytes());
    let timing = inst.timing();
    out.extend_from_slice(b",\"instanceHeartBeatInterval\":");
    push_int(out, timing.interval_ms);
    out.extend_from_slice(b",\"instanceHeartBeatTimeOut\":");
    push_int(out, timing.timeout_ms);
    out.extend_from_slice(b",\"ipDeleteTimeout\":");
    push_int(out, timing.delete_ms);
    out.extend_from_slice(b",\"instanceIdGenerator\":");
    let generator = if inst
        .metadata()
        .json()
        .contains(PRESERVED_INSTANCE_ID_GENERATOR)
    {
        inst.metadata().get(PRESERVED_INSTANCE_ID_GENERATOR)
    } else {
        None
    };
    push_str(out, generator.as_deref().unwrap_or("simple"));
    out.push(b'}');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use engine::model::{InstanceSpec, Interner, Metadata};
    use std::sync::Arc;

    fn view(healthy: &[bool]) -> ServiceView {
        let key = ServiceKey::new("", "", "demo").unwrap();
        let mut interner = Interner::default();
        let publishes = healthy
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let spec = InstanceSpec {
                    ip: format!("10.0.0.{n}"),
                    port: 8080,
                    healthy: Some(*h),
                    metadata: Metadata::from_pairs([("v", "\"q\"")]).unwrap(),
                    ..Default::default()
                };
                Arc::from(vec![spec.build(&mut interner).unwrap()])
            })
            .collect();
        ServiceView::new(key, 1, 42, 0.0, Metadata::default(), publishes, None)
    }

    fn parse(
        v: &ServiceView,
        style: NameStyle,
        clusters: &str,
        healthy_only: bool,
    ) -> serde_json::Value {
        let q = Query {
            clusters,
            healthy_only,
        };
        with_service_info(&v.key, Some(v), style, q, 0, |b| {
            serde_json::from_slice(b).unwrap()
        })
    }

    #[test]
    fn service_info_has_the_nacos_fields() {
        let v = view(&[true, false]);
        let j = parse(&v, NameStyle::Bare, "", false);
        assert_eq!(j["name"], "demo");
        assert_eq!(j["groupName"], "DEFAULT_GROUP");
        assert_eq!(j["cacheMillis"], 10000);
        assert_eq!(j["lastRefTime"], 42);
        assert_eq!(j["valid"], true);
        let hosts = j["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            hosts[0]["instanceId"],
            "10.0.0.0#8080#DEFAULT#DEFAULT_GROUP@@demo"
        );
        assert_eq!(hosts[0]["serviceName"], "DEFAULT_GROUP@@demo");
        assert_eq!(hosts[0]["metadata"]["v"], "\"q\"");
        assert_eq!(hosts[1]["healthy"], false);
        assert_eq!(
            parse(&v, NameStyle::Grouped, "", false)["name"],
            "DEFAULT_GROUP@@demo"
        );
    }

    #[test]
    fn healthy_only_and_cluster_filters_apply() {
        let v = view(&[true, false]);
        assert_eq!(
            parse(&v, NameStyle::Bare, "", true)["hosts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            parse(&v, NameStyle::Bare, "other", false)["hosts"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            parse(&v, NameStyle::Bare, "DEFAULT,x", false)["hosts"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn all_unhealthy_trips_the_default_protect_threshold() {
        let v = view(&[false, false]);
        let j = parse(&v, NameStyle::Bare, "", false);
        assert_eq!(j["reachProtectionThreshold"], true);
        assert!(j["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["healthy"] == true));
    }

    #[test]
    fn an_unknown_service_is_an_empty_valid_answer() {
        let key = ServiceKey::new("", "g", "none").unwrap();
        let q = Query {
            clusters: "",
            healthy_only: false,
        };
        let j: serde_json::Value = with_service_info(&key, None, NameStyle::Grouped, q, 7, |b| {
            serde_json::from_slice(b).unwrap()
        });
        assert_eq!(j["name"], "g@@none");
        assert_eq!(j["hosts"].as_array().unwrap().len(), 0);
        assert_eq!(j["lastRefTime"], 7);
    }
}
