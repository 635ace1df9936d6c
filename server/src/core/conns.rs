//! The gRPC connections a core holds: the table, opening and closing, idle detection
//! (Nacos's ClientDetection), and server-to-client requests such as pushes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use engine::model::ClientId;
use engine::shard::{ClientOp, ShardMsg};
use engine::view::ServiceView;
use futures_channel::{mpsc, oneshot};
use tracing::{debug, info};
use wire::proto::Payload;
use wire::service_info::{self, NameStyle, Query};

use super::Core;

/// A gRPC connection as the core tracks it.
pub struct ConnState {
    /// The id Nacos clients see (`<epochMs>_<ip>_<port>`).
    pub nacos_id: String,
    /// Peer address.
    pub remote: SocketAddr,
    /// ConnectionSetupRequest received: naming requests are accepted.
    pub registered: bool,
    /// Labels of the setup (`module=naming` for naming SDKs).
    pub labels: HashMap<String, String>,
    /// `clientVersion` of the setup (`Nacos-Java-Client:v2.4.0`...).
    pub client_version: String,
    /// The bi-stream towards the client, once opened.
    pub stream_tx: Option<mpsc::Sender<Result<Payload, tonic::Status>>>,
    /// Last time the client sent anything (mono ms).
    pub last_active_ms: u64,
    /// Closes the TCP connection when fired.
    pub kill: Option<oneshot::Sender<()>>,
    /// Next id of a server-to-client request.
    pub next_request_id: u64,
    /// An unanswered ClientDetectionRequest: (request id, sent at mono ms).
    pub detection: Option<(String, u64)>,
}

impl Core {
    /// Allocates a connection id whose client lives on this core.
    pub fn open_conn(&mut self, remote: SocketAddr, kill: oneshot::Sender<()>) -> u64 {
        self.next_conn_seq += 1;
        let id =
            engine::shard::conn_id(self.shared.conn_prefix, self.id, self.n, self.next_conn_seq);
        let now = self.now();
        self.conns.insert(
            id,
            ConnState {
                nacos_id: format!("{}_{}_{}", now.unix_ms, remote.ip(), remote.port()),
                remote,
                registered: false,
                labels: HashMap::new(),
                client_version: String::new(),
                stream_tx: None,
                last_active_ms: now.mono_ms,
                kill: Some(kill),
                next_request_id: 0,
                detection: None,
            },
        );
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// Forgets a connection and withdraws everything it published or subscribed.
    pub fn close_conn(&mut self, id: u64, why: &str) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        if let Some(kill) = conn.kill.take() {
            let _ = kill.send(());
        }
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        debug!(conn = %conn.nacos_id, remote = %conn.remote, why, "connection closed");
        let msg = ShardMsg::Client {
            client: ClientId::Conn(id),
            op: ClientOp::Disconnect,
            reply: None,
        };
        let now = self.now();
        self.shard_handle(now, msg);
        self.schedule_flush();
    }

    /// Closes a connection from the server side (idle, slow reader, bad input).
    pub fn kill_conn(&mut self, id: u64, why: &str) {
        if self.conns.contains_key(&id) {
            info!(conn = id, why, "closing connection");
            self.metrics
                .connections_closed_by_server
                .fetch_add(1, Ordering::Relaxed);
            self.close_conn(id, why);
        }
    }

    /// Notes that a connection showed life; `answered` is the request id it acknowledged.
    pub fn touch_conn(&mut self, id: u64, answered: Option<&str>) {
        let now = self.now().mono_ms;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.last_active_ms = now;
            if answered.is_some() || conn.detection.is_some() {
                // Any traffic proves the client alive, not only the matching answer.
                conn.detection = None;
            }
        }
    }

    /// Nacos's ClientDetection: ask idle connections whether they are alive; close those that
    /// did not answer the previous question in time.
    pub(super) fn detect_idle_clients(&mut self) {
        let now = self.now().mono_ms;
        let idle_ms = self.shared.cfg.client_idle_ms;
        let wait_ms = self.shared.cfg.client_detect_wait_ms;
        let mut dead = Vec::new();
        let mut ask = Vec::new();
        for (id, conn) in &self.conns {
            match &conn.detection {
                Some((_, sent)) if now.saturating_sub(*sent) >= wait_ms => dead.push(*id),
                Some(_) => {}
                None if now.saturating_sub(conn.last_active_ms) >= idle_ms => ask.push(*id),
                None => {}
            }
        }
        for id in dead {
            self.kill_conn(id, "no answer to ClientDetectionRequest");
        }
        for id in ask {
            let has_stream = self.conns.get(&id).is_some_and(|c| c.stream_tx.is_some());
            if !has_stream {
                // A connection that never opened its stream and stays silent is half-open.
                self.kill_conn(id, "idle without a bi-stream");
                continue;
            }
            if let Some(rid) =
                self.send_to_client(id, "ClientDetectionRequest", b"\"module\":\"internal\"")
            {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.detection = Some((rid, now));
                }
            }
        }
    }

    /// Sends a server-to-client request on a connection's stream; closes the connection if
    /// its queue is full (a client that does not read cannot make the server buffer forever).
    pub fn send_to_client(
        &mut self,
        conn_id: u64,
        kind: &str,
        body_fields: &[u8],
    ) -> Option<String> {
        let conn = self.conns.get_mut(&conn_id)?;
        let tx = conn.stream_tx.as_mut()?;
        conn.next_request_id += 1;
        let request_id = conn.next_request_id.to_string();
        let mut json = Vec::with_capacity(64 + body_fields.len());
        json.extend_from_slice(b"{\"headers\":{},\"requestId\":");
        wire::payload::push_str(&mut json, &request_id);
        if !body_fields.is_empty() {
            json.push(b',');
            json.extend_from_slice(body_fields);
        }
        json.extend_from_slice(b"}");
        match tx.try_send(Ok(wire::payload::seal(kind, json))) {
            Ok(()) => Some(request_id),
            Err(e) if e.is_full() => {
                self.metrics.pushes_dropped.fetch_add(1, Ordering::Relaxed);
                self.kill_conn(
                    conn_id,
                    "send queue full: the client does not read its stream",
                );
                None
            }
            Err(_) => None,
        }
    }

    pub(super) fn deliver_push(&mut self, subscriber: u64, clusters: &str, view: &ServiceView) {
        if self
            .conns
            .get(&subscriber)
            .is_none_or(|c| c.stream_tx.is_none())
        {
            return;
        }
        let mut fields = Vec::with_capacity(256 + view.instance_count * 360);
        fields.extend_from_slice(b"\"namespace\":");
        wire::payload::push_str(&mut fields, view.key.namespace());
        fields.extend_from_slice(b",\"serviceName\":");
        wire::payload::push_str(&mut fields, view.key.name());
        fields.extend_from_slice(b",\"groupName\":");
        wire::payload::push_str(&mut fields, view.key.group());
        fields.extend_from_slice(b",\"serviceInfo\":");
        let query = Query {
            clusters,
            healthy_only: false,
        };
        service_info::with_service_info(
            &view.key,
            Some(view),
            NameStyle::Bare,
            query,
            view.last_ref_ms,
            |b| fields.extend_from_slice(b),
        );
        fields.extend_from_slice(b",\"module\":\"naming\"");
        if self
            .send_to_client(subscriber, "NotifySubscriberRequest", &fields)
            .is_some()
        {
            self.metrics.pushes_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
