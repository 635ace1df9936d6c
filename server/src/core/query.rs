//! Reads of another core's state for the introspection APIs (the console's subscriber list):
//! a job runs on the core that owns the state, as a message on the cross-core mesh, and its
//! answer comes back on a oneshot channel. Nothing is shared: the job reads its own core.

use engine::model::{ClientId, ServiceKey};
use engine::shard::client_shard;
use futures_channel::oneshot;

use super::{with_core, Core, CoreMsg};

/// Work for another core.
pub type Job = Box<dyn FnOnce(&mut Core) + Send>;

/// Runs `f` on core `core` and answers its result (`None` if the core is gone).
pub async fn on_core<R: Send + 'static>(
    core: usize,
    f: impl FnOnce(&mut Core) -> R + Send + 'static,
) -> Option<R> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |c| {
        let _ = tx.send(f(c));
    });
    with_core(|c| {
        if c.id == core {
            job(c);
        } else {
            c.send_core(core, CoreMsg::Run(job));
        }
    });
    rx.await.ok()
}

/// One subscriber of a service, as this node knows it.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// Its address (gRPC: the connection's peer; UDP: where pushes go).
    pub addr: std::net::SocketAddr,
    /// `grpc` or `udp`.
    pub kind: &'static str,
    /// The client's version (gRPC setup) or user agent.
    pub agent: String,
    /// The application name it gave, if any.
    pub app: String,
    /// Cluster filter (comma-separated, empty: all).
    pub clusters: String,
}

/// Most subscribers one answer lists (the page is cut from these).
pub const MAX_SUBSCRIBERS: usize = 10_000;

/// The subscribers of `key` on this node: the gRPC connections (looked up on the cores
/// holding them) and the UDP push targets, at most [`MAX_SUBSCRIBERS`].
pub async fn subscribers(key: ServiceKey) -> Vec<Subscriber> {
    let (owner, n) = with_core(|c| (c.shared.index.owner_of(&key), c.n));
    let Some((grpc, udp)) = on_core(owner, move |c| c.subscribers_here(&key)).await else {
        return Vec::new();
    };
    let mut out: Vec<Subscriber> = udp;
    let mut by_core: Vec<Vec<(u64, String)>> = vec![Vec::new(); n];
    for (conn, clusters) in grpc {
        if conn == super::UDP_SUBSCRIBER {
            continue;
        }
        by_core[client_shard(&ClientId::Conn(conn), n)].push((conn, clusters));
    }
    for (core, conns) in by_core.into_iter().enumerate() {
        if conns.is_empty() {
            continue;
        }
        let found = on_core(core, move |c| {
            conns
                .into_iter()
                .filter_map(|(id, clusters)| {
                    let s = c.conns.get(&id)?;
                    Some(Subscriber {
                        addr: s.remote,
                        kind: "grpc",
                        agent: s.client_version.clone(),
                        app: s
                            .labels
                            .get("AppName")
                            .or_else(|| s.labels.get("app"))
                            .cloned()
                            .unwrap_or_default(),
                        clusters,
                    })
                })
                .collect::<Vec<_>>()
        })
        .await;
        out.extend(found.unwrap_or_default());
    }
    out.truncate(MAX_SUBSCRIBERS);
    out
}

impl Core {
    /// The gRPC subscriber connections (id, clusters) and UDP targets of a service this core
    /// owns.
    fn subscribers_here(&self, key: &ServiceKey) -> (Vec<(u64, String)>, Vec<Subscriber>) {
        let grpc = self
            .shard
            .subscribers_of(key)
            .into_iter()
            .take(MAX_SUBSCRIBERS)
            .map(|(id, clusters)| (id, clusters.to_string()))
            .collect();
        let udp = self
            .udp
            .as_ref()
            .map(|u| u.targets_of(key))
            .unwrap_or_default()
            .into_iter()
            .take(MAX_SUBSCRIBERS)
            .map(|(addr, clusters, _healthy_only, app)| Subscriber {
                addr,
                kind: "udp",
                agent: String::new(),
                app: app.to_string(),
                clusters: clusters.to_string(),
            })
            .collect();
        (grpc, udp)
    }
}
