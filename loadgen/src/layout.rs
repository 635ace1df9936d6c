//! Targets, names, the instance plan and the JSON request bodies.

use std::fmt::Write as _;

use serde::Serialize;
use wire::payload::json_str;

/// One server: host and HTTP port (gRPC is HTTP port + offset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// HTTP port.
    pub http_port: u16,
}

impl Target {
    /// `host:port` for the HTTP API.
    pub fn http_addr(&self) -> String {
        join_host_port(&self.host, self.http_port)
    }

    /// `host:port` for gRPC, or an error if the offset overflows the port.
    pub fn grpc_addr(&self, offset: u16) -> Result<String, String> {
        let port = self
            .http_port
            .checked_add(offset)
            .ok_or_else(|| format!("{}: HTTP port + {offset} is not a port", self.http_addr()))?;
        Ok(join_host_port(&self.host, port))
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parses `host:port` or `[v6]:port`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("`{s}`: expected [v6-address]:port"))?;
        (h, p)
    } else {
        s.rsplit_once(':')
            .ok_or_else(|| format!("`{s}`: expected host:port"))?
    };
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return Err(format!("`{s}`: expected host:port"));
    }
    let http_port: u16 = port
        .parse()
        .map_err(|_| format!("`{s}`: `{port}` is not a port"))?;
    if http_port == 0 {
        return Err(format!("`{s}`: port 0"));
    }
    Ok(Target {
        host: host.to_owned(),
        http_port,
    })
}

/// Name of service `idx`.
pub fn service_name(prefix: &str, idx: u32) -> String {
    format!("{prefix}{idx}")
}

/// A unique address for instance number `i` (10.x.y.z, ports from 20000 upwards).
pub fn instance_addr(i: u64) -> (String, u16) {
    let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    (ip, 20000 + ((i >> 24) % 40000) as u16)
}

/// One publish: `count` consecutive instances (from `first`) of `service` on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// Service index.
    pub service: u32,
    /// First instance number.
    pub first: u64,
    /// Number of instances (1 = InstanceRequest unless the plan is batched).
    pub count: u32,
}

/// Instances spread over services and connections.
#[derive(Debug)]
pub struct Plan {
    /// The publishes of each connection, in service order.
    pub per_conn: Vec<Vec<Publish>>,
}

impl Plan {
    /// Total instances planned.
    pub fn instances(&self) -> u64 {
        self.per_conn
            .iter()
            .flatten()
            .map(|p| u64::from(p.count))
            .sum()
    }

    /// Instances planned in service `s`.
    pub fn service_count(&self, services: u32) -> Vec<u64> {
        let mut out = vec![0u64; services as usize];
        for p in self.per_conn.iter().flatten() {
            out[p.service as usize] += u64::from(p.count);
        }
        out
    }
}

/// Instances of service `s` when `instances` are spread evenly over `services` (the first
/// `instances % services` services get one more), and the number of the first one.
pub fn service_share(instances: u64, services: u32, s: u32) -> (u64, u64) {
    let per = instances / u64::from(services);
    let extra = instances % u64::from(services);
    let s64 = u64::from(s);
    let count = per + u64::from(s64 < extra);
    let first = s64 * per + s64.min(extra);
    (first, count)
}

/// How instances are spread over services.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sizes {
    /// Evenly (the first `instances % services` services get one more).
    Even,
    /// Skewed: service sizes follow a Pareto law of this shape (smaller = more skewed; 1.2
    /// gives most services a few dozen instances and some thousands), at least 1 and at most
    /// `max` per service, the total exact. Which services are big is fixed by their index.
    Pareto { shape: f64, max: u64 },
}

/// `(first instance number, count)` of every service.
pub fn shares(instances: u64, services: u32, sizes: Sizes) -> Result<Vec<(u64, u64)>, String> {
    let counts = match sizes {
        Sizes::Even => (0..services)
            .map(|s| service_share(instances, services, s).1)
            .collect(),
        Sizes::Pareto { shape, max } => pareto_counts(instances, services, shape, max)?,
    };
    let mut first = 0u64;
    Ok(counts
        .into_iter()
        .map(|c| {
            let out = (first, c);
            first += c;
            out
        })
        .collect())
}

