//! The properties the fuzz targets check, shared by the cargo-fuzz crate (`fuzz/`, nightly) and
//! by their stable mirrors (`wire/tests/fuzz.rs`), plus the seed corpora and a small seeded
//! mutator for those mirrors. Not used by the server.
//!
//! Each property takes the raw bytes of one input and panics when a promise is broken; "never
//! panics" is the first promise, the others are per target:
//!
//! - [`grpc_payload`]: the bytes are a protobuf `Payload` as the gRPC port receives it. A
//!   payload that decodes re-encodes to an equal payload; its JSON body is decoded as the
//!   server does for its `metadata.type` (and, for a type the server does not serve, as every
//!   type it does, so the fuzzer need not guess type names); an instance operation it accepts
//!   survives the peer encoding (Distro carries it to the other nodes) and its `Instance`
//!   JSON answer carries the values sent; every error answer is JSON carrying its message.
//! - [`http_params`]: the bytes are `query\nbody` (no newline: no query string). The pairs
//!   survive form re-encoding; every route's validation ([`crate::http_params`]) runs for v1
//!   and v2; whatever it accepts is consistent (service names and addresses re-validate to
//!   themselves, metadata re-parses to itself) and a write it accepts survives the peer
//!   encoding (`Frame::Forward` carries it to the node owning its client).
//! - [`peer_stream`] (part of the `peer_frame` target, whose decoder properties live in the
//!   target and in `wire/tests/peer.rs`): the bytes are a stream of length-prefixed frames,
//!   split by the [`FrameReader`] the peer transport uses, fed as the transport feeds it (in
//!   pieces of any size); the bodies are the same however the stream is cut.

use bytes::Bytes;
use engine::model::{ClientId, Host, Instance, Interner, Metadata, ServiceKey};
use engine::shard::ClientOp;
use prost::Message;

use crate::http_params::{Api, ParamError, Params};
use crate::naming::{instance_op, ConnectionSetup, NamingRequest, StreamAck};
use crate::payload::{self, code, json_str};
use crate::peer::{decode_frame, encode_frame, Frame, FrameReader, LENGTH_PREFIX};
use crate::proto::Payload;
use crate::service_info::{self, NameStyle, Query};

/// The request types the gRPC port serves (besides `*Response` acks on the bi-stream).
pub const GRPC_KINDS: &[&str] = &[
    "ServerCheckRequest",
    "HealthCheckRequest",
    "ConnectionSetupRequest",
    "InstanceRequest",
    "BatchInstanceRequest",
    "ServiceQueryRequest",
    "SubscribeServiceRequest",
    "ServiceListRequest",
    "NotifySubscriberResponse",
];

/// Property of the `grpc_payload` target (see the module documentation).
pub fn grpc_payload(data: &[u8]) {
    let Ok(p) = Payload::decode(data) else {
        return;
    };
    let again =
        Payload::decode(p.encode_to_vec().as_slice()).expect("a decoded payload re-encodes");
    assert_eq!(p, again, "payload changed through re-encoding");
    let env = match payload::open(&p) {
        Ok(env) => env,
        Err(e) => {
            error_answer_is_json(code::BAD_GATEWAY, &e.to_string());
            return;
        }
    };
    if !grpc_body(env.kind, env.body) {
        for kind in GRPC_KINDS {
            grpc_body(kind, env.body);
        }
    }
}

