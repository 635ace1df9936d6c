//! The Nacos HTTP OpenAPI (v1 and v2 naming) and Prometheus `/metrics`, on hyper HTTP/1.1.
//!
//! HTTP instances belong to `ip:port` heartbeat clients: their writes go to the core owning
//! that client; reads come from the published views of whatever core accepted the request.
//!
//! # Layout
//! - this file: the router, the reads (instance list and detail, service list and detail),
//!   beats, `/metrics`;
//! - `writes`: registrations, updates, deregistrations, service and cluster definitions
//!   (ephemeral through the shards, persistent through Raft);
//! - `status`: `/nacos/v1/core/cluster/nodes` (v2: `/core/cluster/node/list`) and
//!   `/operator/metrics`;
//! - `catalog`: the console's reads `/nacos/v1/ns/catalog/{services,service,instances}` and
//!   `/nacos/v1/ns/service/subscribers`;
//! - `console`: the web console's files at `/nacos/`, `/nacos/v1/console/server/state` and
//!   the metrics ring `/nacos/v1/console/metrics/history`;
//! - `namespaces`: `/nacos/v1/console/namespaces`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::model::ClientId;
use engine::shard::{ClientOp, OpError, OpOutcome};
use glommio::net::TcpListener;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tracing::{debug, warn};
use wire::http_params::{self, Api, ParamError, Params};
use wire::payload::json_str;
use wire::service_info::{self, NameStyle, Query};

use crate::admission::Class;
use crate::core::{unix_ms, with_core, Overloaded};
use crate::metrics::Kind;
use crate::rt::{CoarseTimer, GlommioIo};

mod catalog;
mod console;
mod namespaces;
mod status;
mod udp_push;
mod writes;

type Resp = Response<Full<Bytes>>;

/// Accepts HTTP connections on this core.
pub async fn serve(listener: TcpListener, max_body: usize) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        glommio::spawn_local(async move {
            let (io, last_read) = GlommioIo::stamped(stream);
            let svc =
                hyper::service::service_fn(move |req| handle(req, max_body, last_read.get(), peer));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(CoarseTimer)
                .header_read_timeout(Duration::from_secs(30))
                .max_buf_size(1 << 20)
                .serve_connection(io, svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        })
        .detach();
    }
}

/// An HTTP error: status, Nacos v2 code and message.
struct Failure {
    status: StatusCode,
    code: i32,
    message: String,
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::from(http_params::bad(message))
}

/// Every refused parameter is a 400 with its Nacos v2 code.
impl From<ParamError> for Failure {
    fn from(e: ParamError) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            code: e.code,
            message: e.message,
        }
    }
}

impl From<OpError> for Failure {
    fn from(e: OpError) -> Failure {
        match e {
            OpError::NotFound(m) => Failure {
                status: StatusCode::NOT_FOUND,
                code: 20004,
                message: m,
            },
            OpError::Invalid(m) => bad(m),
            OpError::Conflict(m) => Failure {
                status: StatusCode::BAD_REQUEST,
                code: 20005,
                message: m,
            },
            OpError::Unavailable(m) => Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: 503,
                message: m,
            },
        }
    }
}

impl From<Overloaded> for Failure {
    fn from(_: Overloaded) -> Failure {
        Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: 503,
            message: "server is over its threshold, retry later".into(),
        }
    }
}

