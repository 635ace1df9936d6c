//! The health checks this core runs: of the persistent instances it owns (their client
//! `ip:port#false` hashes here) that this member is responsible for. The decisions are the
//! engine's `HealthChecker`; this file feeds it (instances from the Raft store's effects,
//! cluster definitions, membership changes), runs its probes as glommio tasks, and writes its
//! flips through Raft.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine::health::spec::{check_port, probe_addr};
use engine::health::{checks_here, CheckSpec, HealthChecker, HealthCommand, HealthConfig};
use engine::model::{Host, Instance, ServiceKey, Str};
use engine::store::naming::ClusterDefinition;
use tracing::{debug, warn};

use super::{with_core, Core};

/// One checked instance: the service and the address (Nacos's identity of a persistent
/// instance).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Service.
    pub service: ServiceKey,
    /// Address.
    pub host: Host,
    /// Port.
    pub port: u16,
}

/// What the core knows of a persistent instance it owns.
struct Known {
    cluster: Str,
    healthy: bool,
}

/// The core's health-check state.
pub struct HealthDriver {
    checker: HealthChecker<Target>,
    /// Every persistent instance this core owns, checked here or not.
    known: HashMap<Target, Known>,
    /// The wake-up a timer task is armed for (monotonic ms).
    armed_at: Option<u64>,
    /// Instances refused by the checker's bound since the last warning (one warning per
    /// 10,000 and the first, not one per instance: a replay adds a million at once).
    refused: u64,
}

impl HealthDriver {
    /// A driver for core `id` (its jitter seed differs per core and per process).
    pub fn new(seed: u64) -> HealthDriver {
        HealthDriver {
            checker: HealthChecker::new(HealthConfig {
                seed,
                ..HealthConfig::default()
            }),
            known: HashMap::new(),
            armed_at: None,
            refused: 0,
        }
    }
}

/// The check of an instance in `cluster` of `service`, and the address it probes.
fn check_of(
    defs: &HashMap<(ServiceKey, Str), ClusterDefinition>,
    target: &Target,
    cluster: &Str,
) -> Option<(std::net::SocketAddr, Arc<CheckSpec>)> {
    let def = defs.get(&(target.service.clone(), cluster.clone()));
    let (spec, port) = match def {
        None => (CheckSpec::Tcp, target.port),
        Some(d) => (
            CheckSpec::from(&d.health_checker),
            check_port(target.port, d.check_port, d.use_instance_port),
        ),
    };
    Some((probe_addr(&target.host, port)?, Arc::new(spec)))
}

impl Core {
    /// A persistent instance this core owns was registered or changed (store effect).
    pub(super) fn health_instance(&mut self, service: &ServiceKey, instance: &Instance) {
        let target = Target {
            service: service.clone(),
            host: instance.host.clone(),
            port: instance.port,
        };
        self.health.known.insert(
            target.clone(),
            Known {
                cluster: instance.cluster.clone(),
                healthy: instance.healthy,
            },
        );
        self.health_consider(&target);
    }

    /// A persistent instance this core owned was deregistered.
    pub(super) fn health_removed(&mut self, service: &ServiceKey, host: &Host, port: u16) {
        let target = Target {
            service: service.clone(),
            host: host.clone(),
            port,
        };
        self.health.known.remove(&target);
        self.health.checker.handle_remove(&target);
    }

    /// A cluster definition changed: its instances' checks follow.
    pub(super) fn health_cluster(&mut self, service: &ServiceKey, cluster: &Str) {
        let targets: Vec<Target> = self
            .health
            .known
            .iter()
            .filter(|(t, k)| t.service == *service && k.cluster == *cluster)
            .map(|(t, _)| t.clone())
            .collect();
        for t in targets {
            self.health_consider(&t);
        }
    }

    /// The member view changed: responsibility for addresses may have moved.
    pub(super) fn health_members(&mut self) {
        let targets: Vec<Target> = self.health.known.keys().cloned().collect();
        for t in targets {
            self.health_consider(&t);
        }
    }

    /// Adds, updates or drops `target` in the checker by responsibility and its check.
    fn health_consider(&mut self, target: &Target) {
        let Some(known) = self.health.known.get(target) else {
            return;
        };
        let mine = checks_here(&self.router.view().members, &target.host, target.port);
        let check = check_of(&self.cluster_defs, target, &known.cluster);
        let now_ms = self.now().mono_ms;
        match (mine, check) {
            // A NONE check probes nothing: such an instance holds no place in the checker
            // (and none of its bound); `known` brings it back if its cluster's check changes.
            (true, Some((addr, spec))) if spec.probes() => {
                let healthy = known.healthy;
                if self
                    .health
                    .checker
                    .handle_add(now_ms, target.clone(), addr, spec, healthy)
                    .is_err()
                {
                    if self.health.refused.is_multiple_of(10_000) {
                        warn!(
                            ?target,
                            refused_so_far = self.health.refused + 1,
                            "too many health-checked instances on this core; not checked"
                        );
                    }
                    self.health.refused += 1;
                }
            }
            _ => {
                self.health.checker.handle_remove(target);
            }
        }
        self.drive_health();
    }

    /// Runs what the checker asks for and arms its next wake-up.
    pub(super) fn drive_health(&mut self) {
        while let Some(cmd) = self.health.checker.poll_command() {
            match cmd {
                HealthCommand::Probe { id, addr, spec } => {
                    glommio::spawn_local(async move {
                        // A task may first run inside this call, which holds the core.
                        futures_lite::future::yield_now().await;
                        let result = crate::health_probe::probe(addr, &spec).await;
                        with_core(|c| {
                            let now_ms = c.now().mono_ms;
                            c.health.checker.handle_result(now_ms, id, result);
                            c.drive_health();
                        });
                    })
                    .detach();
                }
                HealthCommand::Flip { target, healthy } => self.write_flip(target, healthy),
            }
        }
        self.metrics
            .health
            .set(&self.health.checker.stats(), self.health.checker.len());
        let Some(at) = self.health.checker.poll_timeout() else {
            return;
        };
        if self.health.armed_at.is_some_and(|armed| armed <= at) {
            return;
        }
        self.health.armed_at = Some(at);
        let wait = at.saturating_sub(self.now().mono_ms);
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            glommio::timer::sleep(Duration::from_millis(wait)).await;
            with_core(|c| {
                if c.health.armed_at == Some(at) {
                    c.health.armed_at = None;
                }
                let now_ms = c.now().mono_ms;
                c.health.checker.handle_timeout(now_ms);
                c.drive_health();
            });
        })
        .detach();
    }

    /// Writes a flip through Raft, if this member still checks the instance (Nacos writes
    /// it only while responsible).
    fn write_flip(&mut self, target: Target, healthy: bool) {
        if !checks_here(&self.router.view().members, &target.host, target.port) {
            return;
        }
        debug!(?target, healthy, "health flip");
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            let written =
                crate::cp::naming::set_health(&target.service, &target.host, target.port, healthy)
                    .await;
            if let Err(e) = written {
                // The checker keeps counting: the next results flip it again.
                warn!(?target, healthy, error = ?e, "health flip not written");
                with_core(|c| {
                    if let Some(k) = c.health.known.get(&target) {
                        let stored = k.healthy;
                        c.health.checker.handle_healthy(&target, stored);
                    }
                });
            }
        })
        .detach();
    }
}