/// A unary call's whole HTTP/2 body, as the gRPC port reads it: the framing must either give
/// back exactly the bytes after the prefix or refuse, and the message then goes through
/// [`grpc_payload`]. Inputs that are themselves a bare `Payload` are framed first, so the
/// corpus of SDK payloads reaches the message path too.
pub fn grpc_unary_body(data: &[u8]) {
    match payload::unary_message(data) {
        Ok(message) => {
            assert_eq!(
                message.len() + 5,
                data.len(),
                "the message is the body past its prefix"
            );
            grpc_payload(message);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let mut framed = Vec::with_capacity(data.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
    framed.extend_from_slice(data);
    assert_eq!(
        payload::unary_message(&framed),
        Ok(data),
        "a framed message comes back whole"
    );
}

/// Decodes `body` as the server does for a payload of type `kind`; false when the server does
/// not serve `kind`.
fn grpc_body(kind: &str, body: &[u8]) -> bool {
    match kind {
        "ServerCheckRequest" | "HealthCheckRequest" => {}
        "ConnectionSetupRequest" => {
            if let Err(e) = serde_json::from_slice::<ConnectionSetup>(body) {
                error_answer_is_json(code::INVALID_PARAM, &e.to_string());
            }
        }
        k if k.ends_with("Response") => {
            let _ = serde_json::from_slice::<StreamAck>(body);
        }
        "InstanceRequest" | "BatchInstanceRequest" => {
            let Some((req, key)) = keyed(body) else {
                return true;
            };
            let op_type = req.kind.clone().unwrap_or_default();
            match instance_op(kind, req, key, &mut Interner::default()) {
                Ok(op) => {
                    instances_answer_as_sent(&op);
                    let answer = payload::ok(
                        "InstanceResponse",
                        &format!("\"type\":{}", json_str(&op_type)),
                        None,
                    );
                    let v = body_json(&answer);
                    assert_eq!(v["type"].as_str(), Some(op_type.as_str()));
                    // A connection's client is never forwarded, but its instances are
                    // replicated to every peer with the same instance encoding.
                    let (service, instances) = match op {
                        ClientOp::Register { service, instance } => (service, vec![instance]),
                        ClientOp::BatchRegister { service, instances } => (service, instances),
                        _ => return true,
                    };
                    for instance in instances {
                        let op = ClientOp::Register {
                            service: service.clone(),
                            instance,
                        };
                        reaches_peer_intact(ClientId::Conn(1), op);
                    }
                }
                Err(msg) => error_answer_is_json(code::INVALID_PARAM, &msg),
            }
        }
        "ServiceQueryRequest" | "SubscribeServiceRequest" => {
            let Some((req, key)) = keyed(body) else {
                return true;
            };
            let clusters = if kind == "ServiceQueryRequest" {
                req.cluster.as_deref()
            } else {
                req.clusters.as_deref()
            };
            empty_answer_names(&key, clusters.unwrap_or(""), NameStyle::Bare);
        }
        "ServiceListRequest" => match NamingRequest::parse(body) {
            Ok(req) => {
                let (_, _, page_no, page_size) = req.service_page();
                assert!(page_no >= 1 && (1..=10_000).contains(&page_size));
            }
            Err(e) => error_answer_is_json(code::INVALID_PARAM, &e.0),
        },
        other => {
            error_answer_is_json(code::NO_HANDLER, &format!("{other} is not supported"));
            return false;
        }
    }
    true
}

/// [`NamingRequest::parse_keyed`], checking the key or the error answer.
fn keyed(body: &[u8]) -> Option<(NamingRequest, ServiceKey)> {
    match NamingRequest::parse_keyed(body) {
        Ok((req, key)) => {
            key_revalidates(&key);
            Some((req, key))
        }
        Err(e) => {
            error_answer_is_json(code::INVALID_PARAM, &e.0);
            None
        }
    }
}

/// Property of the `http_params` target (see the module documentation).
pub fn http_params(data: &[u8]) {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (Some(String::from_utf8_lossy(&data[..at])), &data[at + 1..]),
        None => (None, data),
    };
    let p = Params::parse(query.as_deref(), body);
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&p.pairs)
        .finish();
    assert_eq!(
        Params::parse(None, form.as_bytes()).pairs,
        p.pairs,
        "pairs changed through form re-encoding: {form:?}"
    );

    let mut interner = Interner::default();
    if let Some(key) = accepted(p.service_key()) {
        key_revalidates(&key);
    }
    if let Some(m) = accepted(p.metadata()).flatten() {
        metadata_reparses(&m);
    }
    if let Some((service, host, port, cluster)) = accepted(p.address()) {
        host_reparses(&host);
        let client = ClientId::for_address(&host, port);
        let deregister = ClientOp::Deregister {
            service: service.clone(),
            host: host.clone(),
            port,
            cluster: cluster.clone(),
        };
        reaches_peer_intact(client.clone(), deregister);
        for patch in [accepted(p.replacement()), accepted(p.patch())]
            .into_iter()
            .flatten()
        {
            let op = ClientOp::Update {
                service: service.clone(),
                host: host.clone(),
                port,
                cluster: cluster.clone(),
                patch,
            };
            reaches_peer_intact(client.clone(), op);
        }
    }
    if let Some(spec) = accepted(p.instance_spec()) {
        if let (Ok(instance), Ok(service)) = (spec.build(&mut interner), p.service_key()) {
            let op = ClientOp::Register { service, instance };
            instances_answer_as_sent(&op);
            let ClientOp::Register { instance, .. } = &op else {
                unreachable!("built above");
            };
            reaches_peer_intact(ClientId::for_address(&instance.host, instance.port), op);
        }
    }
    if let Some(beat) = accepted(p.beat()) {
        host_reparses(&beat.host);
        // The server answers a re-registration it cannot build with a 400, forwarding nothing.
        if let Ok(reregister) = beat.reregister.map(|s| s.build(&mut interner)).transpose() {
            let op = ClientOp::Beat {
                service: beat.key,
                host: beat.host.clone(),
                port: beat.port,
                cluster: beat.cluster.as_str().into(),
                reregister,
            };
            reaches_peer_intact(ClientId::for_address(&beat.host, beat.port), op);
        }
    }
    if let Some(q) = accepted(p.instance_query()) {
        empty_answer_names(&q.key, q.clusters, NameStyle::Grouped);
    }
    if let Some((key, host, _, cluster)) = accepted(p.instance_detail()) {
        key_revalidates(&key);
        host_reparses(&host);
        assert!(!cluster.is_empty());
    }
    for api in [Api::V1, Api::V2] {
        if let Some(page) = accepted(p.service_page(api)) {
            assert!(page.page_no >= 1 && (1..=10_000).contains(&page.page_size));
        }
    }
    if let Some(config) = accepted(p.service_config()) {
        if let Some(m) = &config.metadata {
            metadata_reparses(m);
        }
    }
}

/// Property of the stream side of the `peer_frame` target: splits `data` with a
/// [`FrameReader`] of `max_frame` (as the peer transport does for every incoming stream) and
/// returns the bodies, for the caller to decode.
///
/// The stream is read twice: in one push, and in pieces cut where the data says (each piece is
/// 1 to 61 bytes, by the value of its first byte), so the fuzzer reaches length prefixes and
/// bodies split across reads, as QUIC delivers them. Both give the same bodies and the same
/// refusal of an oversized length; what is left buffered is the unfinished frame at the end,
/// never more than a prefix and `max_frame` bytes.
pub fn peer_stream(data: &[u8], max_frame: usize) -> Vec<Bytes> {
    let mut whole = FrameReader::new(max_frame);
    let mut bodies = Vec::new();
    let whole_result = whole.push(data, |b| bodies.push(b));

    let mut pieces = FrameReader::new(max_frame);
    let mut again = Vec::new();
    let mut pieces_result = Ok(());
    let mut rest = data;
    while let Some(&first) = rest.first() {
        let n = (1 + usize::from(first % 61)).min(rest.len());
        pieces_result = pieces.push(&rest[..n], |b| again.push(b));
        if pieces_result.is_err() {
            break;
        }
        rest = &rest[n..];
    }
    assert_eq!(bodies, again, "the bodies depend on how the stream is cut");
    assert_eq!(whole_result, pieces_result);
    assert_eq!(whole.is_failed(), whole_result.is_err());
    assert!(bodies.iter().all(|b| b.len() <= max_frame));
    if whole_result.is_ok() {
        let consumed: usize = bodies.iter().map(|b| LENGTH_PREFIX + b.len()).sum();
        assert_eq!(whole.buffered(), data.len() - consumed);
        assert_eq!(pieces.buffered(), whole.buffered());
        assert!(whole.buffered() < LENGTH_PREFIX + max_frame);
    }
    bodies
}

/// The value, or `None` after checking the error's answer.
fn accepted<T>(r: Result<T, ParamError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            // The v2 answer (`{code,message,data}`) puts the message through `json_str`.
            let text = format!(
                "{{\"code\":{},\"message\":{},\"data\":null}}",
                e.code,
                json_str(&e.message)
            );
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("v2 error answer is not JSON ({err}): {text}"));
            assert_eq!(v["message"].as_str(), Some(e.message.as_str()));
            None
        }
    }
}

