//! The Nacos naming model: services, instances, clients and the preserved metadata keys.
//!
//! Values here are immutable once built and shared by `Arc` between the shard that owns a
//! client, the shard that owns a service and the published read views, so one registration
//! costs one allocation for the instance (plus one for its metadata, if any).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Shared immutable string.
pub type Str = Arc<str>;

/// Namespace used when a request names none.
pub const DEFAULT_NAMESPACE: &str = "public";
/// Group used when a request names none.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// Cluster used when a request names none.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";

/// Metadata key that overrides the heartbeat interval (ms) of an HTTP instance.
pub const PRESERVED_HEART_BEAT_INTERVAL: &str = "preserved.heart.beat.interval";
/// Metadata key that overrides the time (ms) without beats after which an instance is unhealthy.
pub const PRESERVED_HEART_BEAT_TIMEOUT: &str = "preserved.heart.beat.timeout";
/// Metadata key that overrides the time (ms) without beats after which an instance is removed.
pub const PRESERVED_IP_DELETE_TIMEOUT: &str = "preserved.ip.delete.timeout";
/// Metadata key naming the instance id generator (only "simple" exists in Nacos).
pub const PRESERVED_INSTANCE_ID_GENERATOR: &str = "preserved.instance.id.generator";

/// Nacos default heartbeat interval (ms).
pub const DEFAULT_HEART_BEAT_INTERVAL_MS: u32 = 5_000;
/// Nacos default unhealthy-after (ms).
pub const DEFAULT_HEART_BEAT_TIMEOUT_MS: u32 = 15_000;
/// Nacos default delete-after (ms).
pub const DEFAULT_IP_DELETE_TIMEOUT_MS: u32 = 30_000;

/// Largest weight Nacos accepts; larger values are clamped to it, as Nacos does.
pub const MAX_WEIGHT: f64 = 10_000.0;

/// Why an input was refused. The text is shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput(pub String);

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

fn invalid(msg: impl Into<String>) -> InvalidInput {
    InvalidInput(msg.into())
}

/// `namespace` + `group` + `service name`: the identity of a service.
///
/// Cheap to clone (one `Arc`); compared and hashed by content.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey(Arc<ServiceName>);

/// The parts of a [`ServiceKey`].
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ServiceName {
    /// Namespace id (`public` by default).
    pub namespace: Str,
    /// Group name (`DEFAULT_GROUP` by default).
    pub group: Str,
    /// Bare service name, without the `group@@` prefix.
    pub name: Str,
}

impl ServiceKey {
    /// Builds a key, applying Nacos defaults for empty namespace and group and splitting a
    /// `group@@name` service name.
    pub fn new(namespace: &str, group: &str, service: &str) -> Result<Self, InvalidInput> {
        let (group, name) = match service.split_once("@@") {
            Some((g, n)) => {
                if !group.is_empty() && group != g && group != DEFAULT_GROUP {
                    return Err(invalid(format!(
                        "service name {service:?} names group {g:?} but the request names group {group:?}"
                    )));
                }
                (g, n)
            }
            None => (group, service),
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(invalid("serviceName is required"));
        }
        if has_double_at(name) {
            return Err(invalid(format!(
                "service name {service:?} has more than one '@@'"
            )));
        }
        if name.len() > 512 || group.len() > 128 || namespace.len() > 128 {
            return Err(invalid("namespace, group or service name is too long"));
        }
        let group = if group.trim().is_empty() {
            DEFAULT_GROUP
        } else {
            group.trim()
        };
        // The grouped name `group@@name` must name this key again (answers show it, and
        // clients send it back): a group with `@@`, or ending in `@`, would split elsewhere.
        if has_double_at(group) || group.ends_with('@') {
            return Err(invalid(format!(
                "group name {group:?} must not contain '@@' or end with '@'"
            )));
        }
        let namespace = if namespace.trim().is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace.trim()
        };
        Ok(ServiceKey(Arc::new(ServiceName {
            namespace: namespace.into(),
            group: group.into(),
            name: name.into(),
        })))
    }

    /// Namespace id.
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }
    /// Group name.
    pub fn group(&self) -> &str {
        &self.0.group
    }
    /// Bare service name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// `group@@name`, the form Nacos uses in HTTP answers and service lists.
    pub fn grouped_name(&self) -> String {
        format!("{}@@{}", self.0.group, self.0.name)
    }
    /// Whether two keys share their allocation (interned).
    pub fn ptr_eq(&self, other: &ServiceKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
    /// Address of the shared allocation: identifies an interned key within its interner.
    pub fn addr(&self) -> usize {
        Arc::as_ptr(&self.0) as *const () as usize
    }
    pub(crate) fn strong_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

/// `s.contains("@@")` without building a substring searcher (a few hundred instructions per
/// call, twice per request).
fn has_double_at(s: &str) -> bool {
    s.as_bytes().windows(2).any(|w| w == b"@@")
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@@{}", self.0.namespace, self.0.group, self.0.name)
    }
}

