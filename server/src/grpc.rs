//! The Nacos 2.x SDK protocol on the gRPC port: `/Request/request` (unary) and
//! `/BiRequestStream/requestBiStream` (setup, pushes and their acks), served by tonic's
//! generated services on hyper's HTTP/2, one connection per task on the accepting core.
//!
//! Handlers answer errors as `ErrorResponse` payloads rather than gRPC statuses (that is what
//! the SDKs parse), so `Result<_, Payload>` is the natural shape here.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use engine::model::{ClientId, ServiceKey};
use engine::shard::{ClientOp, OpError, OpOutcome, OpResult};
use engine::view::InstanceKind;
use futures_channel::{mpsc, oneshot};
use futures_lite::FutureExt;
use glommio::net::TcpListener;
use tracing::{debug, warn};
use wire::naming::{self, ConnectionSetup, NamingRequest, StreamAck};
use wire::payload::{self, code, json_str};
use wire::proto::bi_request_stream_server::{BiRequestStream, BiRequestStreamServer};
use wire::proto::request_server::{Request, RequestServer};
use wire::proto::Payload;
use wire::service_info::{self, NameStyle, Query};

use crate::admission::Class;
use crate::core::{unix_ms, with_core, Overloaded};
use crate::grpc_unary;
use crate::metrics::Kind;
use crate::rt::{GlommioIo, LocalExec, LocalTimer};

/// The connection a gRPC request arrived on (put into each request's extensions).
#[derive(Clone, Copy, Debug)]
pub struct ConnCtx {
    /// Our connection id.
    pub id: u64,
}

/// When a request's stream was accepted (put into each request's extensions).
#[derive(Clone, Copy, Debug)]
pub struct Arrived(pub Instant);

/// The tonic service implementation (stateless: state is per core).
#[derive(Clone, Copy, Default)]
pub struct NacosGrpc;

/// What the connection's service answers each stream with.
type GrpcFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;

/// Accepts gRPC connections on this core until the listener fails.
pub async fn serve(listener: TcpListener, max_message_bytes: usize) {
    // Dispatched by path here rather than through tonic's `Routes` (an axum router): its route
    // matching, boxing and response mapping cost more per unary call than this match. The
    // unary call itself skips tonic (`grpc_unary`); each generated server answers
    // UNIMPLEMENTED for the paths it does not know.
    let unary = RequestServer::new(NacosGrpc).max_decoding_message_size(max_message_bytes);
    let bi_stream =
        BiRequestStreamServer::new(NacosGrpc).max_decoding_message_size(max_message_bytes);
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "gRPC accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(remote) = stream.peer_addr() else {
            continue;
        };
        let (unary, bi_stream) = (unary.clone(), bi_stream.clone());
        glommio::spawn_local(async move {
            let (kill_tx, kill_rx) = oneshot::channel::<()>();
            let id = with_core(|c| c.open_conn(remote, kill_tx));
            let ctx = ConnCtx { id };
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    let arrived = Instant::now();
                    if req.uri().path() == grpc_unary::PATH {
                        return Box::pin(async move {
                            let resp = grpc_unary::call(ctx, arrived, req, max_message_bytes).await;
                            Ok(resp.map(tonic::body::Body::new))
                        }) as GrpcFuture;
                    }
                    let other_request = req.uri().path().starts_with("/Request/");
                    req.extensions_mut().insert(ctx);
                    // Accepted now; the handler sees how long the request queued.
                    req.extensions_mut().insert(Arrived(arrived));
                    if other_request {
                        tower_service::Service::call(&mut unary.clone(), req)
                    } else {
                        tower_service::Service::call(&mut bi_stream.clone(), req)
                    }
                });
            let conn = hyper::server::conn::http2::Builder::new(LocalExec)
                .timer(LocalTimer)
                .max_frame_size(1 << 20)
                .max_header_list_size(64 << 10)
                // h2's default (20) treats a client cancelling timed-out calls faster than an
                // overloaded core accepts them as a reset flood and closes the connection,
                // which removes every instance it registered. Still bounded per connection.
                .max_pending_accept_reset_streams(Some(1024))
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20))
                .serve_connection(GlommioIo::new(stream), svc);
            let killed = async {
                let _ = kill_rx.await;
                Ok::<(), hyper::Error>(())
            };
            if let Err(e) = conn.or(killed).await {
                debug!(conn = id, error = %e, "gRPC connection ended with an error");
            }
            with_core(|c| c.close_conn(id, "transport closed"));
        })
        .detach();
    }
}

#[tonic::async_trait]
impl Request for NacosGrpc {
    async fn request(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let Some(ctx) = req.extensions().get::<ConnCtx>().copied() else {
            return Err(tonic::Status::internal(
                "request without connection context",
            ));
        };
        let arrived = req
            .extensions()
            .get::<Arrived>()
            .map_or_else(Instant::now, |a| a.0);
        Ok(tonic::Response::new(
            unary(ctx, arrived, req.into_inner()).await,
        ))
    }
}

