//! The dispatcher task: incoming Raft messages — replies complete pending calls, requests go
//! to openraft (a bounded number at a time), forwarded batches to the proposer.

use super::proposer::reply_remote;
use super::*;

pub(super) async fn dispatcher(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<(NodeId, RaftMessage)>) {
    while let Some((from, msg)) = rx.recv().await {
        match msg {
            RaftMessage::Reply { call, body } => ctx.calls.complete(call, body),
            RaftMessage::Request {
                call,
                body: Request::Forward(Batch(cmds)),
            } => {
                let bytes = cmds
                    .iter()
                    .map(|c| postcard::experimental::serialized_size(c).unwrap_or(0))
                    .sum();
                let remote = Remote {
                    from,
                    call,
                    cmds,
                    bytes,
                    deadline: Instant::now() + ctx.write_timeout,
                };
                if let Err(e) = ctx.proposals.try_send(Proposal::Remote(remote)) {
                    let r = match e {
                        mpsc::error::TrySendError::Full(Proposal::Remote(r))
                        | mpsc::error::TrySendError::Closed(Proposal::Remote(r)) => r,
                        _ => continue,
                    };
                    reply_remote(&ctx, &r, Err(ForwardError::Busy));
                }
            }
            RaftMessage::Request { call, body } => {
                let Ok(permit) = ctx.handlers.clone().acquire_owned().await else {
                    return;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let reply = handle_request(&ctx, body).await;
                    if let Some(body) = reply {
                        ctx.calls
                            .transport()
                            .send(from, RaftMessage::Reply { call, body });
                    }
                    drop(permit);
                });
            }
        }
    }
}

pub(super) async fn handle_request(ctx: &Ctx, body: Request) -> Option<Reply> {
    Some(match body {
        Request::Append(r) => Reply::Append(ctx.raft.append_entries(r).await),
        Request::Vote(r) => Reply::Vote(ctx.raft.vote(r).await),
        Request::Snapshot(r) => Reply::Snapshot(ctx.raft.install_snapshot(r).await),
        Request::Probe => Reply::Probe {
            initialized: ctx.raft.is_initialized().await.unwrap_or(true),
        },
        Request::Forward(_) => return None, // handled by the dispatcher
    })
}

// ---- membership ----
