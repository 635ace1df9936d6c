//! `churn`: a steady open-loop mix of register, deregister and connection drop + reconnect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use super::{Ctx, Rng};
use crate::cli::ChurnArgs;
use crate::grpc::Conn;
use crate::layout::{instance_addr, instance_json};
use crate::stats::{bar, OpError, Pacer, Recorder, Report, Shared};

/// Operation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Register,
    Deregister,
    Reconnect,
}

/// Parses `--mix a,b,c` into cumulative weights.
fn parse_mix(s: &str) -> Result<[u64; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err(format!(
            "--mix `{s}`: expected three weights register,deregister,reconnect"
        ));
    }
    let mut w = [0u64; 3];
    for (i, p) in parts.iter().enumerate() {
        w[i] = p
            .parse()
            .map_err(|_| format!("--mix `{s}`: `{p}` is not a whole number"))?;
    }
    if w.iter().sum::<u64>() == 0 {
        return Err("--mix: all weights are zero".into());
    }
    Ok([w[0], w[0] + w[1], w[0] + w[1] + w[2]])
}

fn pick(cum: &[u64; 3], r: u64) -> Op {
    let x = r % cum[2];
    if x < cum[0] {
        Op::Register
    } else if x < cum[1] {
        Op::Deregister
    } else {
        Op::Reconnect
    }
}

struct Slot {
    conn: Option<Conn>,
    /// Services this connection has an instance in.
    regs: Vec<u32>,
}

struct Env {
    ctx: Ctx,
    services: u32,
    reregister: bool,
    slots: Vec<Mutex<Slot>>,
}

impl Env {
    fn instance(&self, slot: usize, s: u32) -> String {
        let (ip, port) = instance_addr(slot as u64 * u64::from(self.services) + u64::from(s));
        instance_json(&ip, port, self.ctx.metadata_entries, &[])
    }

    async fn write(&self, conn: &Conn, slot: usize, s: u32, register: bool) -> Result<(), OpError> {
        let inst = self.instance(slot, s);
        let body = self
            .ctx
            .names
            .instance_request(&self.ctx.service(s), &inst, register);
        conn.request("InstanceRequest", body).await.map(|_| ())
    }

    /// Runs one operation on `slot`; returns the kind actually done.
    async fn op(&self, slot: usize, mut op: Op, r: u64) -> (Op, Result<(), OpError>) {
        let Some(m) = self.slots.get(slot) else {
            return (op, Err(OpError::NotConnected));
        };
        let mut st = m.lock().await;
        if op == Op::Deregister && st.regs.is_empty() {
            op = Op::Register;
        }
        if op != Op::Reconnect && st.conn.as_ref().is_none_or(|c| !c.alive()) {
            // A dead connection is replaced first, as an SDK would.
            op = Op::Reconnect;
        }
        match op {
            Op::Register => {
                let mut s = (r % u64::from(self.services)) as u32;
                for _ in 0..self.services.min(64) {
                    if !st.regs.contains(&s) {
                        break;
                    }
                    s = (s + 1) % self.services;
                }
                let Some(conn) = st.conn.as_ref() else {
                    return (op, Err(OpError::NotConnected));
                };
                let res = self.write(conn, slot, s, true).await;
                if res.is_ok() && !st.regs.contains(&s) {
                    st.regs.push(s);
                }
                (op, res)
            }
            Op::Deregister => {
                let k = (r % st.regs.len().max(1) as u64) as usize;
                let s = st.regs[k];
                let Some(conn) = st.conn.as_ref() else {
                    return (op, Err(OpError::NotConnected));
                };
                let res = self.write(conn, slot, s, false).await;
                if res.is_ok() {
                    st.regs.swap_remove(k);
                }
                (op, res)
            }
            Op::Reconnect => {
                st.conn = None; // closes the transport: the server drops the instances
                let addrs = &self.ctx.grpc_addrs;
                let addr = &addrs[slot % addrs.len()];
                let conn = match Conn::connect(addr, slot, slot % addrs.len(), &self.ctx.opts(None))
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        st.regs.clear();
                        return (op, Err(e));
                    }
                };
                let mut res = Ok(());
                if self.reregister {
                    let regs = std::mem::take(&mut st.regs);
                    for s in regs {
                        match self.write(&conn, slot, s, true).await {
                            Ok(()) => st.regs.push(s),
                            Err(e) => res = Err(e),
                        }
                    }
                } else {
                    st.regs.clear();
                }
                st.conn = Some(conn);
                (op, res)
            }
        }
    }
}

