//! Claims: heartbeat clients that a node other than the owner we follow holds as its own.
//! Views of the members disagree during an asymmetric partition; rather than deleting a
//! live instance when our owner expires it, we follow the claimant, and beats passing
//! through us are relayed to it so it does not expire the client for lack of beats.

use super::bump;
use crate::distro::{partition_of, Health, NodeId, PeerMsg};
use crate::shard::{ClientId, ClientOp, Command, Shard};

impl Shard {
    /// Notes that `from` holds heartbeat client `client` as its own while we follow another
    /// node for it.
    pub(super) fn note_claim(&mut self, from: &NodeId, client: &ClientId) {
        if !client.is_heartbeat() {
            return;
        }
        let now_ms = self.now.mono_ms;
        let follows_other = self
            .clients
            .get(client)
            .and_then(|c| c.replica.as_ref())
            .is_some_and(|i| &i.origin != from);
        if let (true, Some(d)) = (follows_other, self.distro.as_mut()) {
            // Bounded by the heartbeat clients we hold; stale ones go with the leases.
            d.claims.insert(client.clone(), (from.clone(), now_ms));
        }
    }

    pub(super) fn withdraw_claim(&mut self, from: &NodeId, client: &ClientId) {
        if let Some(d) = self.distro.as_mut() {
            if d.claims.get(client).is_some_and(|(n, _)| n == from) {
                d.claims.remove(client);
            }
        }
    }

    /// The owner we follow (`from`) dropped heartbeat client `client`; if another reachable
    /// node claimed it within a lease, follow that node instead (its data stays visible) and
    /// ask it for the client's state. Returns whether it did.
    pub(super) fn follow_claimant(&mut self, from: &NodeId, client: &ClientId) -> bool {
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_mut() else {
            return false;
        };
        let Some((claimant, at)) = d.claims.get(client).cloned() else {
            return false;
        };
        let reachable = d
            .members
            .peers
            .iter()
            .any(|(n, h)| n == &claimant && *h != Health::Down);
        if &claimant == from || !reachable || now_ms.saturating_sub(at) > d.cfg.replica_lease_ms {
            d.claims.remove(client);
            return false;
        }
        d.claims.remove(client);
        bump(&self.stats.distro.claims_followed, 1);
        self.set_origin(client, Some(claimant.clone()));
        if let Some(info) = self
            .clients
            .get_mut(client)
            .and_then(|c| c.replica.as_mut())
        {
            info.by_claim = true;
        }
        self.send_peer(
            claimant,
            partition_of(client),
            PeerMsg::Resync {
                clients: vec![client.clone()],
            },
        );
        true
    }

    /// A beat of heartbeat client `client` passed through this node towards the member our
    /// view makes responsible. The client is alive: renew our copy (its owner may be one we
    /// cannot hear, e.g. one-way loss), and relay the beat to a reachable node that claimed
    /// the client within a lease against our view — it believes it owns the client and would
    /// otherwise expire it for lack of beats, deleting a live instance there.
    pub(in crate::shard) fn on_beat_relayed(
        &mut self,
        client: ClientId,
        op: ClientOp,
        to_claimants: bool,
    ) {
        if !client.is_heartbeat() || !matches!(op, ClientOp::Beat { .. }) {
            return;
        }
        match self.clients.get(&client) {
            None => return,
            Some(c) if c.replica.is_some() => self.renew(&client),
            // Ours (in our view or not): the beat keeps it alive here. Applied as a plain
            // beat, it cannot make us the owner of anything.
            // It never re-creates an instance: the responsible node decides that.
            Some(_) => {
                let mut beat = op.clone();
                if let ClientOp::Beat { reregister, .. } = &mut beat {
                    *reregister = None;
                }
                let _ = self.apply_client_op(client.clone(), beat);
            }
        }
        if !to_claimants {
            return;
        }
        let now_ms = self.now.mono_ms;
        let Some(d) = self.distro.as_ref() else {
            return;
        };
        let Some((claimant, at)) = d.claims.get(&client) else {
            return;
        };
        let responsible = d.members.responsible_for(&client);
        let up = d
            .members
            .peers
            .iter()
            .any(|(n, h)| n == claimant && *h == Health::Up);
        if up
            && responsible != Some(claimant)
            && now_ms.saturating_sub(*at) <= d.cfg.replica_lease_ms
        {
            bump(&self.stats.distro.beats_relayed_to_claimants, 1);
            self.out.push_back(Command::RelayBeat {
                to: claimant.clone(),
                client,
                op,
            });
        }
    }
}
