//! # nacelle-server
//!
//! The Nacelle server: a Nacos-compatible registry for ephemeral instances. One glommio
//! executor per core; every core accepts on the same ports (SO_REUSEPORT), owns a hash slice of
//! clients and services (its engine shard), and answers reads from the lock-free published views.
//!
//! This library is the whole server; the `nacelle` binary (`src/main.rs`) only parses the
//! command line and calls [`run`] (or [`certs::run`] for `nacelle certs`). The integration
//! tests use it too: [`peer`] and [`certs`] directly, the rest through the binary.
//!
//! # Layout
//! - [`config`]: flags and environment.
//! - `cluster`: membership, the peer transport on core 0, routing of peer frames and
//!   forwarded HTTP writes.
//! - [`peer`]: the QUIC transport with mutual TLS, member lists; [`certs`]: `nacelle certs`.
//! - `core`: the per-core context: shard, connections, cross-core mesh, timers.
//! - `cp`: the CP half — the Raft store (`nacelle-raft`) of persistent instances and service
//!   and cluster definitions, its effects into the shards, the write path of the front ends.
//! - `auth`: Nacos-compatible authentication (`--auth`): the request checks of HTTP and gRPC,
//!   `/nacos/v1/auth/*`, the token secret's bootstrap.
//! - `admission`: overload shedding: which requests a busy core still serves.
//! - `grpc`: the Nacos SDK protocol (9848): unary requests and the bi-stream; `grpc_unary`:
//!   the unary request route.
//! - `health_probe`: the TCP and HTTP probes of persistent instances' health checks (the
//!   engine's `health::HealthChecker` decides when and what they mean).
//! - `http`: the Nacos OpenAPI v1/v2 (8848), Prometheus `/metrics`, and the web console at
//!   `/nacos/` with the console APIs (assets from the `nacelle-console` crate).
//! - `metrics`: per-core counters and latency histograms; `metrics_ring`: the console's live
//!   charts (a bounded per-core ring of samples, one a second).
//! - `rt`: hyper/tonic on glommio (executor, timer, IO).
//! - `trace`: `NACELLE_TRACE_CLIENT`, one client's story on this node, for investigations.
//! - [`run`] (here): the executors, listeners, signal handling and shutdown drain.

#![deny(missing_docs)]

mod admission;
mod auth;
pub mod certs;
mod cluster;
pub mod config;
mod core;
mod cp;
mod grpc;
mod grpc_unary;
mod health_probe;
mod http;
mod metrics;
mod metrics_ring;
pub mod peer;
mod rt;
mod trace;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{CpuSet, Latency, LocalExecutorPoolBuilder, PoolPlacement, Shares};
use tracing::{info, warn};

use crate::core::{Core, MeshBatch, Shared};

/// Where the `n` executors run: one pinned per CPU when they fill the CPUs this process may use
/// (its affinity mask, as set by `taskset` or a cgroup cpuset), otherwise unpinned threads that
/// the kernel places within that mask.
///
/// Why: pinning `n` executors over *all* online CPUs always picks the same first CPUs, so
/// several `--cores 1` nodes on one machine (`perf/scale.sh`, the fault scenarios) all ran on
/// CPU 0 while CPU 1 idled, and a node started under `taskset -c 1` left its mask for CPU 0.
fn placement(n: usize) -> PoolPlacement {
    let allowed = allowed_cpus();
    let cpus = match CpuSet::online() {
        Ok(cpus) => cpus.filter(|l| allowed.as_ref().is_none_or(|a| a.contains(&l.cpu))),
        Err(_) => return PoolPlacement::Unbound(n),
    };
    if cpus.len() == n {
        info!(cores = n, "executors pinned one per CPU");
        PoolPlacement::MaxSpread(n, Some(cpus))
    } else {
        info!(
            cores = n,
            cpus = cpus.len(),
            "executors not pinned: they do not fill the CPUs this process may use"
        );
        PoolPlacement::Unbound(n)
    }
}