/// A key names itself: built again from its parts, or from its `group@@name` and namespace (the
/// form answers show and the Node SDK sends back), it is the same key.
fn key_revalidates(key: &ServiceKey) {
    let again = ServiceKey::new(key.namespace(), key.group(), key.name())
        .unwrap_or_else(|e| panic!("{key:?} does not re-validate: {e}"));
    assert_eq!(&again, key);
    let grouped = ServiceKey::new(key.namespace(), "", &key.grouped_name())
        .unwrap_or_else(|e| panic!("{key:?} is not named by its grouped name: {e}"));
    assert_eq!(&grouped, key, "grouped name {:?}", key.grouped_name());
}

fn host_reparses(host: &Host) {
    let again = Host::parse(&host.to_string()).expect("a host re-parses");
    assert_eq!(&again, host);
}

fn metadata_reparses(m: &Metadata) {
    let again = Metadata::parse_param(m.json()).expect("metadata re-parses");
    assert_eq!(&again, m, "{}", m.json());
}

/// An accepted operation, encoded for a peer (`Frame::Forward`) and decoded there, is the
/// same operation: a value the edge accepts must not be one a peer refuses.
fn reaches_peer_intact(client: ClientId, op: ClientOp) {
    let id = crate::peer::ForwardId { core: 3, token: 7 };
    let frame = Frame::Forward { id, client, op };
    let mut out = Vec::new();
    encode_frame(&frame, &mut out);
    let again = decode_frame(&out[LENGTH_PREFIX..])
        .unwrap_or_else(|e| panic!("a peer refuses an accepted op ({e}): {frame:?}"));
    // `ClientOp` has no `PartialEq`; `Debug` shows every field.
    assert_eq!(format!("{frame:?}"), format!("{again:?}"));
}