/// An instance's address: IPv4 kept inline (the common case costs no allocation).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A dotted-quad IPv4 address.
    V4(Ipv4Addr),
    /// Anything else Nacos accepts: IPv6, a host name.
    Name(Box<str>),
}

impl Host {
    /// Parses an `ip` parameter.
    pub fn parse(ip: &str) -> Result<Host, InvalidInput> {
        let ip = ip.trim();
        if ip.is_empty() {
            return Err(invalid("ip is required"));
        }
        if ip.len() > 255 || ip.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!("ip {ip:?} is not a valid address")));
        }
        match ip.parse::<Ipv4Addr>() {
            // Only the canonical spelling goes inline, so the address reads back exactly as sent.
            Ok(v4) if canonical_v4(ip) => Ok(Host::V4(v4)),
            _ => Ok(Host::Name(ip.into())),
        }
    }
}

/// Whether `ip`, which parses as an IPv4 address, is spelled as `Ipv4Addr` displays it: four
/// decimal octets, none with a leading zero. (Comparing with `to_string()` formatted and
/// allocated on every beat: 5 % of a beat's instructions.)
fn canonical_v4(ip: &str) -> bool {
    let mut octets = 0;
    for part in ip.split('.') {
        octets += 1;
        let b = part.as_bytes();
        if b.is_empty()
            || b.len() > 3
            || !b.iter().all(u8::is_ascii_digit)
            || (b.len() > 1 && b[0] == b'0')
        {
            return false;
        }
    }
    octets == 4
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::V4(a) => a.fmt(f),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Instance metadata, kept as its compact JSON object text (`{"k":"v",..}`, keys sorted).
///
/// Why text: metadata is written far more often into answers than it is read as a map, and one
/// boxed string is the smallest form; an empty map costs nothing.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Metadata(Option<Box<str>>);

impl Metadata {
    /// Largest metadata accepted, in bytes of JSON.
    pub const MAX_BYTES: usize = 64 * 1024;

    /// Builds from key/value pairs (later duplicates win).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Metadata, InvalidInput> {
        let map: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        Metadata::from_map(&map)
    }

    /// Builds from a map.
    pub fn from_map<K, V>(map: &BTreeMap<K, V>) -> Result<Metadata, InvalidInput>
    where
        K: serde::Serialize + Ord,
        V: serde::Serialize,
    {
        if map.is_empty() {
            return Ok(Metadata(None));
        }
        let text = serde_json::to_string(map).map_err(|e| invalid(format!("metadata: {e}")))?;
        if text.len() > Self::MAX_BYTES {
            return Err(invalid(format!(
                "metadata is larger than {} bytes",
                Self::MAX_BYTES
            )));
        }
        Ok(Metadata(Some(text.into_boxed_str())))
    }

    /// Parses the HTTP `metadata` parameter: a JSON object, or `k=v,k=v` (both accepted by Nacos).
    /// Non-string JSON values are kept as their JSON text, as Jackson would coerce them.
    pub fn parse_param(raw: &str) -> Result<Metadata, InvalidInput> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(Metadata(None));
        }
        if raw.starts_with('{') {
            // Straight into sorted pairs that borrow from `raw`: going through a
            // `serde_json::Value` and a map of owned strings was 5 % of a registration.
            let pairs: MetaPairs<'_> = serde_json::from_str(raw)
                .map_err(|e| invalid(format!("metadata is not a valid JSON object: {e}")))?;
            return Metadata::from_map(&pairs.0);
        }
        let mut map = BTreeMap::new();
        for pair in raw.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("metadata entry {pair:?} is not key=value")))?;
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Metadata::from_map(&map)
    }

    /// Builds from a JSON value that must be an object (or null).
    pub fn from_json(value: &serde_json::Value) -> Result<Metadata, InvalidInput> {
        match value {
            serde_json::Value::Null => Ok(Metadata(None)),
            serde_json::Value::Object(obj) => {
                let mut map = BTreeMap::new();
                for (k, v) in obj {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => continue,
                        other => other.to_string(),
                    };
                    map.insert(k.clone(), v);
                }
                Metadata::from_map(&map)
            }
            _ => Err(invalid("metadata must be a JSON object")),
        }
    }

    /// The JSON object text (`{}` when empty).
    pub fn json(&self) -> &str {
        self.0.as_deref().unwrap_or("{}")
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The entries as a map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        match &self.0 {
            // Our own text, produced by serde_json from a map: it always parses back.
            Some(text) => serde_json::from_str(text).unwrap_or_default(),
            None => BTreeMap::new(),
        }
    }

    /// One value.
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.as_ref()?;
        self.to_map().remove(key)
    }
}

