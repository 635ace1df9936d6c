//! The proposer task: the write queue drained into batches, proposed here when this node
//! leads, forwarded to the leader otherwise, failed or retried within each write's deadline.

use super::*;

pub(super) async fn proposer(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Proposal>) {
    let mut carry: Option<Proposal> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let (mut count, mut bytes) = (first.count(), first.bytes());
        let mut items = vec![first];
        while count < ctx.max_batch_writes && bytes < ctx.max_batch_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    if count + p.count() > ctx.max_batch_writes
                        || bytes + p.bytes() > ctx.max_batch_bytes
                    {
                        carry = Some(p);
                        break;
                    }
                    count += p.count();
                    bytes += p.bytes();
                    items.push(p);
                }
                Err(_) => break,
            }
        }
        // Several batches in flight: openraft pipelines their entries (appended, replicated
        // and fsynced together), where one batch at a time made every entry — the leader's
        // own and each follower's forwarded one — wait for the previous one's whole round.
        // Tasks start in spawn order, so batches are proposed in the order they were taken.
        let Ok(permit) = ctx.in_flight.clone().acquire_owned().await else {
            return;
        };
        let task_ctx = ctx.clone();
        tokio::spawn(async move {
            submit(&task_ctx, items).await;
            drop(permit);
        });
    }
}

pub(super) fn reply_remote(ctx: &Ctx, r: &Remote, result: Result<Forwarded, ForwardError>) {
    ctx.calls.transport().send(
        r.from,
        RaftMessage::Reply {
            call: r.call,
            body: Reply::Forward(result),
        },
    );
}

/// Fails every item with `local` (local writes) / `remote` (forwarded batches).
pub(super) fn fail_all(ctx: &Ctx, items: Vec<Proposal>, local: WriteError, remote: ForwardError) {
    for item in items {
        match item {
            Proposal::Local(p) => {
                let _ = p.reply.send(Err(local.clone()));
            }
            Proposal::Remote(r) => reply_remote(ctx, &r, Err(remote.clone())),
        }
    }
}

/// Drops the items whose deadline passed (never handed to a leader: `NoLeader`).
pub(super) fn expire(ctx: &Ctx, items: &mut Vec<Proposal>, leader: Option<NodeId>) {
    let now = Instant::now();
    let (dead, live): (Vec<_>, Vec<_>) = items.drain(..).partition(|p| p.deadline() <= now);
    *items = live;
    fail_all(
        ctx,
        dead,
        WriteError::NoLeader,
        ForwardError::NotLeader { leader },
    );
}

/// Waits until the leader may have changed: metrics changed, `max` elapsed, or `deadline`.
pub(super) async fn wait_for_leader_change(ctx: &Ctx, deadline: Instant, max: Duration) {
    let mut m = ctx.raft.metrics();
    m.mark_unchanged();
    let until = deadline.min(Instant::now() + max);
    let _ = timeout_at(until, m.changed()).await;
}

pub(super) fn split_responses(
    items: &[Proposal],
    responses: Vec<StoreResponse>,
) -> Option<Vec<Vec<StoreResponse>>> {
    let total: usize = items.iter().map(Proposal::count).sum();
    if responses.len() != total {
        return None;
    }
    let mut it = responses.into_iter();
    Some(
        items
            .iter()
            .map(|p| it.by_ref().take(p.count()).collect())
            .collect(),
    )
}

/// What openraft reports of this node.
type Metrics = openraft::RaftMetrics<NodeId, EmptyNode>;

/// Runs `fut` unless the leadership this node saw when it started changes first: `None`
/// then (the caller fails the writes at once instead of letting them wait out the timeout).
async fn unless_leader_changes<T>(
    ctx: &Ctx,
    still: impl Fn(&Metrics) -> bool,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut metrics = ctx.raft.metrics();
    let changed = metrics.wait_for(|m| !still(m));
    tokio::select! {
        r = fut => Some(r),
        _ = changed => None,
    }
}