/// Serves one request whose bytes were read at `arrived`, from `peer`.
async fn handle(
    req: http::Request<hyper::body::Incoming>,
    max_body: usize,
    arrived: Instant,
    peer: Option<std::net::SocketAddr>,
) -> Result<Resp, Infallible> {
    let started = Instant::now();
    // The head stays borrowed while the body is read: no copy of the path or the query.
    let (head, body) = req.into_parts();
    let method = &head.method;
    let path = head.uri.path();
    let query = head.uri.query();
    if console::is_console_path(path) {
        // The console's files: static, small, never shed.
        return Ok(console::asset(method, path, &head.headers));
    }
    // Only list calls use it (UDP push eligibility).
    let user_agent = path
        .ends_with("/instance/list")
        .then(|| head.headers.get(http::header::USER_AGENT))
        .flatten()
        .and_then(|v| v.to_str().ok());
    if !with_core(|c| c.admit_request(class_of(method, path), arrived)) {
        // Refused before reading the body: shedding must cost far less than serving.
        let route = naming_route(path).map_or("", |(_, r)| r);
        let kind = kind_of(method, route);
        with_core(|c| c.metrics.record(kind, started.elapsed(), false));
        let f = Failure::from(Overloaded);
        return Ok(if path.starts_with("/nacos/v2/") {
            json(f.status, wrap_v2(f.code, &f.message, "null"))
        } else {
            text(f.status, f.message)
        });
    }
    let draining = with_core(|c| c.shared.draining.load(Ordering::Relaxed));
    if draining && method != Method::GET && naming_route(path).is_some() {
        // A write accepted now might not reach the peers before the process exits; the
        // SDKs send a refused request to the next server.
        let f = Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: 503,
            message: "this node is shutting down: send the request to another node".into(),
        };
        return Ok(if path.starts_with("/nacos/v2/") {
            json(f.status, wrap_v2(f.code, &f.message, "null"))
        } else {
            text(f.status, f.message)
        });
    }
    let body = match Limited::new(body, max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg = format!("request body rejected: {e}");
            return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, msg));
        }
    };
    let params = Params::parse(query, &body);
    if let Err(refused) =
        crate::auth::gate::http_gate(method, path, &head.headers, &params, peer).await
    {
        return Ok(refused);
    }
    let Some((api, route)) = naming_route(path) else {
        let resp = match (method, path) {
            (_, p) if p.starts_with("/nacos/v1/auth/") => {
                crate::auth::api::route(method, path, &head.headers, &params, peer).await
            }
            (&Method::GET, "/metrics") => prometheus(),
            (&Method::GET, "/nacos/v1/core/cluster/nodes") => status::cluster_nodes_v1(&params),
            (&Method::GET, "/nacos/v2/core/cluster/node/list") => status::cluster_nodes_v2(&params),
            (&Method::GET, "/nacos/v1/console/health/liveness") => text(StatusCode::OK, "OK"),
            (&Method::GET, "/nacos/v1/console/server/state") => console::server_state(),
            (&Method::GET, "/nacos/v1/console/metrics/history") => {
                console::metrics_history(&params)
            }
            (_, "/nacos/v1/console/namespaces") => namespaces::route(method, &params).await,
            (&Method::GET, "/nacos/v1/console/health/readiness") if draining => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            }
            (&Method::GET, "/nacos/v1/console/health/readiness") => text(StatusCode::OK, "OK"),
            _ => text(
                StatusCode::NOT_FOUND,
                format!("no route for {method} {path}"),
            ),
        };
        return Ok(resp);
    };
    let kind = kind_of(method, route);
    let udp_target = (method == Method::GET && route == "/instance/list")
        .then(|| udp_push::before_list(&params, user_agent, peer))
        .flatten();
    let result = route_naming(api, method, route, &params).await;
    let ok = result.is_ok();
    if let (true, Some(sub)) = (ok, udp_target) {
        udp_push::after_list(sub);
    }
    let resp = match result {
        Ok(resp) => resp,
        Err(f) => match api {
            Api::V1 => text(f.status, f.message),
            Api::V2 => json(f.status, wrap_v2(f.code, &f.message, "null")),
        },
    };
    with_core(|c| c.metrics.record(kind, started.elapsed(), ok));
    Ok(resp)
}

/// The naming API version and the route after `/nacos/v{1,2}/ns`, if `path` is a naming path.
fn naming_route(path: &str) -> Option<(Api, &str)> {
    if let Some(r) = path.strip_prefix("/nacos/v1/ns") {
        Some((Api::V1, r))
    } else {
        path.strip_prefix("/nacos/v2/ns").map(|r| (Api::V2, r))
    }
}