/// The CPUs in this process's affinity mask (`None` if it cannot be read).
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size into it.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
        Some((0..max).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// How long a starting node waits for its ports to become free.
const BIND_PATIENCE: Duration = Duration::from_secs(5);

/// Runs a node with the resolved settings until SIGTERM or SIGINT: one executor per core, each
/// serving HTTP and gRPC on the shared ports, core 0 also the peer transport in a cluster.
/// Returns once every core has drained and stopped, or the first error that kept it from
/// starting.
pub fn run(cfg: config::Config) -> Result<(), String> {
    if !cfg.huge_pages {
        // Checked by the kernel at each page fault, so memory mapped before this is covered
        // as well. A kernel without the call only leaves huge pages as they were.
        // SAFETY: prctl with PR_SET_THP_DISABLE reads no memory of ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            warn!(
                "could not turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let http_addr = SocketAddr::new(cfg.bind, cfg.http_port);
    let grpc_addr = SocketAddr::new(cfg.bind, cfg.grpc_port);
    // Bind once up front so a taken port is a clear error, not a panic inside an executor.
    // The listening sockets of a process that just exited outlive it briefly (glommio's
    // io_uring holds them until the kernel has torn the ring down, ≈ 0.1–0.2 s): an immediate
    // restart waits for them a few seconds instead of failing.
    for addr in [http_addr, grpc_addr] {
        let mut waited = Duration::ZERO;
        loop {
            match std::net::TcpListener::bind(addr) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && waited < BIND_PATIENCE => {
                    if waited.is_zero() {
                        info!(%addr, "address in use; waiting up to {BIND_PATIENCE:?} for it");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    waited += Duration::from_millis(100);
                }
                Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
            }
        }
    }
    let n = cfg.cores;
    let cluster = match &cfg.cluster {
        Some(args) => Some(Arc::new(cluster::ClusterInfo::resolve(
            args,
            cfg.bind,
            cfg.http_port,
        )?)),
        None => None,
    };
    match &cluster {
        None => {
            info!(http = %http_addr, grpc = %grpc_addr, cores = n, "nacelle starting (standalone)")
        }
        Some(c) => info!(
            http = %http_addr,
            grpc = %grpc_addr,
            cores = n,
            me = %c.me,
            members = c.members.len(),
            "nacelle starting (cluster)"
        ),
    }
    // A cluster's Raft messages travel over the peer transport core 0 starts below.
    let (group, raft_outbox) = match &cluster {
        None => (cp::Group::Standalone, None),
        Some(c) => {
            let (outbox, rx) = cp::peers::PeerOutbox::new();
            let me = c.me.clone();
            let peers = c
                .members
                .iter()
                .map(cluster::node_id)
                .filter(|n| *n != me)
                .collect();
            (cp::Group::Cluster { me, peers, outbox }, Some(rx))
        }
    };
    let (cp, inboxes) = cp::start(cp::CpConfig {
        data_dir: cfg.data_dir.clone(),
        cores: n,
        group,
    })?;
    let inboxes = Arc::new(inboxes);
    auth::init(&cfg);
    let shared = Shared::new(cfg.clone(), cluster, cp);
    let mesh = MeshBuilder::<MeshBatch, _>::full(n, 1024);
    let stop = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let placement = placement(n);
    let spin = Duration::from_micros(shared.cfg.spin_before_park_us);
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("nacelle")
        .spin_before_park(spin)
        .on_all_shards(move || {
            let shared = shared.clone();
            let mesh = mesh.clone();
            let stop = stop.clone();
            let drained = drained.clone();
            let inboxes = inboxes.clone();
            let raft_outbox = raft_outbox.clone();
            async move {
                let (senders, receivers) = match mesh.join().await {
                    Ok(v) => v,
                    Err(e) => return Err(format!("cannot join the core mesh: {e}")),
                };
                let id = senders.peer_id();
                Core::install(id, shared.clone(), senders, receivers).await;
                if let Some(inbox) = inboxes.get(id) {
                    glommio::spawn_local(cp::run_inbox(inbox.clone())).detach();
                }
                let http = listen(http_addr).map_err(|e| format!("core {id}: HTTP bind: {e}"))?;
                let grpc = listen(grpc_addr).map_err(|e| format!("core {id}: gRPC bind: {e}"))?;
                if id == 0 {
                    if let Some(info) = shared.cluster.clone() {
                        let io = cluster::start(info, core::CorePeerEvents)?;
                        if let Some(rx) = raft_outbox.clone() {
                            glommio::spawn_local(cp::peers::run_outbox(rx, io.clone())).detach();
                        }
                        let view = io.borrow_mut().initial_view();
                        core::with_core(|c| {
                            c.set_peer_io(io);
                            c.broadcast_members(view);
                        });
                    }
                }
                // gRPC connections read and accept first (see `rt::set_request_queue`); their
                // requests, HTTP connections and everything else share the CPU equally.
                let ex = glommio::executor();
                let grpc_io = ex.create_task_queue(
                    Shares::Static(1000),
                    Latency::Matters(Duration::from_millis(5)),
                    "grpc-io",
                );
                let requests =
                    ex.create_task_queue(Shares::Static(1000), Latency::NotImportant, "requests");
                rt::set_request_queue(requests);
                // Nothing is answered before the persistent data is back in the views.
                shared.cp.replayed().await;
                glommio::spawn_local(http::serve(http, shared.cfg.max_message_bytes)).detach();
                glommio::spawn_local(metrics_ring::sample_loop()).detach();
                glommio::spawn_local_into(grpc::serve(grpc, shared.cfg.max_message_bytes), grpc_io)
                    .map_err(|e| format!("core {id}: cannot start the gRPC listener: {e}"))?
                    .detach();
                if id == 0 {
                    let admin = shared.cfg.auth.admin_password.clone();
                    glommio::spawn_local(auth::bootstrap::run(admin)).detach();
                    info!("nacelle ready: HTTP {http_addr}, gRPC {grpc_addr}");
                }
                while !stop.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
                if id == 0 {
                    info!("shutting down");
                }
                drain(id, &shared, &drained).await;
                Ok::<(), String>(())
            }
        })
        .map_err(|e| format!("cannot start executors: {e}"))?;
    for result in handles.join_all() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("executor failed: {e}")),
        }
    }
    info!("stopped");
    Ok(())
}