/// What one attempt at a batch left to do.
enum Attempt {
    /// Every item was answered.
    Done,
    /// These items were not proposed: find the leader again and retry them.
    Retry(Vec<Proposal>),
}

pub(super) async fn submit(ctx: &Arc<Ctx>, mut items: Vec<Proposal>) {
    loop {
        let (leader, is_leader) = {
            let m = ctx.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.state == ServerState::Leader)
        };
        expire(ctx, &mut items, leader);
        if items.is_empty() {
            return;
        }
        let Some(latest) = items.iter().map(Proposal::deadline).max() else {
            return;
        };
        let earliest = items.iter().map(Proposal::deadline).min().unwrap_or(latest);
        let attempt = match leader {
            Some(l) if l == ctx.id && is_leader => propose(ctx, items, latest).await,
            Some(l) if l != ctx.id => {
                // Forwarded batches are not forwarded again: their sender retries.
                let local = fail_remote(ctx, items, leader);
                if local.is_empty() {
                    return;
                }
                forward(ctx, l, local, latest).await
            }
            _ => {
                // No leader (or a stale view of ourselves): remote batches go back at once.
                let local = fail_remote(ctx, items, leader);
                if local.is_empty() {
                    return;
                }
                wait_for_leader_change(ctx, earliest, Duration::from_millis(100)).await;
                Attempt::Retry(local)
            }
        };
        match attempt {
            Attempt::Done => return,
            Attempt::Retry(rest) => items = rest,
        }
    }
}

/// Answers the forwarded batches among `items` with `NotLeader`; returns the local ones.
fn fail_remote(ctx: &Ctx, items: Vec<Proposal>, leader: Option<NodeId>) -> Vec<Proposal> {
    let (remote, local): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|p| matches!(p, Proposal::Remote(_)));
    fail_all(
        ctx,
        remote,
        WriteError::NoLeader,
        ForwardError::NotLeader { leader },
    );
    local
}

/// This node leads: proposes `items` as one entry and answers each with its response.
async fn propose(ctx: &Arc<Ctx>, items: Vec<Proposal>, latest: Instant) -> Attempt {
    let cmds: Vec<StoreCommand> = items
        .iter()
        .flat_map(|p| match p {
            Proposal::Local(p) => vec![p.cmd.clone()],
            Proposal::Remote(r) => r.cmds.clone(),
        })
        .collect();
    let earliest = items.iter().map(Proposal::deadline).min().unwrap_or(latest);
    let write = timeout_at(latest, ctx.raft.client_write(Batch(cmds)));
    let me = ctx.id;
    let leading = move |m: &Metrics| m.state == ServerState::Leader && m.current_leader == Some(me);
    let Some(result) = unless_leader_changes(ctx, leading, write).await else {
        // This node is no longer the leader (it saw a higher term: it restarted as the
        // leader of its old term, or was cut off): the batch may or may not be committed by
        // the next leader; do not make the writers wait out the timeout (perf/chaos
        // persistent-leader-kill).
        let e = "leadership lost".to_string();
        fail_all(ctx, items, WriteError::Timeout, ForwardError::Unknown(e));
        return Attempt::Done;
    };
    match result {
        Ok(Ok(resp)) => {
            answer(ctx, items, resp.log_id.index, resp.data);
            Attempt::Done
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            // Not proposed: find the leader again.
            wait_for_leader_change(ctx, earliest, Duration::from_millis(50)).await;
            Attempt::Retry(items)
        }
        Ok(Err(e)) => {
            let e = e.to_string();
            fail_all(
                ctx,
                items,
                WriteError::Failed(e.clone()),
                ForwardError::Unknown(e),
            );
            Attempt::Done
        }
        Err(_) => {
            let e = "not committed in time".to_string();
            fail_all(ctx, items, WriteError::Timeout, ForwardError::Unknown(e));
            Attempt::Done
        }
    }
}