/// The metrics kind of a naming request (`route`: the path after `/nacos/v{1,2}/ns`).
fn kind_of(method: &Method, route: &str) -> Kind {
    match route {
        "/instance" if method != Method::GET => Kind::HttpInstance,
        "/instance/beat" => Kind::HttpBeat,
        "/instance" | "/instance/list" => Kind::HttpQuery,
        _ => Kind::HttpOther,
    }
}

/// How a request fares under overload (see `admission`).
fn class_of(method: &Method, path: &str) -> Class {
    let Some((_, route)) = naming_route(path) else {
        return Class::Essential; // metrics and health probes
    };
    match (method, route) {
        (_, "/operator/metrics") | (_, "/instance/beat") | (&Method::DELETE, _) => Class::Essential,
        (&Method::GET, _) => Class::Read,
        _ => Class::Write,
    }
}

async fn route_naming(
    api: Api,
    method: &Method,
    route: &str,
    p: &Params<'_>,
) -> Result<Resp, Failure> {
    match (method, route) {
        (&Method::POST, "/instance") => writes::register(api, p).await,
        (&Method::PUT, "/instance") => writes::update(api, p).await,
        (&Method::PATCH, "/instance") => writes::patch(api, p).await,
        (&Method::DELETE, "/instance") => writes::deregister(api, p).await,
        (&Method::GET, "/instance") => instance_detail(api, p),
        (&Method::PUT, "/instance/beat") => beat(api, p).await,
        (&Method::GET, "/instance/list") => instance_list(api, p),
        (&Method::GET, "/service/list") => service_list(api, p),
        (&Method::GET, "/service") => service_detail(api, p),
        (&Method::POST, "/service") => writes::configure_service(api, p, Some(false)).await,
        (&Method::PUT, "/service") => writes::configure_service(api, p, Some(true)).await,
        (&Method::DELETE, "/service") => writes::delete_service(api, p).await,
        (&Method::PUT, "/cluster") => writes::update_cluster(api, p).await,
        (&Method::GET, "/operator/metrics") => Ok(status::operator_metrics(api)),
        (&Method::GET, "/catalog/services") => catalog::services(p),
        (&Method::GET, "/catalog/service") => catalog::service(p),
        (&Method::GET | &Method::POST, "/catalog/instances") => catalog::instances(p),
        (&Method::GET, "/service/subscribers") => catalog::subscribers(p).await,
        _ => Err(Failure {
            status: StatusCode::NOT_FOUND,
            code: 20004,
            message: format!("no route for {method} {route}"),
        }),
    }
}

/// A text answer; a `&'static str` body is sent without a copy.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn wrap_v2(code: i32, message: &str, data: &str) -> String {
    format!(
        "{{\"code\":{code},\"message\":{},\"data\":{data}}}",
        json_str(message)
    )
}

fn ok_answer(api: Api) -> Resp {
    match api {
        Api::V1 => text(StatusCode::OK, "ok"),
        Api::V2 => json(StatusCode::OK, wrap_v2(0, "success", "\"ok\"")),
    }
}

async fn submit(client: ClientId, op: ClientOp) -> Result<OpOutcome, Failure> {
    outcome(with_core(|c| c.submit_client(client, op))).await
}

/// Waits for the owner shard's answer to a submitted op.
async fn outcome(
    submitted: Result<futures_channel::oneshot::Receiver<engine::OpResult>, Overloaded>,
) -> Result<OpOutcome, Failure> {
    match submitted?.await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: 30000,
            message: "request dropped".into(),
        }),
    }
}

/// The answer to a beat at the default 5 s interval.
const BEAT_OK: &[u8] = b"{\"clientBeatInterval\":5000,\"code\":10200,\"lightBeatEnabled\":true}";

