//! The membership task: forming a blank cluster once, and on the leader making the Raft
//! membership follow the member list (learners first, promoted when caught up).

use super::*;

pub(super) async fn membership(ctx: Arc<Ctx>, mut members: watch::Receiver<BTreeSet<NodeId>>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(500), members.changed()).await;
        let target = members.borrow_and_update().clone();
        let initialized = match ctx.raft.is_initialized().await {
            Ok(i) => i,
            Err(_) => return,
        };
        if !initialized {
            maybe_initialize(&ctx, &target).await;
            continue;
        }
        let leading = {
            let m = ctx.raft.metrics();
            let m = m.borrow();
            m.state == ServerState::Leader && m.current_leader == Some(ctx.id)
        };
        if leading {
            if let Err(e) = reconcile(&ctx, &target).await {
                tracing::info!("raft membership: {e}");
            }
        }
    }
}

/// Forms a new group, exactly once: only the lowest id of the list does it, and only when a
/// majority of the list (itself included) answers that it has no Raft state — an existing
/// group's members answer that they have, so a node that joins late never forms its own.
pub(super) async fn maybe_initialize(ctx: &Ctx, target: &BTreeSet<NodeId>) {
    if target.iter().next() != Some(&ctx.id) {
        return;
    }
    let mut blank = 1; // this node
    let mut probes = Vec::new();
    for &peer in target.iter().filter(|p| **p != ctx.id) {
        let calls = ctx.calls.clone();
        probes.push(tokio::spawn(async move {
            calls
                .call(peer, Request::Probe, Duration::from_millis(400))
                .await
        }));
    }
    for p in probes {
        match p.await {
            Ok(Ok(Reply::Probe { initialized: false })) => blank += 1,
            Ok(Ok(Reply::Probe { initialized: true })) => return,
            _ => {}
        }
    }
    if blank * 2 > target.len() {
        match ctx.raft.initialize(target.clone()).await {
            Ok(()) => tracing::info!(members = ?target, "raft: new group formed"),
            Err(e) => tracing::info!("raft: initialize: {e}"),
        }
    }
}

/// On the leader: one step towards the membership `target`.
pub(super) async fn reconcile(ctx: &Ctx, target: &BTreeSet<NodeId>) -> Result<(), String> {
    let (voters, learners, matched, last_log) = {
        let m = ctx.raft.metrics();
        let m = m.borrow();
        let mem = m.membership_config.membership();
        if mem.get_joint_config().len() > 1 {
            return Ok(()); // a change is under way
        }
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let learners: BTreeSet<NodeId> = mem.learner_ids().collect();
        let matched: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(k, v)| (*k, v.map(|l| l.index))).collect())
            .unwrap_or_default();
        (voters, learners, matched, m.last_log_index.unwrap_or(0))
    };
    if target.is_empty() {
        return Ok(());
    }
    if let Some(&new) = target
        .iter()
        .find(|id| !voters.contains(id) && !learners.contains(id))
    {
        tracing::info!(node = new, "raft: adding learner");
        ctx.raft
            .add_learner(new, EmptyNode {}, false)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let gone_learners: BTreeSet<NodeId> = learners.difference(target).copied().collect();
    if !gone_learners.is_empty() {
        tracing::info!(nodes = ?gone_learners, "raft: removing learners");
        ctx.raft
            .change_membership(ChangeMembers::RemoveNodes(gone_learners), false)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let caught_up = learners.iter().filter(|id| {
        matched
            .get(id)
            .copied()
            .flatten()
            .is_some_and(|m| m + ctx.promote_lag >= last_log)
    });
    let desired: BTreeSet<NodeId> = voters
        .intersection(target)
        .copied()
        .chain(caught_up.copied())
        .collect();
    if !desired.is_empty() && desired != voters {
        tracing::info!(voters = ?desired, "raft: changing voters");
        ctx.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(desired), false)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ---- the handle ----