/// Hands each item its share of a committed entry's responses (entry `index`).
fn answer(ctx: &Ctx, items: Vec<Proposal>, index: u64, responses: Vec<StoreResponse>) {
    let Some(split) = split_responses(&items, responses) else {
        let e = "response count mismatch".to_string();
        fail_all(
            ctx,
            items,
            WriteError::Failed(e.clone()),
            ForwardError::Unknown(e),
        );
        return;
    };
    for (item, responses) in items.into_iter().zip(split) {
        match item {
            Proposal::Local(p) => {
                let r = responses
                    .into_iter()
                    .next()
                    .map(|response| Written { response, index })
                    .ok_or_else(|| WriteError::Failed("no response".into()));
                let _ = p.reply.send(r);
            }
            Proposal::Remote(r) => reply_remote(ctx, &r, Ok(Forwarded { index, responses })),
        }
    }
}

/// Another node leads: forwards the local `items` to leader `l` as one batch.
async fn forward(ctx: &Arc<Ctx>, l: NodeId, items: Vec<Proposal>, latest: Instant) -> Attempt {
    let cmds: Vec<StoreCommand> = items
        .iter()
        .filter_map(|p| match p {
            Proposal::Local(p) => Some(p.cmd.clone()),
            Proposal::Remote(_) => None,
        })
        .collect();
    let earliest = items.iter().map(Proposal::deadline).min().unwrap_or(latest);
    let wait = latest.saturating_duration_since(Instant::now());
    let call = ctx.calls.call(l, Request::Forward(Batch(cmds)), wait);
    let following = move |m: &Metrics| m.current_leader == Some(l);
    let Some(reply) = unless_leader_changes(ctx, following, call).await else {
        // The leader we sent to is gone (election): the batch may or may not have been
        // proposed; do not make the writers wait out the timeout.
        fail_all(ctx, items, WriteError::Timeout, ForwardError::Busy);
        return Attempt::Done;
    };
    match reply {
        Ok(Reply::Forward(Ok(fw))) => {
            let permit = match ctx.apply_waiters.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return Attempt::Done,
            };
            let ctx2 = ctx.clone();
            tokio::spawn(async move {
                finish_forwarded(&ctx2, items, fw, latest).await;
                drop(permit);
            });
            Attempt::Done
        }
        Ok(Reply::Forward(Err(ForwardError::NotLeader { .. })))
        | Ok(Reply::Forward(Err(ForwardError::Busy)))
        | Err(crate::network::CallError::Overloaded) => {
            // Not proposed: try again (bounded by the deadlines).
            wait_for_leader_change(ctx, earliest, Duration::from_millis(50)).await;
            Attempt::Retry(items)
        }
        Ok(Reply::Forward(Err(ForwardError::Unknown(e)))) => {
            fail_all(ctx, items, WriteError::Failed(e), ForwardError::Busy);
            Attempt::Done
        }
        Ok(_) | Err(crate::network::CallError::Timeout) => {
            fail_all(ctx, items, WriteError::Timeout, ForwardError::Busy);
            Attempt::Done
        }
    }
}

/// A forwarded batch was applied on the leader: wait until it is applied here too, then
/// answer the writers (read-your-writes on this node).
pub(super) async fn finish_forwarded(
    ctx: &Ctx,
    items: Vec<Proposal>,
    fw: Forwarded,
    deadline: Instant,
) {
    let mut applied = ctx.applied.clone();
    let reached = timeout_at(deadline, applied.wait_for(|next| *next > fw.index)).await;
    let ok = matches!(reached, Ok(Ok(_)));
    let split = if ok {
        split_responses(&items, fw.responses)
    } else {
        None
    };
    match split {
        Some(split) => {
            for (item, responses) in items.into_iter().zip(split) {
                if let Proposal::Local(p) = item {
                    let r = responses
                        .into_iter()
                        .next()
                        .map(|response| Written {
                            response,
                            index: fw.index,
                        })
                        .ok_or_else(|| WriteError::Failed("no response".into()));
                    let _ = p.reply.send(r);
                }
            }
        }
        None => fail_all(ctx, items, WriteError::Timeout, ForwardError::Busy),
    }
}

// ---- incoming messages ----