/// The `Instance` JSON of every registered instance is JSON with the values sent.
fn instances_answer_as_sent(op: &ClientOp) {
    let (service, instances): (&ServiceKey, &[Instance]) = match op {
        ClientOp::Register { service, instance } => (service, std::slice::from_ref(instance)),
        ClientOp::BatchRegister { service, instances } => (service, instances),
        _ => return,
    };
    let grouped = service.grouped_name();
    for inst in instances {
        let mut out = Vec::new();
        service_info::write_instance(&mut out, &grouped, inst, inst.healthy);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "instance JSON is not JSON ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        });
        assert_eq!(v["ip"].as_str(), Some(inst.host.to_string().as_str()));
        assert_eq!(v["port"].as_u64(), Some(u64::from(inst.port)));
        assert_eq!(v["weight"].as_f64(), Some(inst.weight));
        assert_eq!(v["clusterName"].as_str(), Some(&*inst.cluster));
        assert_eq!(v["serviceName"].as_str(), Some(grouped.as_str()));
        let id = inst.id_for(service);
        assert_eq!(v["instanceId"].as_str(), Some(id.as_str()));
        let meta = Metadata::from_json(&v["metadata"]).expect("metadata of an answer");
        assert_eq!(&meta, inst.metadata());
    }
}

/// The answer for a service nobody registered is JSON naming the service and clusters asked.
fn empty_answer_names(key: &ServiceKey, clusters: &str, style: NameStyle) {
    let query = Query {
        clusters,
        healthy_only: false,
    };
    let out = service_info::encode(key, None, style, query, 1_700_000_000_000);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "ServiceInfo is not JSON ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    });
    let name = match style {
        NameStyle::Bare => key.name().to_owned(),
        NameStyle::Grouped => key.grouped_name(),
    };
    assert_eq!(v["name"].as_str(), Some(name.as_str()));
    assert_eq!(v["clusters"].as_str(), Some(clusters));
}