/// The entries of a metadata JSON object, in key order, later duplicates winning; strings
/// borrowed from the input where they have no escapes.
struct MetaPairs<'a>(BTreeMap<Cow<'a, str>, Cow<'a, str>>);

impl<'de> serde::Deserialize<'de> for MetaPairs<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = MetaPairs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut pairs = BTreeMap::new();
                while let Some(MetaText(key)) = map.next_key()? {
                    match map.next_value()? {
                        MetaValue::Text(v) => {
                            pairs.insert(key, v);
                        }
                        // Jackson drops null values of a String map too.
                        MetaValue::Null => {
                            pairs.remove(&key);
                        }
                    }
                }
                Ok(MetaPairs(pairs))
            }
        }
        d.deserialize_map(Pairs)
    }
}

/// A metadata key: a JSON string.
struct MetaText<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for MetaText<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor).map(MetaText)
    }
}

struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A metadata value: a string as it is, anything else but null as its JSON text (Jackson
/// coerces scalars into a String map the same way).
enum MetaValue<'a> {
    Text(Cow<'a, str>),
    Null,
}

impl<'de> serde::Deserialize<'de> for MetaValue<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        fn text<'a>(v: serde_json::Value) -> MetaValue<'a> {
            MetaValue::Text(Cow::Owned(v.to_string()))
        }
        impl<'de> serde::de::Visitor<'de> for Any {
            type Value = MetaValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MetaValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MetaValue::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MetaValue::Text(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MetaValue::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(MetaValue::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(text(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(text(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(text(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(text(v.into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::Deserialize;
                let v = serde_json::Value::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(text(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::Deserialize;
                let v = serde_json::Value::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(text(v))
            }
        }
        d.deserialize_any(Any)
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

/// One registered instance, as stored and as answered.
///
/// Kept small (72 bytes): what most instances never set (an explicit id, non-default
/// heartbeat timing) lives behind one optional box.
#[derive(Clone, PartialEq, Debug)]
pub struct Instance {
    /// Address.
    pub host: Host,
    /// Port.
    pub port: u16,
    /// Load-balancing weight, `0..=10000`.
    pub weight: f64,
    /// Health as reported by heartbeats (HTTP) or implied by the connection (gRPC).
    pub healthy: bool,
    /// Whether consumers may route to it.
    pub enabled: bool,
    /// Ephemeral (a client keeps it alive: Distro) or persistent (stored through Raft,
    /// probed by the registry). A service holds one kind only (Nacos's rule).
    pub ephemeral: bool,
    /// Cluster name (`DEFAULT` by default), interned per shard.
    pub cluster: Str,
    /// Metadata, including any preserved keys.
    metadata: Metadata,
    extras: Option<Box<Extras>>,
}

#[derive(Clone, PartialEq, Debug)]
struct Extras {
    instance_id: Option<Box<str>>,
    timing: HeartbeatTiming,
}

/// The instances one client publishes in one service: one for a single registration, several
/// for a batch. Shared by the client's owner, the service's owner, the views and the Distro
/// messages that carry it between nodes.
pub type Publish = Arc<[Instance]>;

/// Touches the reference counts of `publishes` with plain loads before they are cloned.
///
/// Why: each publish is its own allocation, so cloning a view's publishes is one cache miss
/// per instance, and an atomic increment cannot overlap its miss with the next one. Plain
/// loads can, so this pass pulls the lines in parallel and the increments then hit the cache
/// (it was most of the cost of republishing a 100-instance service).
pub(crate) fn warm_refcounts(publishes: &[Publish]) {
    let mut sum = 0usize;
    for p in publishes {
        sum = sum.wrapping_add(Arc::strong_count(p));
    }
    std::hint::black_box(sum);
}

/// The heartbeat timing of an instance (from its preserved metadata keys).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HeartbeatTiming {
    /// Expected beat interval (ms).
    pub interval_ms: u32,
    /// Unhealthy after this long without a beat (ms).
    pub timeout_ms: u32,
    /// Removed after this long without a beat (ms).
    pub delete_ms: u32,
}

impl Default for HeartbeatTiming {
    fn default() -> Self {
        HeartbeatTiming {
            interval_ms: DEFAULT_HEART_BEAT_INTERVAL_MS,
            timeout_ms: DEFAULT_HEART_BEAT_TIMEOUT_MS,
            delete_ms: DEFAULT_IP_DELETE_TIMEOUT_MS,
        }
    }
}

impl HeartbeatTiming {
    /// Reads the preserved keys of `metadata`, validating them as Nacos does (timeouts ≥ interval).
    pub fn from_metadata(metadata: &Metadata) -> Result<HeartbeatTiming, InvalidInput> {
        let mut timing = HeartbeatTiming::default();
        if metadata.is_empty() || !metadata.json().contains("preserved.") {
            return Ok(timing);
        }
        let map = metadata.to_map();
        let read = |key: &str, into: &mut u32| -> Result<(), InvalidInput> {
            if let Some(v) = map.get(key) {
                let ms: u64 = v.trim().parse().map_err(|_| {
                    invalid(format!(
                        "metadata {key}={v:?} is not a number of milliseconds"
                    ))
                })?;
                *into = u32::try_from(ms).unwrap_or(u32::MAX).max(1);
            }
            Ok(())
        };
        read(PRESERVED_HEART_BEAT_INTERVAL, &mut timing.interval_ms)?;
        read(PRESERVED_HEART_BEAT_TIMEOUT, &mut timing.timeout_ms)?;
        read(PRESERVED_IP_DELETE_TIMEOUT, &mut timing.delete_ms)?;
        if timing.timeout_ms < timing.interval_ms || timing.delete_ms < timing.interval_ms {
            return Err(invalid(
                "Instance 'heart beat interval' must less than 'heart beat timeout' and 'ip delete timeout'.",
            ));
        }
        Ok(timing)
    }
}

/// Checks a cluster name against Nacos's rule `[0-9a-zA-Z-.]+` (underscore is also accepted
/// by Nacos clients in practice? no: Nacos rejects it, and so do we).
pub fn validate_cluster_name(cluster: &str) -> Result<(), InvalidInput> {
    if cluster.is_empty()
        || cluster.len() > 128
        || !cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(format!(
            "Param 'cluster' is illegal, Cluster name {cluster:?} does not match [0-9a-zA-Z-.]+"
        )));
    }
    Ok(())
}

/// What a request says about an instance, before validation.
#[derive(Clone, Debug, Default)]
pub struct InstanceSpec {
    /// `ip`.
    pub ip: String,
    /// `port`.
    pub port: i64,
    /// `weight` (default 1).
    pub weight: Option<f64>,
    /// `healthy` (default true).
    pub healthy: Option<bool>,
    /// `enabled` (default true).
    pub enabled: Option<bool>,
    /// `ephemeral` (default true): false is a persistent instance (stored through Raft).
    pub ephemeral: Option<bool>,
    /// `clusterName` (default `DEFAULT`).
    pub cluster: Option<String>,
    /// Metadata.
    pub metadata: Metadata,
    /// `instanceId`.
    pub instance_id: Option<String>,
}

impl InstanceSpec {
    /// Validates and builds the instance. `cluster` is interned by the caller's interner.
    pub fn build(self, interner: &mut Interner) -> Result<Instance, InvalidInput> {
        let host = Host::parse(&self.ip)?;
        if !(0..=65535).contains(&self.port) {
            return Err(invalid(format!(
                "port {} is out of range 0..65535",
                self.port
            )));
        }
        let weight = self.weight.unwrap_or(1.0);
        if !weight.is_finite() || weight < 0.0 {
            return Err(invalid(format!("weight {weight} must be a number >= 0")));
        }
        let cluster = match self.cluster.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_CLUSTER,
            Some(c) => c,
        };
        validate_cluster_name(cluster)?;
        let timing = HeartbeatTiming::from_metadata(&self.metadata)?;
        let instance_id = match self.instance_id {
            Some(id) if !id.trim().is_empty() => {
                if id.len() > 512 {
                    return Err(invalid("instanceId is too long"));
                }
                Some(id.into_boxed_str())
            }
            _ => None,
        };
        let mut instance = Instance::new(host, self.port as u16, interner.intern(cluster));
        instance.weight = weight.min(MAX_WEIGHT);
        instance.healthy = self.healthy.unwrap_or(true);
        instance.enabled = self.enabled.unwrap_or(true);
        instance.ephemeral = self.ephemeral.unwrap_or(true);
        instance.metadata = self.metadata;
        instance.set_extras(instance_id, timing);
        Ok(instance)
    }
}

impl Instance {
    /// An instance with Nacos defaults: weight 1, healthy, enabled, no metadata.
    pub fn new(host: Host, port: u16, cluster: Str) -> Instance {
        Instance {
            host,
            port,
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            cluster,
            metadata: Metadata::default(),
            extras: None,
        }
    }

    fn set_extras(&mut self, instance_id: Option<Box<str>>, timing: HeartbeatTiming) {
        self.extras = if instance_id.is_none() && timing == HeartbeatTiming::default() {
            None
        } else {
            Some(Box::new(Extras {
                instance_id,
                timing,
            }))
        };
    }

    /// Rebuilds an instance from replicated fields (a peer's sync or snapshot); the same
    /// checks as a request, so a peer cannot store what a client could not.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        host: Host,
        port: u16,
        weight: f64,
        healthy: bool,
        enabled: bool,
        cluster: Str,
        metadata: Metadata,
        instance_id: Option<&str>,
    ) -> Result<Instance, InvalidInput> {
        if !weight.is_finite() || weight < 0.0 {
            return Err(invalid(format!("weight {weight} must be a number >= 0")));
        }
        validate_cluster_name(&cluster)?;
        if instance_id.is_some_and(|id| id.len() > 512) {
            return Err(invalid("instanceId is too long"));
        }
        let timing = HeartbeatTiming::from_metadata(&metadata)?;
        let mut instance = Instance::new(host, port, cluster);
        instance.weight = weight.min(MAX_WEIGHT);
        instance.healthy = healthy;
        instance.enabled = enabled;
        instance.metadata = metadata;
        instance.set_extras(instance_id.map(Into::into), timing);
        Ok(instance)
    }

    /// Heartbeat timing (from the preserved metadata keys).
    pub fn timing(&self) -> HeartbeatTiming {
        self.extras
            .as_ref()
            .map_or_else(HeartbeatTiming::default, |e| e.timing)
    }

    /// The explicit instance id, if the client gave one.
    pub fn instance_id(&self) -> Option<&str> {
        self.extras.as_ref().and_then(|e| e.instance_id.as_deref())
    }

    /// Metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Replaces the metadata, re-reading the preserved timing keys.
    pub fn set_metadata(&mut self, metadata: Metadata) -> Result<(), InvalidInput> {
        let timing = HeartbeatTiming::from_metadata(&metadata)?;
        let id = self.extras.as_mut().and_then(|e| e.instance_id.take());
        self.metadata = metadata;
        self.set_extras(id, timing);
        Ok(())
    }

    /// Whether `self` is the instance at `host:port` in `cluster`.
    pub fn is_at(&self, host: &Host, port: u16, cluster: &str) -> bool {
        self.port == port && &self.host == host && &*self.cluster == cluster
    }

    /// The instance id as Nacos answers it: the explicit one, or `ip#port#cluster#group@@service`.
    pub fn id_for(&self, service: &ServiceKey) -> String {
        match self.instance_id() {
            Some(id) => id.to_string(),
            None => format!(
                "{}#{}#{}#{}@@{}",
                self.host,
                self.port,
                self.cluster,
                service.group(),
                service.name()
            ),
        }
    }

    /// A copy with another health flag.
    pub fn with_health(&self, healthy: bool) -> Instance {
        Instance {
            healthy,
            ..self.clone()
        }
    }
}

/// A client: what publishes instances. Nacos has two kinds and so do we.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum ClientId {
    /// A gRPC connection; gone with the connection.
    Conn(u64),
    /// An HTTP heartbeat client `ip:port` whose address is IPv4.
    V4(Ipv4Addr, u16),
    /// An HTTP heartbeat client whose address is a name or IPv6.
    Named(Str, u16),
    /// The persistent instances at `host:port` (Nacos's `ip:port#false` client): written
    /// through Raft and applied on every node, so Distro never replicates, expires or hands
    /// it over; only a deregistration removes its instances.
    Persistent(Host, u16),
}

impl ClientId {
    /// The HTTP client that an instance at `host:port` belongs to.
    pub fn for_address(host: &Host, port: u16) -> ClientId {
        match host {
            Host::V4(a) => ClientId::V4(*a, port),
            Host::Name(n) => ClientId::Named(Str::from(&**n), port),
        }
    }

    /// Whether this client is alive through heartbeats (HTTP) rather than a connection.
    pub fn is_heartbeat(&self) -> bool {
        matches!(self, ClientId::V4(..) | ClientId::Named(..))
    }

    /// Whether this is a persistent client (Raft, not Distro).
    pub fn is_persistent(&self) -> bool {
        matches!(self, ClientId::Persistent(..))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Conn(id) => write!(f, "conn-{id}"),
            ClientId::V4(a, p) => write!(f, "{a}:{p}#true"),
            ClientId::Named(n, p) => write!(f, "{n}:{p}#true"),
            ClientId::Persistent(h, p) => write!(f, "{h}:{p}#false"),
        }
    }
}

/// A fixed-seed hasher, so that every core (and later every node) maps keys to the same shard.
#[derive(Clone, Copy, Default)]
pub struct StableHasher;

impl BuildHasher for StableHasher {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> ahash::AHasher {
        ahash::RandomState::with_seeds(0x6e61_6365, 0x6c6c_6521, 0x7265_6769, 0x7374_7279)
            .build_hasher()
    }
}

/// Hash of a value with [`StableHasher`].
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    StableHasher.hash_one(value)
}

/// Interns the few distinct strings that repeat across instances (cluster names) and service
/// keys, so a million instances share a handful of allocations.
#[derive(Default)]
pub struct Interner {
    strings: ahash::HashSet<Str>,
    services: ahash::HashSet<ServiceKey>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Str {
        if let Some(found) = self.strings.get(s) {
            return found.clone();
        }
        let owned: Str = s.into();
        self.strings.insert(owned.clone());
        owned
    }

    /// The shared copy of `key`.
    pub fn service(&mut self, key: ServiceKey) -> ServiceKey {
        if let Some(found) = self.services.get(&key) {
            return found.clone();
        }
        self.services.insert(key.clone());
        key
    }

    /// Drops service keys nobody else holds any more.
    pub fn collect_garbage(&mut self) {
        self.services.retain(|k| k.strong_count() > 1);
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_address_is_inline_only_when_spelled_as_it_displays() {
        for ip in ["10.0.0.1", "0.0.0.0", "255.255.255.255", "1.22.133.4"] {
            assert!(matches!(Host::parse(ip), Ok(Host::V4(_))), "{ip}");
            assert_eq!(Host::parse(ip).unwrap().to_string(), ip);
        }
        for ip in [
            "010.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1..2.3",
            "a.b.c.d",
            "::1",
            "host",
        ] {
            let host = Host::parse(ip).unwrap();
            assert!(matches!(host, Host::Name(_)), "{ip}");
            assert_eq!(host.to_string(), ip);
        }
    }

    #[test]
    fn grouped_service_names_split_and_default() {
        let k = ServiceKey::new("", "", "g1@@svc").unwrap();
        assert_eq!(
            (k.namespace(), k.group(), k.name()),
            ("public", "g1", "svc")
        );
        let k = ServiceKey::new("ns", "", "svc").unwrap();
        assert_eq!(k.grouped_name(), "DEFAULT_GROUP@@svc");
        assert!(ServiceKey::new("", "", "  ").is_err());
        assert!(ServiceKey::new("", "other", "g1@@svc").is_err());
        assert!(ServiceKey::new("", "", "a@@b@@c").is_err());
        // Keys whose grouped name would split elsewhere.
        assert!(ServiceKey::new("", "a@@b", "svc").is_err());
        assert!(ServiceKey::new("", "DEFAULT_GROU@", "svc").is_err());
        let odd = ServiceKey::new("", "g", "@svc").unwrap();
        assert_eq!(ServiceKey::new("", "", &odd.grouped_name()).unwrap(), odd);
    }

    #[test]
    fn metadata_parses_json_and_pairs_and_rejects_garbage() {
        let m = Metadata::parse_param(r#"{"b":"2","a":1}"#).unwrap();
        assert_eq!(m.json(), r#"{"a":"1","b":"2"}"#);
        let m = Metadata::parse_param("k=v, x = y").unwrap();
        assert_eq!(m.get("x").as_deref(), Some("y"));
        assert!(Metadata::parse_param("{not json").is_err());
        assert!(Metadata::parse_param("novalue").is_err());
        assert!(Metadata::parse_param("[1]").is_err());
        assert_eq!(Metadata::parse_param("").unwrap().json(), "{}");
    }

    #[test]
    fn metadata_json_parses_as_through_a_json_value() {
        // The direct parser must agree with building from a `serde_json::Value`: escapes,
        // scalars and nested values as JSON text, nulls dropped, later duplicates winning.
        for raw in [
            r#"{"zone":"z1","ver":"1.0"}"#,
            r#"{"k\"ey":"v\u00e9\n","a":"plain"}"#,
            r#"{"n":-3,"f":1.5,"big":18446744073709551615,"t":true,"x":null}"#,
            r#"{"nested":{"b":[1,"two",null],"a":{}},"list":[]}"#,
            r#"{"d":"first","d":"second","e":"kept","e":null}"#,
            r#"{}"#,
        ] {
            let direct = Metadata::parse_param(raw).unwrap();
            let value: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert_eq!(direct, Metadata::from_json(&value).unwrap(), "{raw}");
        }
        assert!(Metadata::parse_param(r#"{"a":"1",}"#).is_err());
        assert!(Metadata::parse_param(r#"{"a":"1"} trailing"#).is_err());
        assert!(Metadata::parse_param(r#"{"a":"1""#).is_err());
    }

    #[test]
    fn preserved_keys_set_timing_and_are_validated() {
        let m = Metadata::from_pairs([
            (PRESERVED_HEART_BEAT_TIMEOUT, "1000"),
            (PRESERVED_HEART_BEAT_INTERVAL, "500"),
        ])
        .unwrap();
        let t = HeartbeatTiming::from_metadata(&m).unwrap();
        assert_eq!(
            (t.interval_ms, t.timeout_ms, t.delete_ms),
            (500, 1000, 30_000)
        );
        let bad = Metadata::from_pairs([(PRESERVED_HEART_BEAT_TIMEOUT, "100")]).unwrap();
        assert!(HeartbeatTiming::from_metadata(&bad).is_err());
        let nan = Metadata::from_pairs([(PRESERVED_IP_DELETE_TIMEOUT, "soon")]).unwrap();
        assert!(HeartbeatTiming::from_metadata(&nan).is_err());
    }

    #[test]
    fn instance_spec_validation() {
        let mut i = Interner::default();
        let ok = InstanceSpec {
            ip: "10.0.0.1".into(),
            port: 80,
            ..Default::default()
        };
        let inst = ok.clone().build(&mut i).unwrap();
        assert_eq!(inst.host, Host::V4("10.0.0.1".parse().unwrap()));
        assert_eq!(&*inst.cluster, "DEFAULT");
        let svc = ServiceKey::new("", "", "s").unwrap();
        assert_eq!(inst.id_for(&svc), "10.0.0.1#80#DEFAULT#DEFAULT_GROUP@@s");
        for bad in [
            InstanceSpec {
                port: 70000,
                ..ok.clone()
            },
            InstanceSpec {
                port: -1,
                ..ok.clone()
            },
            InstanceSpec {
                ip: "".into(),
                ..ok.clone()
            },
            InstanceSpec {
                cluster: Some("bad_name".into()),
                ..ok.clone()
            },
            InstanceSpec {
                weight: Some(f64::NAN),
                ..ok.clone()
            },
        ] {
            assert!(bad.build(&mut i).is_err());
        }
        let heavy = InstanceSpec {
            weight: Some(1e9),
            ..ok
        }
        .build(&mut i)
        .unwrap();
        assert_eq!(heavy.weight, MAX_WEIGHT);
        let persistent = InstanceSpec {
            ephemeral: Some(false),
            ..InstanceSpec {
                ip: "127.0.0.1".into(),
                port: 80,
                ..Default::default()
            }
        }
        .build(&mut i)
        .unwrap();
        assert!(!persistent.ephemeral);
    }

    #[test]
    fn non_canonical_ipv4_is_kept_verbatim() {
        assert_eq!(Host::parse("010.0.0.1").unwrap().to_string(), "010.0.0.1");
        assert!(matches!(Host::parse("::1").unwrap(), Host::Name(_)));
    }
}