#[tonic::async_trait]
impl BiRequestStream for NacosGrpc {
    type requestBiStreamStream = mpsc::Receiver<Result<Payload, tonic::Status>>;

    async fn request_bi_stream(
        &self,
        req: tonic::Request<tonic::Streaming<Payload>>,
    ) -> Result<tonic::Response<Self::requestBiStreamStream>, tonic::Status> {
        let Some(ctx) = req.extensions().get::<ConnCtx>().copied() else {
            return Err(tonic::Status::internal(
                "request without connection context",
            ));
        };
        let inbound = req.into_inner();
        let opened = with_core(|c| {
            let queue = c.shared.cfg.conn_queue;
            let conn = c.conns.get_mut(&ctx.id)?;
            if conn.stream_tx.is_some() {
                return None;
            }
            let (tx, rx) = mpsc::channel(queue);
            conn.stream_tx = Some(tx);
            Some(rx)
        });
        let Some(rx) = opened else {
            return Err(tonic::Status::failed_precondition(
                "this connection already has a bi-stream",
            ));
        };
        glommio::spawn_local(read_stream(ctx, inbound)).detach();
        Ok(tonic::Response::new(rx))
    }
}

async fn read_stream(ctx: ConnCtx, mut inbound: tonic::Streaming<Payload>) {
    loop {
        match inbound.message().await {
            Ok(Some(p)) => on_stream_payload(ctx, p),
            Ok(None) => break,
            Err(status) => {
                debug!(conn = ctx.id, %status, "bi-stream error");
                break;
            }
        }
    }
    with_core(|c| c.close_conn(ctx.id, "bi-stream ended"));
}

