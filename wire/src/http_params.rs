//! The parameters of the HTTP OpenAPI (v1 and v2 naming): the query string and form body as
//! pairs, and their validation into what each route needs. Pure functions of the bytes a client
//! sent, so the fuzz target `http_params` (see [`crate::fuzzing`]) reaches all of them; the
//! server's handlers only add the engine call and the answer.
//!
//! Every error here is an HTTP 400; [`ParamError::code`] is the Nacos v2 code.

use engine::model::{
    validate_cluster_name, Host, InstanceSpec, Metadata, ServiceKey, DEFAULT_CLUSTER,
};
use engine::shard::InstancePatch;
use std::borrow::Cow;

/// API version of a request: v1 answers bare values, v2 wraps them as `{code,message,data}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/nacos/v1/ns`.
    V1,
    /// `/nacos/v2/ns`.
    V2,
}

/// Nacos v2 code of a missing parameter.
pub const CODE_MISSING: i32 = 10000;
/// Nacos v2 code of an invalid parameter.
pub const CODE_INVALID: i32 = 20002;

/// A refused parameter (HTTP 400): Nacos v2 code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    /// [`CODE_MISSING`] or [`CODE_INVALID`].
    pub code: i32,
    /// For the client.
    pub message: String,
}

/// An invalid parameter.
pub fn bad(message: impl Into<String>) -> ParamError {
    ParamError {
        code: CODE_INVALID,
        message: message.into(),
    }
}

/// A missing parameter.
pub fn missing(name: &str) -> ParamError {
    ParamError {
        code: CODE_MISSING,
        message: format!("Required parameter '{name}' is missing"),
    }
}

/// The parameters of a request: query string and form body, query first (as Nacos reads them).
///
/// Pairs borrow from the request where nothing needed decoding: a registration has half a
/// dozen of them, and copying each was a dozen allocations per request.
#[derive(Debug, Default)]
pub struct Params<'a> {
    /// Every pair in order, percent-decoded (invalid UTF-8 replaced).
    pub pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// What a heartbeat (`PUT /instance/beat`) names, from its parameters and its `beat` JSON.
#[derive(Debug)]
pub struct Beat {
    /// Service.
    pub key: ServiceKey,
    /// Address as sent.
    pub ip: String,
    /// Address parsed.
    pub host: Host,
    /// Port.
    pub port: u16,
    /// Cluster (`DEFAULT` when none is named).
    pub cluster: String,
    /// The instance to register again if the server forgot it (present when a `beat` body
    /// was sent, as Nacos does); not yet validated by [`InstanceSpec::build`].
    pub reregister: Option<InstanceSpec>,
}

/// The RsInfo JSON of a v1 beat.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct BeatInfo {
    ip: Option<String>,
    port: Option<i64>,
    cluster: Option<String>,
    weight: Option<f64>,
    metadata: Option<serde_json::Value>,
    ephemeral: Option<bool>,
}

/// `GET /instance/list`.
#[derive(Debug)]
pub struct InstanceQuery<'a> {
    /// Service.
    pub key: ServiceKey,
    /// Cluster filter as sent (comma separated, may be empty).
    pub clusters: &'a str,
    /// Only healthy instances.
    pub healthy_only: bool,
}

/// `GET /service/list`.
#[derive(Debug)]
pub struct ServicePage<'a> {
    /// Namespace (`public` by default).
    pub namespace: &'a str,
    /// Group (`DEFAULT_GROUP` by default).
    pub group: &'a str,
    /// 1-based page.
    pub page_no: usize,
    /// Page size, `1..=10000`.
    pub page_size: usize,
}

/// `POST`/`PUT /service`.
#[derive(Debug)]
pub struct ServiceConfig {
    /// Service.
    pub key: ServiceKey,
    /// New protect threshold.
    pub protect_threshold: Option<f32>,
    /// New metadata.
    pub metadata: Option<Metadata>,
}

/// `form_urlencoded::parse`, borrowing every pair that needs no decoding.
///
/// The pairs of a beat or a registration are plain (`serviceName=s&ip=10.0.0.1&port=80`):
/// borrowing them when they hold no `%` or `+` and are UTF-8 skips `form_urlencoded`'s
/// percent-decoding scan and its lossy UTF-8 pass per key and value, a tenth of a beat's
/// instructions in the server. A pair that needs decoding is decoded by `form_urlencoded`
/// itself, so the pairs are the same either way.
fn form_pairs(input: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    input
        .split(|&b| b == b'&')
        .filter(|segment| !segment.is_empty())
        .filter_map(|segment| {
            let plain = !segment.iter().any(|&b| b == b'%' || b == b'+');
            match std::str::from_utf8(segment) {
                Ok(text) if plain => Some(match text.split_once('=') {
                    Some((k, v)) => (Cow::Borrowed(k), Cow::Borrowed(v)),
                    None => (Cow::Borrowed(text), Cow::Borrowed("")),
                }),
                _ => form_urlencoded::parse(segment).next(),
            }
        })
}