/// splitmix64, for a fixed pseudo-random size per service index.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pareto_counts(instances: u64, services: u32, shape: f64, max: u64) -> Result<Vec<u64>, String> {
    let n = u64::from(services);
    if shape.is_nan()
        || shape <= 0.0
        || max == 0
        || instances < n
        || instances > n.saturating_mul(max)
    {
        return Err(format!(
            "--skew {shape} --skew-max {max}: {instances} instances cannot fill {services} services              with 1..={max} each (and the shape must be > 0)"
        ));
    }
    // Weights u^(-1/shape), u uniform in (0, 1]: Pareto with scale 1.
    let weights: Vec<f64> = (0..n)
        .map(|s| {
            let u = ((mix(s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            u.powf(-1.0 / shape)
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|w| ((w / total * instances as f64) as u64).clamp(1, max))
        .collect();
    // Make the total exact: biggest services first, one instance per pass, within 1..=max.
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|a, b| weights[*b].total_cmp(&weights[*a]));
    let mut sum: u64 = counts.iter().sum();
    while sum != instances {
        let before = sum;
        for &s in &order {
            if sum < instances && counts[s] < max {
                counts[s] += 1;
                sum += 1;
            } else if sum > instances && counts[s] > 1 {
                counts[s] -= 1;
                sum -= 1;
            }
            if sum == instances {
                break;
            }
        }
        if sum == before {
            return Err("cannot fit the instances into the services".into());
        }
    }
    Ok(counts)
}

/// Spreads `instances` over `services` and `connections`: service `s`'s share is cut into
/// the fewest equal chunks of at most `batch`, and the chunks of all services, in service order, are dealt round-robin
/// over the connections. A service's chunks thus land on consecutive, distinct connections (a
/// connection never publishes twice in the same service: a second publish would replace the
/// first), the total is exact and connection loads differ by at most one chunk.
#[cfg(test)]
pub fn plan(instances: u64, services: u32, connections: u32, batch: u32) -> Result<Plan, String> {
    plan_sized(instances, services, connections, batch, Sizes::Even)
}

/// [`plan`] with services sized by `sizes`.
pub fn plan_sized(
    instances: u64,
    services: u32,
    connections: u32,
    batch: u32,
    sizes: Sizes,
) -> Result<Plan, String> {
    if services == 0 || connections == 0 || batch == 0 {
        return Err("--services, --connections and --batch must be > 0".into());
    }
    let shares = shares(instances, services, sizes)?;
    let biggest = shares.iter().map(|(_, c)| *c).max().unwrap_or(0);
    let chunks = biggest.div_ceil(u64::from(batch));
    if chunks > u64::from(connections) {
        return Err(format!(
            "{instances} instances over {services} services need {chunks} publishes in the biggest \
             service, but a connection holds one publish per service and there are only \
             {connections} connections: raise --connections, --services or --batch"
        ));
    }
    let mut per_conn = vec![Vec::new(); connections as usize];
    let mut next = 0u64;
    for (s, (first, count)) in shares.into_iter().enumerate() {
        let s = s as u32;
        // Equal chunks (sizes differ by at most one), each at most `batch`.
        let m = count.div_ceil(u64::from(batch));
        let mut done = 0u64;
        for r in 0..m {
            let n = count / m + u64::from(r < count % m);
            let c = (next % u64::from(connections)) as usize;
            next += 1;
            per_conn[c].push(Publish {
                service: s,
                first: first + done,
                count: n as u32,
            });
            done += n;
        }
    }
    Ok(Plan { per_conn })
}

/// What goes into every request about where the service lives.
#[derive(Debug, Clone)]
pub struct Names {
    /// Namespace.
    pub namespace: String,
    /// Group.
    pub group: String,
    /// Service name prefix.
    pub prefix: String,
}

impl Names {
    fn head(&self, out: &mut String, service: &str) {
        out.push_str("{\"headers\":{},\"requestId\":\"\",\"namespace\":");
        out.push_str(&json_str(&self.namespace));
        out.push_str(",\"serviceName\":");
        out.push_str(&json_str(service));
        out.push_str(",\"groupName\":");
        out.push_str(&json_str(&self.group));
    }

    /// `InstanceRequest` body (`register` true: registerInstance, else deregisterInstance).
    pub fn instance_request(&self, service: &str, instance: &str, register: bool) -> Vec<u8> {
        let mut out = String::with_capacity(256 + instance.len());
        self.head(&mut out, service);
        out.push_str(if register {
            ",\"type\":\"registerInstance\",\"instance\":"
        } else {
            ",\"type\":\"deregisterInstance\",\"instance\":"
        });
        out.push_str(instance);
        out.push_str(",\"module\":\"naming\"}");
        out.into_bytes()
    }

    /// `BatchInstanceRequest` body.
    pub fn batch_request(&self, service: &str, instances: &[String]) -> Vec<u8> {
        let mut out =
            String::with_capacity(128 + instances.iter().map(|i| i.len() + 1).sum::<usize>());
        self.head(&mut out, service);
        out.push_str(",\"type\":\"batchRegisterInstance\",\"instances\":[");
        for (k, i) in instances.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str(i);
        }
        out.push_str("],\"module\":\"naming\"}");
        out.into_bytes()
    }

    /// `ServiceQueryRequest` body.
    pub fn query_request(&self, service: &str, healthy_only: bool) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        self.head(&mut out, service);
        let _ = write!(
            out,
            ",\"cluster\":\"\",\"healthyOnly\":{healthy_only},\"udpPort\":0,\"module\":\"naming\"}}"
        );
        out.into_bytes()
    }

    /// `SubscribeServiceRequest` body.
    pub fn subscribe_request(&self, service: &str, subscribe: bool) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        self.head(&mut out, service);
        let _ = write!(
            out,
            ",\"subscribe\":{subscribe},\"clusters\":\"\",\"module\":\"naming\"}}"
        );
        out.into_bytes()
    }

    /// `group@@service`, as the HTTP API wants it.
    pub fn grouped(&self, service: &str) -> String {
        format!("{}@@{}", self.group, service)
    }
}