async fn beat(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let http_params::Beat {
        key,
        host,
        port,
        cluster,
        reregister,
        ..
    } = p.beat()?;
    let reregister = match reregister {
        Some(spec) => Some(with_core(|c| spec.build(&mut c.interner)).map_err(|e| bad(e.0))?),
        None => None,
    };
    let client = ClientId::for_address(&host, port);
    let op = ClientOp::Beat {
        service: key,
        host,
        port,
        cluster: cluster.as_str().into(),
        reregister,
    };
    let body = match submit(client, op).await {
        // The default interval's answer is a constant: no formatting, no copy.
        Ok(OpOutcome::Beat { interval_ms: 5000 }) => Bytes::from_static(BEAT_OK),
        Ok(OpOutcome::Beat { interval_ms }) => Bytes::from(format!(
            "{{\"clientBeatInterval\":{interval_ms},\"code\":10200,\"lightBeatEnabled\":true}}"
        )),
        Ok(_) => Bytes::from_static(BEAT_OK),
        Err(f) if f.status == StatusCode::NOT_FOUND => Bytes::from_static(
            b"{\"clientBeatInterval\":5000,\"code\":20404,\"lightBeatEnabled\":true}",
        ),
        Err(f) => return Err(f),
    };
    Ok(match api {
        // The v2 beat answers the same bare object as v1 (Nacos InstanceControllerV2.beat).
        Api::V1 | Api::V2 => json(StatusCode::OK, body),
    })
}

fn instance_list(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let http_params::InstanceQuery {
        key,
        clusters,
        healthy_only,
    } = p.instance_query()?;
    let query = Query {
        clusters,
        healthy_only,
    };
    let index = with_core(|c| c.shared.index.clone());
    let bytes = index.read_instances(&key, unix_ms(), |view, now| {
        service_info::with_service_info(&key, view, NameStyle::Grouped, query, now, |b| match api {
            Api::V1 => Bytes::copy_from_slice(b),
            Api::V2 => {
                let mut out = Vec::with_capacity(b.len() + 48);
                out.extend_from_slice(b"{\"code\":0,\"message\":\"success\",\"data\":");
                out.extend_from_slice(b);
                out.push(b'}');
                Bytes::from(out)
            }
        })
    });
    Ok(json(StatusCode::OK, bytes))
}

fn instance_detail(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let (key, host, port, cluster) = p.instance_detail()?;
    let cluster = cluster.to_owned();
    let index = with_core(|c| c.shared.index.clone());
    let found = index.read(&key, |view| {
        let inst = view?.instances().find(|i| i.host == host && i.port == port && *i.cluster == *cluster)?;
        let mut out = String::with_capacity(256);
        let _ = write!(
            out,
            "{{\"service\":{},\"ip\":{},\"port\":{},\"clusterName\":{},\"weight\":{},\"healthy\":{},\"enabled\":{},\"ephemeral\":{},\"instanceId\":{},\"metadata\":{}}}",
            json_str(&key.grouped_name()),
            json_str(&inst.host.to_string()),
            inst.port,
            json_str(&inst.cluster),
            serde_json::to_string(&inst.weight).unwrap_or_else(|_| "1.0".into()),
            inst.healthy,
            inst.enabled,
            inst.ephemeral,
            json_str(&inst.id_for(&key)),
            inst.metadata().json()
        );
        Some(out)
    });
    let body = found.ok_or_else(|| Failure {
        status: StatusCode::NOT_FOUND,
        code: 20004,
        message: format!(
            "no matched ip found: {host}:{port} in cluster {cluster} of {}",
            key.grouped_name()
        ),
    })?;
    Ok(match api {
        Api::V1 => json(StatusCode::OK, body),
        Api::V2 => json(StatusCode::OK, wrap_v2(0, "success", &body)),
    })
}

fn service_list(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let page = p.service_page(api)?;
    let index = with_core(|c| c.shared.index.clone());
    let (count, names) = index.list_services(
        page.namespace,
        Some(page.group),
        page.page_no,
        page.page_size,
        api == Api::V1,
    );
    let names: Vec<String> = names.iter().map(|n| json_str(n)).collect();
    Ok(match api {
        Api::V1 => json(
            StatusCode::OK,
            format!("{{\"count\":{count},\"doms\":[{}]}}", names.join(",")),
        ),
        Api::V2 => json(
            StatusCode::OK,
            wrap_v2(
                0,
                "success",
                &format!("{{\"count\":{count},\"services\":[{}]}}", names.join(",")),
            ),
        ),
    })
}