/// `ErrorResponse` for `message` is JSON carrying it.
fn error_answer_is_json(error_code: i32, message: &str) {
    let v = body_json(&payload::error(error_code, message));
    assert_eq!(v["message"].as_str(), Some(message));
    assert_eq!(v["errorCode"].as_i64(), Some(i64::from(error_code)));
}

fn body_json(p: &Payload) -> serde_json::Value {
    let body = p.body.as_ref().map(|b| b.value.as_slice()).unwrap_or(b"");
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "answer body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })
}

/// The seed corpora: requests as the official SDKs send them (shapes from `tests/sdk/NOTES.md`
/// and the server's tests). `examples/fuzz_corpus.rs` writes them to `fuzz/corpus/<target>/`.
pub mod seeds {
    use std::collections::HashMap;

    use prost::Message;

    use crate::proto::{Metadata, Payload};

    fn grpc(kind: &str, json: &str) -> Vec<u8> {
        // One header: prost writes a map in `HashMap` order, and seeds must be reproducible.
        let headers: HashMap<String, String> = [("app".to_owned(), "unknown".to_owned())].into();
        Payload {
            metadata: Some(Metadata {
                r#type: kind.to_owned(),
                client_ip: "10.0.0.5".to_owned(),
                headers,
            }),
            body: Some(prost_types::Any {
                type_url: String::new(),
                value: json.as_bytes().to_vec(),
            }),
        }
        .encode_to_vec()
    }

    const INSTANCE: &str = r#"{"ip":"10.0.0.9","port":8080,"weight":2.0,"healthy":true,"enabled":true,"ephemeral":true,"clusterName":"DEFAULT","serviceName":"orders","metadata":{"version":"1","zone":"a","preserved.heart.beat.interval":"5000"}}"#;