/// Runs `churn`.
pub async fn run(a: &ChurnArgs) -> Result<Report, String> {
    let ctx = Ctx::new(&a.common)?;
    let cum = parse_mix(&a.mix)?;
    if a.connections == 0 || a.services == 0 || !(a.rate > 0.0 && a.duration > 0.0) {
        return Err("--connections, --services, --rate and --duration must be > 0".into());
    }
    let n = a.connections as usize;
    println!(
        "churn: {} ops/s for {} s over {n} connections to {}, {} services, mix register,deregister,reconnect = {}",
        a.rate,
        a.duration,
        ctx.grpc_addrs.join(","),
        a.services,
        a.mix
    );
    let (conns, connect_rec) = ctx.connect(&ctx.grpc_addrs, n, None, "connect").await?;
    let env = Arc::new(Env {
        ctx,
        services: a.services,
        reregister: !a.no_reregister,
        slots: conns
            .into_iter()
            .map(|conn| {
                Mutex::new(Slot {
                    conn,
                    regs: Vec::new(),
                })
            })
            .collect(),
    });
    let recs: Arc<[Shared; 3]> = Arc::new([Shared::new(), Shared::new(), Shared::new()]);
    let total = (a.rate * a.duration).round().max(1.0) as u64;
    let pb = bar(total, "churn", env.ctx.hidden);
    let pacer = Pacer::new(Some(a.rate));
    let inflight = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(a.seed);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let op = pick(&cum, rng.next_u64());
        let slot = rng.below(n as u64) as usize;
        let r = rng.next_u64();
        let t = pacer.at(i);
        tokio::time::sleep_until(t).await;
        let (env, recs, pb, inflight) = (env.clone(), recs.clone(), pb.clone(), inflight.clone());
        inflight.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let (done, res) = env.op(slot, op, r).await;
            let took = tokio::time::Instant::now().saturating_duration_since(t);
            let idx = match done {
                Op::Register => 0,
                Op::Deregister => 1,
                Op::Reconnect => 2,
            };
            recs[idx].lock().record(&res, took);
            inflight.fetch_sub(1, Ordering::Relaxed);
            pb.inc(1);
        });
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    let drain = tokio::time::timeout(env.ctx.timeout * 4 + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let took = start.elapsed();
    pb.finish_and_clear();
    let mut main = Recorder::new();
    let names = ["register", "deregister", "reconnect"];
    let snaps: Vec<Recorder> = recs.iter().map(Shared::snapshot).collect();
    for r in &snaps {
        main.merge(r);
    }
    let mut report = Report::new("churn", "op", main, took);
    for (name, r) in names.iter().zip(&snaps) {
        report.extra(&format!("{name}_ops"), json!(r.oks()));
        report.extra_latency(&format!("{name}_latency_us"), name, r);
    }
    let mut live = 0usize;
    let mut instances = 0usize;
    for s in &env.slots {
        let st = s.lock().await;
        if st.conn.as_ref().is_some_and(Conn::alive) {
            live += 1;
            instances += st.regs.len();
        }
    }
    report.extra("connections_alive_at_end", json!(live));
    report.extra("instances_at_end", json!(instances));
    report.extra(
        "unfinished",
        json!(if drain.is_err() {
            inflight.load(Ordering::Relaxed)
        } else {
            0
        }),
    );
    report.extra_latency("connect_latency_us", "initial connect", &connect_rec);
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let cum = parse_mix("45,45,10").unwrap();
        assert_eq!(cum, [45, 90, 100]);
        assert_eq!(pick(&cum, 0), Op::Register);
        assert_eq!(pick(&cum, 45), Op::Deregister);
        assert_eq!(pick(&cum, 95), Op::Reconnect);
        assert_eq!(pick(&parse_mix("0,0,1").unwrap(), 7), Op::Reconnect);
        assert!(parse_mix("1,2").is_err());
        assert!(parse_mix("0,0,0").is_err());
        assert!(parse_mix("a,1,1").is_err());
    }
}