fn service_detail(api: Api, p: &Params<'_>) -> Result<Resp, Failure> {
    let key = p.service_key()?;
    let index = with_core(|c| c.shared.index.clone());
    let defined = with_core(|c| c.cluster_defs_of(&key));
    let body = index.read(&key, |view| {
        let view = view?;
        let mut clusters: Vec<&str> = view.instances().map(|i| &*i.cluster).collect();
        clusters.extend(defined.iter().map(|(name, _)| &**name));
        clusters.sort_unstable();
        clusters.dedup();
        let clusters: Vec<String> = clusters
            .iter()
            .map(|c| {
                let def = defined.iter().find(|(name, _)| &**name == *c).map(|(_, d)| d);
                let checker = def.map_or_else(
                    || r#"{"type":"TCP"}"#.to_owned(),
                    |d| crate::http::writes::checker_json(&d.health_checker),
                );
                let metadata = def.map_or_else(|| "{}".to_owned(), |d| {
                    serde_json::to_string(&d.metadata).unwrap_or_else(|_| "{}".into())
                });
                format!(
                    "{{\"name\":{},\"healthChecker\":{checker},\"metadata\":{metadata}}}",
                    json_str(c)
                )
            })
            .collect();
        let ephemeral = view.kind() != Some(engine::view::InstanceKind::Persistent);
        Some(format!(
            "{{\"namespaceId\":{},\"groupName\":{},\"name\":{},\"protectThreshold\":{},\"metadata\":{},\"selector\":{{\"type\":\"none\"}},\"clusters\":[{}],\"ephemeral\":{ephemeral}}}",
            json_str(key.namespace()),
            json_str(key.group()),
            json_str(key.name()),
            view.protect_threshold,
            view.metadata.json(),
            clusters.join(",")
        ))
    });
    let body = body.ok_or_else(|| Failure {
        status: StatusCode::NOT_FOUND,
        code: 21008,
        message: format!("service {} not found", key.grouped_name()),
    })?;
    Ok(match api {
        Api::V1 => json(StatusCode::OK, body),
        Api::V2 => json(StatusCode::OK, wrap_v2(0, "success", &body)),
    })
}

fn prometheus() -> Resp {
    let mut out = String::with_capacity(8192);
    with_core(|c| {
        let s = &c.shared;
        let gauges: [(&str, &str, i64); 4] = [
            (
                "nacelle_instances",
                "Registered instances.",
                s.stat(|x| x.instances.load(Ordering::Relaxed)),
            ),
            (
                "nacelle_services",
                "Services.",
                s.stat(|x| x.services.load(Ordering::Relaxed)),
            ),
            (
                "nacelle_clients",
                "Clients (gRPC connections and HTTP ip:port clients).",
                s.stat(|x| x.clients.load(Ordering::Relaxed)),
            ),
            (
                "nacelle_subscriptions",
                "Subscriptions.",
                s.stat(|x| x.subscriptions.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let expired = s.stat(|x| x.expired_instances.load(Ordering::Relaxed) as i64);
        let _ = writeln!(out, "# HELP nacelle_expired_instances_total HTTP instances removed after their beats stopped.\n# TYPE nacelle_expired_instances_total counter\nnacelle_expired_instances_total {expired}");
        let paused = s.stat(|x| x.paused_beat_checks.load(Ordering::Relaxed) as i64);
        let _ = writeln!(out, "# HELP nacelle_paused_beat_checks_total Heartbeat checks that found the process had not run for a while (heartbeat clocks shifted instead of expiring).\n# TYPE nacelle_paused_beat_checks_total counter\nnacelle_paused_beat_checks_total {paused}");
        let cache = s.index.budget().used();
        let _ = writeln!(out, "# HELP nacelle_answer_cache_bytes Bytes of cached encoded answers.\n# TYPE nacelle_answer_cache_bytes gauge\nnacelle_answer_cache_bytes {cache}");
        crate::metrics::render_requests(&mut out, &s.metrics);
        crate::metrics::render_cluster(&mut out, s, c.all_loaded());
        crate::core::render_udp_metrics(&mut out, s);
        crate::metrics::render_raft(&mut out, &s.cp.raft().metrics());
    });
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