    /// Seeds of `grpc_payload`: encoded `Payload`s, named.
    pub fn grpc_payload() -> Vec<(&'static str, Vec<u8>)> {
        let naming = |extra: &str| {
            format!(
                r#"{{"headers":{{}},"namespace":"public","serviceName":"orders","groupName":"DEFAULT_GROUP","module":"naming",{extra}}}"#
            )
        };
        vec![
            (
                "server-check",
                grpc(
                    "ServerCheckRequest",
                    r#"{"headers":{},"module":"internal"}"#,
                ),
            ),
            (
                "health-check",
                grpc(
                    "HealthCheckRequest",
                    r#"{"headers":{},"module":"internal"}"#,
                ),
            ),
            (
                "setup-python",
                grpc(
                    "ConnectionSetupRequest",
                    r#"{"headers":{},"clientVersion":"Nacos-Python-Client:v3.2.0","tenant":"","labels":{"source":"sdk","module":"naming"},"abilityTable":{"mcp":true},"module":"internal"}"#,
                ),
            ),
            (
                "setup-java",
                grpc(
                    "ConnectionSetupRequest",
                    r#"{"headers":{},"clientVersion":"Nacos-Java-Client:v2.5.1","abilityTable":{"supportPersistentInstanceByGrpc":true},"tenant":"dev","labels":{"AppName":"unknown","module":"naming","source":"sdk","taskId":"0"},"module":"internal"}"#,
                ),
            ),
            (
                "register",
                grpc(
                    "InstanceRequest",
                    &naming(&format!(
                        r#""type":"registerInstance","instance":{INSTANCE}"#
                    )),
                ),
            ),
            (
                "register-v6-id",
                grpc(
                    "InstanceRequest",
                    r#"{"headers":{},"namespace":"dev","serviceName":"G@@pay","groupName":"G","module":"naming","type":"registerInstance","instance":{"instanceId":"pay-1","ip":"fd00::1","port":443,"weight":0.5,"clusterName":"east-1","metadata":{"n":2,"b":true,"x":null}}}"#,
                ),
            ),
            (
                "deregister",
                grpc(
                    "InstanceRequest",
                    &naming(
                        r#""type":"deregisterInstance","instance":{"ip":"10.0.0.9","port":8080,"clusterName":""}"#,
                    ),
                ),
            ),
            (
                "batch",
                grpc(
                    "BatchInstanceRequest",
                    &naming(&format!(
                        r#""type":"batchRegisterInstance","instances":[{INSTANCE},{{"ip":"10.0.0.10","port":8081,"clusterName":"west","metadata":{{}}}}]"#
                    )),
                ),
            ),
            (
                "query",
                grpc(
                    "ServiceQueryRequest",
                    &naming(r#""cluster":"east,west","healthyOnly":false,"udpPort":0"#),
                ),
            ),
            (
                "subscribe",
                grpc(
                    "SubscribeServiceRequest",
                    &naming(r#""subscribe":true,"clusters":"""#),
                ),
            ),
            (
                "unsubscribe",
                grpc(
                    "SubscribeServiceRequest",
                    &naming(r#""subscribe":false,"clusters":"DEFAULT""#),
                ),
            ),
            (
                "service-list",
                grpc(
                    "ServiceListRequest",
                    r#"{"headers":{},"namespace":"public","serviceName":"","groupName":"DEFAULT_GROUP","module":"naming","pageNo":2,"pageSize":10,"selector":null}"#,
                ),
            ),
            (
                "notify-ack",
                grpc(
                    "NotifySubscriberResponse",
                    r#"{"resultCode":200,"errorCode":0,"requestId":"42","success":true}"#,
                ),
            ),
            (
                "detection-ack",
                grpc(
                    "ClientDetectionResponse",
                    r#"{"resultCode":200,"errorCode":0,"requestId":"7","success":true}"#,
                ),
            ),
            (
                "config-query",
                grpc(
                    "ConfigQueryRequest",
                    r#"{"headers":{},"dataId":"app.yaml","group":"DEFAULT_GROUP","tenant":"","module":"config"}"#,
                ),
            ),
        ]
    }

    /// Seeds of `http_params`: `query\nbody`, named.
    pub fn http_params() -> Vec<(&'static str, Vec<u8>)> {
        let meta = "%7B%22version%22%3A%221%22%2C%22n%22%3A2%7D"; // {"version":"1","n":2}
        let beat = "%7B%22serviceName%22%3A%22G%40%40svc%22%2C%22ip%22%3A%2210.0.0.3%22%2C%22port%22%3A8080%2C%22cluster%22%3A%22DEFAULT%22%2C%22weight%22%3A1%2C%22metadata%22%3A%7B%22k%22%3A%22v%22%7D%2C%22scheduled%22%3Atrue%7D";
        let seeds: Vec<(&'static str, String)> = vec![
            (
                "node-register",
                format!("namespaceId=public&serviceName=G%40%40svc&groupName=G&clusterName=DEFAULT&ip=10.0.0.3&port=8080&weight=1&enable=true&healthy=true&ephemeral=true&metadata={meta}\n"),
            ),
            (
                "node-deregister",
                "namespaceId=public&serviceName=G%40%40svc&clusterName=DEFAULT&ip=10.0.0.3&port=8080&ephemeral=true\n".into(),
            ),
            (
                "node-beat",
                format!("beat={beat}&namespaceId=public&serviceName=G%40%40svc\n"),
            ),
            (
                "node-list",
                "namespaceId=public&serviceName=G%40%40svc&clusters=DEFAULT&udpPort=55000&clientIP=10.0.0.3&healthyOnly=false\n".into(),
            ),
            (
                "service-list-v1",
                "pageNo=1&pageSize=20&namespaceId=public&groupName=G\n".into(),
            ),
            (
                "service-list-v2",
                "pageSize=5\n".into(),
            ),
            (
                "form-register",
                "serviceName=web&ip=10.1.0.2&port=8081&healthy=true&ephemeral=true".into(),
            ),
            (
                "curl-register",
                "serviceName=demo&ip=10.0.0.1&port=8080\n".into(),
            ),
            (
                "v2-patch",
                "serviceName=web&ip=web-1.internal&port=80&clusterName=c1\nweight=3.5&enabled=false&metadata=zone%3Da%2Cv%3D2".into(),
            ),
            (
                "v2-update",
                "namespaceId=dev&groupName=G&serviceName=web&ip=fd00%3A%3A2&port=80&weight=0&healthy=false\n".into(),
            ),
            (
                "service-create",
                format!("serviceName=web&groupName=G&namespaceId=dev&protectThreshold=0.5&metadata={meta}\n"),
            ),
            (
                "instance-detail",
                "serviceName=web&ip=10.1.0.1&port=8080&cluster=c1&tenant=public\n".into(),
            ),
        ];
        seeds
            .into_iter()
            .map(|(n, s)| (n, s.into_bytes()))
            .collect()
    }
}

/// A small seeded mutator for the stable mirrors: not libFuzzer, but the same kinds of edits
/// (bit flips, random and interesting bytes, cuts, splices from other inputs, insertions).
#[derive(Clone, Debug)]
pub struct Mutator(u64);

impl Mutator {
    /// A mutator whose edits depend only on `seed`.
    pub fn new(seed: u64) -> Mutator {
        Mutator(seed | 1)
    }

    /// A pseudo-random number (xorshift*).
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A mutation of a random input of `corpus` (1 to 4 edits).
    pub fn mutant(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut m = corpus
            .get(self.below(corpus.len()))
            .cloned()
            .unwrap_or_default();
        for _ in 0..1 + self.below(4) {
            self.mutate(&mut m, corpus);
        }
        m
    }

    /// One edit of `m`.
    pub fn mutate(&mut self, m: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        const INTERESTING: &[&[u8]] = &[
            b"\"",
            b"\\",
            b"\\u0000",
            b"%",
            b"%FF",
            b"%22",
            b"@@",
            b"&",
            b"=",
            b"\n",
            b"{",
            b"}",
            b"[",
            b"null",
            b"-1",
            b"65536",
            b"1e400",
            b"NaN",
            b"\xff",
            b"\xc3\xa9",
            b",",
        ];
        if m.is_empty() {
            m.push(self.next_u64() as u8);
            return;
        }
        let at = self.below(m.len());
        match self.below(7) {
            0 => m[at] ^= 1 << self.below(8),
            1 => m[at] = self.next_u64() as u8,
            2 => {
                let word = INTERESTING[self.below(INTERESTING.len())];
                m.splice(at..at, word.iter().copied());
            }
            3 => m.truncate(at),
            4 => {
                let n = self.below(16).min(m.len() - at);
                m.drain(at..at + n);
            }
            5 => {
                let other = &corpus[self.below(corpus.len())];
                if !other.is_empty() {
                    let from = self.below(other.len());
                    let n = self.below(32).min(other.len() - from);
                    m.splice(at..at, other[from..from + n].iter().copied());
                }
            }
            _ => {
                for _ in 0..self.below(8) {
                    m.insert(at, self.next_u64() as u8);
                }
            }
        }
    }
}