fn on_stream_payload(ctx: ConnCtx, p: Payload) {
    let env = match payload::open(&p) {
        Ok(e) => e,
        Err(e) => {
            with_core(|c| c.kill_conn(ctx.id, &format!("bad bi-stream payload: {e}")));
            return;
        }
    };
    match env.kind {
        "ConnectionSetupRequest" => {
            let setup: ConnectionSetup = match serde_json::from_slice(env.body) {
                Ok(s) => s,
                Err(e) => {
                    with_core(|c| c.kill_conn(ctx.id, &format!("bad ConnectionSetupRequest: {e}")));
                    return;
                }
            };
            with_core(|c| {
                c.touch_conn(ctx.id, None);
                let Some(conn) = c.conns.get_mut(&ctx.id) else {
                    return;
                };
                conn.registered = true;
                conn.labels = setup.labels;
                debug!(conn = %conn.nacos_id, version = ?setup.client_version, "connection set up");
                if let Some(v) = &setup.client_version {
                    conn.client_version = v.chars().take(128).collect();
                }
                if setup.ability_table.is_some() {
                    c.send_to_client(
                        ctx.id,
                        "SetupAckRequest",
                        b"\"abilityTable\":{\"supportPersistentInstanceByGrpc\":true},\"module\":\"internal\"",
                    );
                }
            });
        }
        kind if kind.ends_with("Response") => {
            let ack: StreamAck = serde_json::from_slice(env.body).unwrap_or_default();
            with_core(|c| {
                c.touch_conn(ctx.id, ack.request_id.as_deref());
                if kind == "NotifySubscriberResponse" {
                    c.metrics
                        .pushes_acked
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        other => {
            debug!(
                conn = ctx.id,
                kind = other,
                "ignoring unexpected bi-stream request"
            );
            with_core(|c| c.touch_conn(ctx.id, None));
        }
    }
}

fn error_payload(e: &OpError) -> Payload {
    let code = match e {
        OpError::NotFound(_) => code::NOT_FOUND,
        OpError::Invalid(_) | OpError::Conflict(_) => code::INVALID_PARAM,
        OpError::Unavailable(_) => code::OVER_THRESHOLD,
    };
    payload::error(code, &e.to_string())
}

/// The "over threshold" answer if the core sheds a request of `class` that was accepted at
/// `arrived`.
fn shed(class: Class, arrived: Instant) -> Option<Payload> {
    (!with_core(|c| c.admit_queued(class, arrived))).then(overloaded)
}

fn overloaded() -> Payload {
    payload::error(
        code::OVER_THRESHOLD,
        "server is over its threshold, retry later",
    )
}

async fn await_op(
    rx: Result<oneshot::Receiver<OpResult>, Overloaded>,
) -> Result<OpOutcome, Payload> {
    let rx = rx.map_err(|_| overloaded())?;
    match rx.await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(error_payload(&e)),
        Err(_) => Err(payload::error(
            code::SERVER_ERROR,
            "the request was dropped by the server",
        )),
    }
}

pub(crate) async fn unary(ctx: ConnCtx, arrived: Instant, p: Payload) -> Payload {
    let started = Instant::now();
    let env = match payload::open(&p) {
        Ok(e) => e,
        Err(e) => return payload::error(code::BAD_GATEWAY, &e.to_string()),
    };
    if env.kind == "ServerCheckRequest" {
        let id = with_core(|c| {
            c.touch_conn(ctx.id, None);
            c.conns.get(&ctx.id).map(|c| c.nacos_id.clone())
        });
        let fields = format!(
            "\"connectionId\":{},\"supportAbilityNegotiation\":true",
            json_str(&id.unwrap_or_default())
        );
        return payload::ok("ServerCheckResponse", &fields, None);
    }
    let (registered, remote) = with_core(|c| {
        c.touch_conn(ctx.id, None);
        let conn = c.conns.get(&ctx.id);
        (
            conn.is_some_and(|c| c.registered),
            conn.map(|c| c.remote.ip()),
        )
    });
    if !registered {
        return payload::error(code::UN_REGISTER, "Connection is unregistered.");
    }
    if let Some(refused) =
        crate::auth::gate::grpc_gate(env.kind, env.headers, env.body, remote).await
    {
        return refused;
    }
    let (kind, response) = match env.kind {
        "HealthCheckRequest" => (
            Kind::GrpcInternal,
            payload::ok("HealthCheckResponse", "", None),
        ),
        "InstanceRequest" | "BatchInstanceRequest" => (
            Kind::GrpcInstance,
            instance(ctx, env.kind, env.body, arrived).await,
        ),
        "PersistentInstanceRequest" => (
            Kind::GrpcInstance,
            persistent_instance(env.body, arrived).await,
        ),
        "ServiceQueryRequest" => (
            Kind::GrpcQuery,
            shed(Class::Read, arrived).unwrap_or_else(|| query(env.body)),
        ),
        "SubscribeServiceRequest" => (Kind::GrpcSubscribe, subscribe(ctx, env.body, arrived).await),
        "ServiceListRequest" => (
            Kind::GrpcServiceList,
            shed(Class::Read, arrived).unwrap_or_else(|| service_list(env.body)),
        ),
        other => (
            Kind::GrpcInternal,
            payload::error(
                code::NO_HANDLER,
                &format!("{other} is not supported: Nacelle serves the naming module only"),
            ),
        ),
    };
    let ok = response
        .metadata
        .as_ref()
        .is_some_and(|m| m.r#type != "ErrorResponse");
    with_core(|c| c.metrics.record(kind, started.elapsed(), ok));
    response
}

fn parse(body: &[u8]) -> Result<(NamingRequest, ServiceKey), Payload> {
    NamingRequest::parse_keyed(body).map_err(|e| payload::error(code::INVALID_PARAM, &e.0))
}

async fn instance(ctx: ConnCtx, kind: &str, body: &[u8], arrived: Instant) -> Payload {
    let (req, key) = match parse(body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let op_type = req.kind.clone().unwrap_or_default();
    let class = if op_type.starts_with("deregister") || op_type.starts_with("batchDeregister") {
        Class::Essential
    } else {
        Class::Write
    };
    if let Some(refused) = shed(class, arrived) {
        return refused;
    }
    let built = with_core(|c| naming::instance_op(kind, req, key.clone(), &mut c.interner));
    let op = match built {
        Ok(op) => op,
        Err(msg) => return payload::error(code::INVALID_PARAM, &msg),
    };
    if matches!(
        op,
        ClientOp::Register { .. } | ClientOp::BatchRegister { .. }
    ) {
        if let Err(e) = crate::cp::naming::check_kind(&key, InstanceKind::Ephemeral) {
            return cp_error(e);
        }
    }
    let rx = with_core(|c| c.submit_client(ClientId::Conn(ctx.id), op));
    let response_kind = if kind == "BatchInstanceRequest" {
        "BatchInstanceResponse"
    } else {
        "InstanceResponse"
    };
    match await_op(rx).await {
        Ok(_) => payload::ok(
            response_kind,
            &format!("\"type\":{}", json_str(&op_type)),
            None,
        ),
        Err(e) => e,
    }
}

/// A CP refusal or failure as Nacos answers it over gRPC (an `ErrorResponse` whose error
/// code is the HTTP-like code: 400 for the service-kind rule, 503 without a leader).
fn cp_error(e: crate::cp::CpError) -> Payload {
    match e {
        // Nacos's `NacosRuntimeException` message carries its code in the text.
        crate::cp::CpError::KindRule(message) => payload::error(
            code::INVALID_PARAM,
            &format!("errCode: 400, errMsg: {message} "),
        ),
        crate::cp::CpError::Refused { code, message } => payload::error(i32::from(code), &message),
        crate::cp::CpError::Unavailable(message) => payload::error(code::OVER_THRESHOLD, &message),
    }
}

/// `PersistentInstanceRequest` (Nacos 2.3+): register or deregister a persistent instance
/// through Raft; answered with `InstanceResponse` once committed and visible here.
async fn persistent_instance(body: &[u8], arrived: Instant) -> Payload {
    let (req, key) = match parse(body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let op_type = req.kind.clone().unwrap_or_default();
    let class = if op_type == "deregisterInstance" {
        Class::Essential
    } else {
        Class::Write
    };
    if let Some(refused) = shed(class, arrived) {
        return refused;
    }
    let Some(instance) = req.instance else {
        return payload::error(code::INVALID_PARAM, "instance is required");
    };
    let spec = match instance.into_spec() {
        Ok(s) => s,
        Err(e) => return payload::error(code::INVALID_PARAM, &e.0),
    };
    let result = match op_type.as_str() {
        "registerInstance" => {
            // The request says what it is: the instance's own `ephemeral` field is the SDK's
            // default (true) and does not count here.
            let spec = engine::InstanceSpec {
                ephemeral: Some(false),
                ..spec
            };
            let built = with_core(|c| spec.build(&mut c.interner));
            match built {
                Ok(instance) => crate::cp::naming::register(key, &instance).await,
                Err(e) => return payload::error(code::INVALID_PARAM, &e.0),
            }
        }
        "deregisterInstance" => {
            let host = match engine::Host::parse(&spec.ip) {
                Ok(h) => h,
                Err(e) => return payload::error(code::INVALID_PARAM, &e.0),
            };
            let Ok(port) = u16::try_from(spec.port) else {
                return payload::error(
                    code::INVALID_PARAM,
                    &format!("port {} is out of range", spec.port),
                );
            };
            crate::cp::naming::deregister(key, &host, port).await
        }
        other => {
            return payload::error(
                code::INVALID_PARAM,
                &format!("Unsupported request type {other}"),
            )
        }
    };
    match result {
        Ok(()) => payload::ok(
            "InstanceResponse",
            &format!("\"type\":{}", json_str(&op_type)),
            None,
        ),
        Err(e) => cp_error(e),
    }
}

fn service_info_response(kind: &str, key: &ServiceKey, query: Query<'_>) -> Payload {
    let index = with_core(|c| c.shared.index.clone());
    let mut json = Vec::with_capacity(1024);
    json.extend_from_slice(
        b"{\"resultCode\":200,\"errorCode\":0,\"message\":\"success\",\"serviceInfo\":",
    );
    index.read_instances(key, unix_ms(), |view, now| {
        service_info::with_service_info(key, view, NameStyle::Bare, query, now, |b| {
            json.extend_from_slice(b)
        })
    });
    json.extend_from_slice(b",\"success\":true}");
    payload::seal(kind, json)
}

fn query(body: &[u8]) -> Payload {
    let (req, key) = match parse(body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let clusters = req.cluster.as_deref().unwrap_or("");
    service_info_response(
        "QueryServiceResponse",
        &key,
        Query {
            clusters,
            healthy_only: req.healthy_only.unwrap_or(false),
        },
    )
}

async fn subscribe(ctx: ConnCtx, body: &[u8], arrived: Instant) -> Payload {
    let (req, key) = match parse(body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let clusters = req.clusters.clone().unwrap_or_default();
    let subscribing = req.subscribe.unwrap_or(true);
    let class = if subscribing {
        Class::Write
    } else {
        Class::Essential
    };
    if let Some(refused) = shed(class, arrived) {
        return refused;
    }
    let op = if subscribing {
        ClientOp::Subscribe {
            service: key.clone(),
            clusters: clusters.as_str().into(),
        }
    } else {
        ClientOp::Unsubscribe {
            service: key.clone(),
        }
    };
    let rx = with_core(|c| c.submit_client(ClientId::Conn(ctx.id), op));
    if let Err(e) = await_op(rx).await {
        return e;
    }
    service_info_response(
        "SubscribeServiceResponse",
        &key,
        Query {
            clusters: &clusters,
            healthy_only: false,
        },
    )
}

fn service_list(body: &[u8]) -> Payload {
    let req = match NamingRequest::parse(body) {
        Ok(r) => r,
        Err(e) => return payload::error(code::INVALID_PARAM, &e.0),
    };
    let (namespace, group, page_no, page_size) = req.service_page();
    let index = with_core(|c| c.shared.index.clone());
    let (count, page) = index.list_services(namespace, Some(group), page_no, page_size, true);
    let names: Vec<String> = page.iter().map(|n| json_str(n)).collect();
    let fields = format!(
        "\"message\":\"success\",\"count\":{count},\"serviceNames\":[{}]",
        names.join(",")
    );
    payload::ok("ServiceListResponse", &fields, None)
}