impl<'a> Params<'a> {
    /// Parses the query string and the form body.
    pub fn parse(query: Option<&'a str>, body: &'a [u8]) -> Params<'a> {
        let mut pairs = Vec::with_capacity(8);
        if let Some(q) = query {
            pairs.extend(form_pairs(q.as_bytes()));
        }
        pairs.extend(form_pairs(body));
        Params { pairs }
    }

    /// The value of the first `name` pair, unless that value is empty (empty = absent).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
            .filter(|v| !v.is_empty())
    }

    /// The value of the first of `names` that has one.
    pub fn any(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.get(n))
    }

    /// A parameter that must be there.
    pub fn required(&self, name: &str) -> Result<&str, ParamError> {
        self.get(name).ok_or_else(|| missing(name))
    }

    /// A boolean (`true`/`false`, any case) under the first of `names` that has a value.
    pub fn bool(&self, names: &[&str]) -> Result<Option<bool>, ParamError> {
        match self.any(names) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(bad(format!(
                "parameter {} must be true or false, got {v:?}",
                names[0]
            ))),
        }
    }

    /// A number (surrounding blanks ignored).
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ParamError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| bad(format!("parameter {name} is not a valid number: {v:?}"))),
        }
    }

    /// `serviceName` (required), `groupName`, `namespaceId` (or `tenant`).
    pub fn service_key(&self) -> Result<ServiceKey, ParamError> {
        let name = self.required("serviceName")?;
        ServiceKey::new(
            self.any(&["namespaceId", "tenant"]).unwrap_or(""),
            self.get("groupName").unwrap_or(""),
            name,
        )
        .map_err(|e| bad(e.0))
    }

    /// `port` (required), `0..=65535`.
    pub fn port(&self) -> Result<u16, ParamError> {
        let port: i64 = self.number("port")?.ok_or_else(|| missing("port"))?;
        u16::try_from(port).map_err(|_| bad(format!("port {port} is out of range 0..65535")))
    }

    /// The service and the instance address a write names. The cluster name is validated as
    /// a register's is: a write may be forwarded to the node owning its client, whose peer
    /// decoder refuses a frame with an illegal name (the write would wait for the forward to
    /// time out, and the refusal would look like a broken peer).
    pub fn address(&self) -> Result<(ServiceKey, Host, u16, engine::Str), ParamError> {
        let key = self.service_key()?;
        let host = Host::parse(self.required("ip")?).map_err(|e| bad(e.0))?;
        let port = self.port()?;
        let cluster = self.cluster();
        validate_cluster_name(cluster).map_err(|e| bad(e.0))?;
        Ok((key, host, port, cluster.into()))
    }

    /// `weight` of an update: finite and >= 0, as a register's (and a peer's decoder) wants.
    fn new_weight(&self) -> Result<Option<f64>, ParamError> {
        match self.number::<f64>("weight")? {
            Some(w) if !w.is_finite() || w < 0.0 => {
                Err(bad(format!("weight {w} must be a number >= 0")))
            }
            w => Ok(w),
        }
    }

    /// `clusterName` (or `cluster`), `DEFAULT` when absent.
    pub fn cluster(&self) -> &str {
        self.any(&["clusterName", "cluster"])
            .unwrap_or(DEFAULT_CLUSTER)
    }

    /// `metadata`: a JSON object or `k=v,k=v`.
    pub fn metadata(&self) -> Result<Option<Metadata>, ParamError> {
        self.get("metadata")
            .map(|m| Metadata::parse_param(m).map_err(|e| bad(e.0)))
            .transpose()
    }

    /// The instance a register (`POST /instance`) describes.
    pub fn instance_spec(&self) -> Result<InstanceSpec, ParamError> {
        Ok(InstanceSpec {
            ip: self.required("ip")?.to_owned(),
            port: i64::from(self.port()?),
            weight: self.number("weight")?,
            healthy: self.bool(&["healthy"])?,
            enabled: self.bool(&["enabled", "enable"])?,
            ephemeral: self.bool(&["ephemeral"])?,
            cluster: Some(self.cluster().to_owned()),
            metadata: self.metadata()?.unwrap_or_default(),
            instance_id: None,
        })
    }

    /// The change of `PUT /instance`: Nacos builds the instance from the parameters, so absent
    /// fields take their defaults (weight 1, enabled, empty metadata).
    pub fn replacement(&self) -> Result<InstancePatch, ParamError> {
        Ok(InstancePatch {
            weight: Some(self.new_weight()?.unwrap_or(1.0)),
            enabled: Some(self.bool(&["enabled", "enable"])?.unwrap_or(true)),
            healthy: self.bool(&["healthy"])?,
            metadata: Some(self.metadata()?.unwrap_or_default()),
        })
    }

    /// The change of `PATCH /instance`: only the fields sent.
    pub fn patch(&self) -> Result<InstancePatch, ParamError> {
        Ok(InstancePatch {
            weight: self.new_weight()?,
            enabled: self.bool(&["enabled", "enable"])?,
            healthy: self.bool(&["healthy"])?,
            metadata: self.metadata()?,
        })
    }

    /// `PUT /instance/beat`: the address comes from the parameters or else the `beat` JSON.
    pub fn beat(&self) -> Result<Beat, ParamError> {
        let key = self.service_key()?;
        let info: Option<BeatInfo> = match self.get("beat") {
            Some(b) => Some(
                serde_json::from_str(b).map_err(|e| bad(format!("beat is not valid JSON: {e}")))?,
            ),
            None => None,
        };
        let ip = self
            .get("ip")
            .map(str::to_owned)
            .or_else(|| info.as_ref().and_then(|b| b.ip.clone()))
            .ok_or_else(|| missing("ip"))?;
        let port = match self.number::<i64>("port")? {
            Some(port) => port,
            None => info
                .as_ref()
                .and_then(|b| b.port)
                .ok_or_else(|| missing("port"))?,
        };
        let port = u16::try_from(port)
            .map_err(|_| bad(format!("port {port} is out of range 0..65535")))?;
        let cluster = self
            .any(&["clusterName", "cluster"])
            .map(str::to_owned)
            .or_else(|| {
                info.as_ref()
                    .and_then(|b| b.cluster.clone())
                    .filter(|c| !c.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_CLUSTER.to_owned());
        let host = Host::parse(&ip).map_err(|e| bad(e.0))?;
        validate_cluster_name(&cluster).map_err(|e| bad(e.0))?;
        let reregister = match info {
            Some(b) => {
                let metadata = match &b.metadata {
                    Some(v) => Metadata::from_json(v).map_err(|e| bad(e.0))?,
                    None => Metadata::default(),
                };
                Some(InstanceSpec {
                    ip: ip.clone(),
                    port: i64::from(port),
                    weight: b.weight,
                    ephemeral: b.ephemeral,
                    cluster: Some(cluster.clone()),
                    metadata,
                    ..Default::default()
                })
            }
            None => None,
        };
        Ok(Beat {
            key,
            ip,
            host,
            port,
            cluster,
            reregister,
        })
    }

    /// `GET /instance/list`.
    pub fn instance_query(&self) -> Result<InstanceQuery<'_>, ParamError> {
        let key = self.service_key()?;
        let clusters = self.any(&["clusters", "clusterName"]).unwrap_or("");
        let healthy_only = self.bool(&["healthyOnly"])?.unwrap_or(false);
        Ok(InstanceQuery {
            key,
            clusters,
            healthy_only,
        })
    }

    /// `GET /instance`: service, address and cluster of one instance.
    pub fn instance_detail(&self) -> Result<(ServiceKey, Host, u16, &str), ParamError> {
        let key = self.service_key()?;
        let host = Host::parse(self.required("ip")?).map_err(|e| bad(e.0))?;
        let port = self.port()?;
        Ok((key, host, port, self.cluster()))
    }

    /// `GET /service/list`: v1 requires `pageNo` and `pageSize`, v2 defaults them to 1 and 20.
    pub fn service_page(&self, api: Api) -> Result<ServicePage<'_>, ParamError> {
        let namespace = self.any(&["namespaceId", "tenant"]).unwrap_or("public");
        let group = self.get("groupName").unwrap_or("DEFAULT_GROUP");
        let (default_no, default_size) = match api {
            Api::V1 => (None, None),
            Api::V2 => (Some(1), Some(20)),
        };
        let page_no: i64 = self
            .number("pageNo")?
            .or(default_no)
            .ok_or_else(|| missing("pageNo"))?;
        let page_size: i64 = self
            .number("pageSize")?
            .or(default_size)
            .ok_or_else(|| missing("pageSize"))?;
        if page_no < 1 || !(1..=10_000).contains(&page_size) {
            return Err(bad("pageNo must be >= 1 and pageSize within 1..=10000"));
        }
        Ok(ServicePage {
            namespace,
            group,
            page_no: page_no as usize,
            page_size: page_size as usize,
        })
    }

    /// `POST`/`PUT /service`.
    pub fn service_config(&self) -> Result<ServiceConfig, ParamError> {
        let key = self.service_key()?;
        let protect_threshold: Option<f32> = self.number("protectThreshold")?;
        let metadata = self.metadata()?;
        Ok(ServiceConfig {
            key,
            protect_threshold,
            metadata,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_pairs_are_the_pairs_form_urlencoded_decodes() {
        let inputs: [&[u8]; 12] = [
            b"serviceName=s&ip=10.0.0.1&port=80",
            b"a=1&&b=2&",
            b"&=x&k=",
            b"novalue&k=v=w",
            b"name=a%40%40b&x=%zz",
            b"sp=a+b&plus=%2B",
            b"bad=\xff\xfe&ok=1",
            b"metadata=%7B%22k%22%3A%22v%22%7D",
            b"",
            b"=",
            b"k=\xe4\xb8\xad",
            b"a=1&a=2",
        ];
        for input in inputs {
            let ours: Vec<_> = form_pairs(input).collect();
            let theirs: Vec<_> = form_urlencoded::parse(input).collect();
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn query_comes_before_body_and_empty_values_are_absent() {
        let p = Params::parse(
            Some("serviceName=a&ip=&port=80"),
            b"serviceName=b&ip=10.0.0.1",
        );
        assert_eq!(p.get("serviceName"), Some("a"));
        assert_eq!(p.get("ip"), None);
        assert_eq!(p.required("ip").unwrap_err().code, CODE_MISSING);
        assert_eq!(p.port().unwrap(), 80);
    }

    #[test]
    fn beat_takes_the_address_from_its_json() {
        let beat = form_urlencoded::Serializer::new(String::new())
            .append_pair("serviceName", "G@@svc")
            .append_pair(
                "beat",
                r#"{"serviceName":"G@@svc","ip":"10.0.0.7","port":81,"cluster":"","weight":1,"metadata":{"a":1},"scheduled":true}"#,
            )
            .finish();
        let b = Params::parse(Some(&beat), b"").beat().unwrap();
        assert_eq!(
            (b.ip.as_str(), b.port, b.cluster.as_str()),
            ("10.0.0.7", 81, "DEFAULT")
        );
        assert_eq!(b.key.group(), "G");
        assert_eq!(b.reregister.unwrap().metadata.json(), r#"{"a":"1"}"#);
    }

    /// Found by the `http_params` fuzz target: these used to pass here and reach the engine,
    /// and a forwarded write carrying them was refused by the owner's peer decoder.
    #[test]
    fn writes_refuse_what_a_peer_would_refuse() {
        let p = Params::parse(
            Some("serviceName=a&ip=1.2.3.4&port=1&clusterName=DEFAULT%22"),
            b"",
        );
        assert_eq!(p.address().unwrap_err().code, CODE_INVALID);
        assert_eq!(p.beat().unwrap_err().code, CODE_INVALID);
        for weight in ["NaN", "inf", "-1", "1e400"] {
            let q = format!("serviceName=a&ip=1.2.3.4&port=1&weight={weight}");
            let p = Params::parse(Some(&q), b"");
            assert_eq!(p.patch().unwrap_err().code, CODE_INVALID, "{weight}");
            assert_eq!(p.replacement().unwrap_err().code, CODE_INVALID, "{weight}");
        }
        let p = Params::parse(Some("serviceName=a&ip=1.2.3.4&port=1&weight=-0"), b"");
        assert!(p.patch().is_ok());
    }

    #[test]
    fn service_pages_have_v2_defaults_only() {
        let p = Params::parse(Some("pageSize=5"), b"");
        assert_eq!(p.service_page(Api::V1).unwrap_err(), missing("pageNo"));
        let page = p.service_page(Api::V2).unwrap();
        assert_eq!((page.page_no, page.page_size), (1, 5));
        let p = Params::parse(Some("pageNo=0&pageSize=5"), b"");
        assert_eq!(p.service_page(Api::V2).unwrap_err().code, CODE_INVALID);
    }
}