/// The shutdown of one core: client writes are refused from now on (the SDKs retry on
/// another node), and what this core already accepted goes to the peers at once; the core
/// waits until they acknowledged it, at most `--drain-ms`. Every core waits for the others,
/// since core 0 carries all peer traffic; core 0 then closes the peer connections, so peers
/// see the node leave at once instead of after their idle timeout.
async fn drain(id: usize, shared: &core::Shared, drained: &AtomicUsize) {
    shared.draining.store(true, Ordering::Relaxed);
    let Some(args) = shared.cfg.cluster.as_ref() else {
        return;
    };
    let bound = Duration::from_millis(args.drain_ms);
    let started = Instant::now();
    let first = core::with_core(|c| c.begin_drain());
    let mut left = first;
    while left > 0 && started.elapsed() < bound {
        glommio::timer::sleep(Duration::from_millis(2)).await;
        left = core::with_core(|c| c.unsynced_changes());
    }
    let after_ms = started.elapsed().as_millis() as u64;
    if left > 0 {
        let by_peer = core::with_core(|c| c.unsynced_by_peer());
        warn!(core = id, unacknowledged = left, after_ms, "shutdown: peers did not acknowledge every change in time ({by_peer}); verify repairs them when they next hear from the member that takes over");
    } else if first > 0 {
        info!(
            core = id,
            changes = first,
            after_ms,
            "shutdown: peers acknowledged every accepted change"
        );
    }
    drained.fetch_add(1, Ordering::AcqRel);
    let all_by = started + bound + Duration::from_millis(500);
    while drained.load(Ordering::Acquire) < shared.cfg.cores && Instant::now() < all_by {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    if id == 0 {
        if let Some(transport) = core::with_core(|c| c.peer_transport()) {
            transport.shutdown(Duration::from_millis(200)).await;
        }
    }
}

/// A listening socket shared by every core (SO_REUSEPORT) that a restarted process can bind
/// again at once (SO_REUSEADDR): without it, connections of a killed process that their
/// clients have not closed yet hold the port for up to a minute, and a crashed node could not
/// come back. glommio's own `bind` sets only SO_REUSEPORT.
fn listen(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::unix::io::IntoRawFd;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket we own; ownership moves to the listener.
    #[allow(unsafe_code)]
    let listener =
        unsafe { <glommio::net::TcpListener as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
    Ok(listener)
}
