// Cluster: the members as this node sees them (GET /v1/core/cluster/nodes): state
// (UP/SUSPICIOUS/DOWN from its failure detector), Raft role, leader and term (this node's
// Raft view), version and what this node holds. Refreshes every 2 s.

import { get } from '../api.js';
import { el, table, message } from '../dom.js';

function raftOf(nodes) {
  for (const n of nodes) if (n.extendInfo && n.extendInfo.raft) return n.extendInfo.raft;
  return null;
}

export async function render(view) {
  const box = el('div');
  view.append(el('h1', {}, 'Cluster'), box);
  async function load() {
    let res;
    try {
      res = await get('/v1/core/cluster/nodes');
    } catch (e) {
      box.replaceChildren(message(e.message, 'error'));
      return;
    }
    const nodes = res.data;
    const raft = raftOf(nodes);
    const role = (n) => {
      const own = n.extendInfo && n.extendInfo.raft;
      if (own) return own.role;
      if (!raft) return '';
      if (raft.leader === n.address) return 'LEADER';
      if ((raft.voters || []).includes(n.address)) return 'FOLLOWER';
      if ((raft.learners || []).includes(n.address)) return 'LEARNER';
      return '';
    };
    const rows = nodes.map((n) => {
      const x = n.extendInfo || {};
      const holds = x.holds ? `${x.holds.services} services, ${x.holds.instances} instances, ${x.holds.raftRecords} Raft records` : '';
      return el('tr', { 'data-node': n.address },
        el('td', {}, n.address + (x.raft ? ' (this node)' : '')),
        el('td', {}, el('span', { class: `state ${n.state}`, 'data-testid': 'state' }, n.state)),
        el('td', {}, role(n)),
        el('td', {}, x.version || ''),
        el('td', {}, holds));
    });
    box.replaceChildren(
      raft ? el('p', { 'data-testid': 'raft' }, `Raft leader: ${raft.leader || 'none'} · term ${raft.term} · committed ${raft.committedIndex ?? '-'} · applied ${raft.appliedIndex ?? '-'}`) : '',
      table(['Member', 'State', 'Raft role', 'Version', 'Holds'], rows, { 'data-testid': 'members' }),
      el('p', { class: 'hint' }, `as seen by this node · ${new Date().toLocaleTimeString()}`));
  }
  await load();
  const timer = setInterval(load, 2000);
  return () => clearInterval(timer);
}