/// Instance JSON with `entries` short metadata entries plus `extra` (key, value) pairs.
pub fn instance_json(ip: &str, port: u16, entries: usize, extra: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(160 + entries * 12);
    let _ = write!(
        out,
        "{{\"ip\":\"{ip}\",\"port\":{port},\"weight\":1.0,\"healthy\":true,\"enabled\":true,\
         \"ephemeral\":true,\"clusterName\":\"DEFAULT\",\"metadata\":{}}}",
        metadata_json(entries, extra)
    );
    out
}

/// Metadata JSON object: `k0:v0 ...` plus `extra`.
pub fn metadata_json(entries: usize, extra: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for k in 0..entries {
        if k > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"k{k}\":\"v{k}\"");
    }
    for (n, (k, v)) in extra.iter().enumerate() {
        if entries > 0 || n > 0 {
            out.push(',');
        }
        out.push_str(&json_str(k));
        out.push(':');
        out.push_str(&json_str(v));
    }
    out.push('}');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn targets_parse_hosts_ports_and_v6() {
        let t = parse_target("127.0.0.1:8848").unwrap();
        assert_eq!(t.http_addr(), "127.0.0.1:8848");
        assert_eq!(t.grpc_addr(1000).unwrap(), "127.0.0.1:9848");
        let t = parse_target("[::1]:28848").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.grpc_addr(1000).unwrap(), "[::1]:29848");
        assert_eq!(
            parse_target(" nacos.local:80 ").unwrap().host,
            "nacos.local"
        );
        assert!(parse_target("127.0.0.1").is_err());
        assert!(parse_target("127.0.0.1:http").is_err());
        assert!(parse_target(":8848").is_err());
        assert!(parse_target("::1:8848").is_err());
        assert!(parse_target("h:0").is_err());
        assert!(parse_target("h:65000").unwrap().grpc_addr(1000).is_err());
    }

    fn check(instances: u64, services: u32, connections: u32, batch: u32) {
        let p = plan(instances, services, connections, batch).unwrap();
        assert_eq!(p.instances(), instances);
        assert_eq!(p.per_conn.len(), connections as usize);
        let mut seen = HashSet::new();
        for (c, pubs) in p.per_conn.iter().enumerate() {
            let mut svcs = HashSet::new();
            for pb in pubs {
                assert!(
                    svcs.insert(pb.service),
                    "conn {c} publishes twice in {}",
                    pb.service
                );
                assert!(pb.count >= 1 && pb.count <= batch);
                for i in pb.first..pb.first + u64::from(pb.count) {
                    assert!(seen.insert(i), "instance {i} planned twice");
                }
            }
        }
        let counts = p.service_count(services);
        let (lo, hi) = (
            counts.iter().min().copied().unwrap(),
            counts.iter().max().copied().unwrap(),
        );
        assert!(hi - lo <= 1, "services unevenly filled: {lo}..{hi}");
        // Connections are evenly loaded within one chunk.
        let loads: Vec<u64> = p
            .per_conn
            .iter()
            .map(|v| v.iter().map(|x| u64::from(x.count)).sum())
            .collect();
        let (lo, hi) = (
            loads.iter().min().copied().unwrap(),
            loads.iter().max().copied().unwrap(),
        );
        assert!(
            hi - lo <= u64::from(batch),
            "connections unevenly loaded: {lo}..{hi}"
        );
    }

    #[test]
    fn plan_is_exact_and_never_publishes_twice_per_service_on_a_connection() {
        check(20_000, 500, 50, 1);
        check(20_000, 100, 50, 10);
        check(1_001, 7, 300, 1);
        check(10, 100, 3, 1);
        check(500_000, 5_000, 1_000, 1);
        check(12_345, 10, 13, 100);
    }

    #[test]
    fn plan_refuses_layouts_that_would_overwrite_publishes() {
        // 100 instances per service but only 50 connections and single registers.
        assert!(plan(10_000, 100, 50, 1).is_err());
        let skewed = Sizes::Pareto {
            shape: 1.2,
            max: 5_000,
        };
        let p = plan_sized(1_000_000, 10_000, 100, 100, skewed).unwrap();
        assert_eq!(p.instances(), 1_000_000);
        let mut counts = p.service_count(10_000);
        assert!(counts.iter().all(|c| (1..=5_000).contains(c)));
        counts.sort_unstable();
        assert!(
            counts[5_000] < 100,
            "most services small: median {}",
            counts[5_000]
        );
        assert!(
            counts[9_990] >= 1_000,
            "some with thousands: {}",
            counts[9_990]
        );
        assert!(
            plan_sized(10, 100, 10, 1, skewed).is_err(),
            "fewer instances than services"
        );
        assert!(plan(10_000, 100, 50, 2).is_ok());
        assert!(plan(1, 0, 1, 1).is_err());
    }

    #[test]
    fn instance_addresses_are_unique() {
        let mut seen = HashSet::new();
        for i in (0..3_000_000u64).step_by(7) {
            assert!(seen.insert(instance_addr(i)));
        }
        assert!(seen.insert(instance_addr(1 << 24)));
    }

    #[test]
    fn request_bodies_are_valid_json() {
        let names = Names {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            prefix: "lg-svc-".into(),
        };
        let inst = instance_json("10.0.0.1", 20000, 2, &[("lgts", "123")]);
        let v: serde_json::Value =
            serde_json::from_slice(&names.instance_request("s\"1", &inst, true)).unwrap();
        assert_eq!(v["serviceName"], "s\"1");
        assert_eq!(v["type"], "registerInstance");
        assert_eq!(v["instance"]["metadata"]["k1"], "v1");
        assert_eq!(v["instance"]["metadata"]["lgts"], "123");
        let v: serde_json::Value =
            serde_json::from_slice(&names.batch_request("s", &[inst.clone(), inst])).unwrap();
        assert_eq!(v["instances"].as_array().unwrap().len(), 2);
        let v: serde_json::Value = serde_json::from_slice(&names.query_request("s", true)).unwrap();
        assert_eq!(v["healthyOnly"], true);
        let v: serde_json::Value =
            serde_json::from_slice(&names.subscribe_request("s", false)).unwrap();
        assert_eq!(v["subscribe"], false);
        assert_eq!(metadata_json(0, &[]), "{}");
        assert_eq!(metadata_json(0, &[("a", "b")]), "{\"a\":\"b\"}");
    }
}
