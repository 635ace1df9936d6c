// Service detail: the service (protect threshold, metadata), its clusters (health-check
// settings, editable for persistent services: PUT /v1/ns/cluster), its instances
// (GET /v1/ns/catalog/instances, with a metadata filter; weight, online/offline and metadata
// edits through PUT /v1/ns/instance, one by one or for the selected ones), and who
// subscribes to it (GET /v1/ns/service/subscribers).

import { get, put } from '../api.js';
import { el, table, message } from '../dom.js';

export async function render(view, params, state) {
  const name = params.get('name') || '';
  const group = params.get('group') || 'DEFAULT_GROUP';
  const base = { serviceName: name, groupName: group, namespaceId: state.namespace };
  const detail = await get('/v1/ns/catalog/service', base);
  const svc = detail.service;
  const status = el('div', { class: 'status', 'data-testid': 'status' });
  const say = (text, kind = 'info') => status.replaceChildren(message(text, kind));
  const guard = async (what, f) => {
    try {
      await f();
      say(`${what}: done`, 'ok');
    } catch (e) {
      say(`${what}: ${e.message}`, 'error');
    }
  };

  view.append(
    el('p', {}, el('a', { href: '#/services' }, '‹ Services')),
    el('h1', { 'data-testid': 'service-name' }, `${svc.groupName}@@${svc.name}`),
    status,
    serviceForm(svc, base, guard),
    el('h2', {}, 'Clusters'),
    clustersTable(detail.clusters, svc, base, guard, () => render0()),
  );
  const instancesBox = el('section', { 'data-testid': 'instances-box' });
  const subsBox = el('section');
  view.append(instancesBox, subsBox);

  const filterIn = el('input', { 'data-testid': 'metadata-filter', placeholder: 'metadata filter: key=value[,key=value]' });
  async function loadInstances() {
    let res;
    try {
      res = await get('/v1/ns/catalog/instances', { ...base, pageNo: 1, pageSize: 1000, metadataFilter: filterIn.value.trim() });
    } catch (e) {
      instancesBox.replaceChildren(el('h2', {}, 'Instances'), message(e.message, 'error'));
      return;
    }
    const boxes = [];
    const rows = res.list.map((i) => {
      const box = el('input', { type: 'checkbox', 'data-testid': 'select' });
      boxes.push([box, i]);
      const weight = el('input', { class: 'weight', type: 'number', min: 0, max: 10000, step: 'any', value: i.weight, 'data-testid': 'weight' });
      const meta = JSON.stringify(i.metadata);
      const edit = async (fields) => {
        await put('/v1/ns/instance', {
          ...base, clusterName: i.clusterName, ip: i.ip, port: i.port, ephemeral: i.ephemeral,
          weight: i.weight, enabled: i.enabled, metadata: JSON.stringify(i.metadata), ...fields,
        });
        await settled(base, i, fields);
      };
      return el('tr', { 'data-instance': `${i.ip}:${i.port}` },
        el('td', {}, box),
        el('td', {}, `${i.ip}:${i.port}`),
        el('td', {}, i.clusterName),
        el('td', {}, weight, el('button', {
          'data-testid': 'save-weight',
          onclick: () => guard(`weight of ${i.ip}:${i.port}`, async () => { await edit({ weight: weight.value }); await loadInstances(); }),
        }, 'Save')),
        el('td', { class: i.healthy ? 'ok' : 'bad' }, i.healthy ? 'healthy' : 'unhealthy'),
        el('td', { 'data-testid': 'enabled' }, i.enabled ? 'online' : 'offline'),
        el('td', {}, el('button', {
          'data-testid': i.enabled ? 'offline' : 'online',
          onclick: () => guard(`${i.enabled ? 'offline' : 'online'} ${i.ip}:${i.port}`, async () => { await edit({ enabled: !i.enabled }); await loadInstances(); }),
        }, i.enabled ? 'Take offline' : 'Bring online')),
        el('td', { class: 'meta' }, meta === '{}' ? '' : meta, ' ', el('button', {
          'data-testid': 'edit-metadata',
          onclick: () => {
            const next = prompt('Metadata (JSON object)', meta);
            if (next === null) return;
            guard(`metadata of ${i.ip}:${i.port}`, async () => { JSON.parse(next); await edit({ metadata: next }); await loadInstances(); });
          },
        }, 'Edit')),
        el('td', {}, i.ephemeral ? 'ephemeral' : 'persistent'),
      );
    });
    const batch = (enabled) => guard(`${enabled ? 'online' : 'offline'} selected`, async () => {
      const chosen = boxes.filter(([b]) => b.checked).map(([, i]) => i);
      if (!chosen.length) throw new Error('select instances first');
      for (const i of chosen) {
        await put('/v1/ns/instance', {
          ...base, clusterName: i.clusterName, ip: i.ip, port: i.port, ephemeral: i.ephemeral,
          weight: i.weight, enabled, metadata: JSON.stringify(i.metadata),
        });
      }
      for (const i of chosen) await settled(base, i, { enabled });
      await loadInstances();
    });
    const all = el('input', { type: 'checkbox', onchange: (e) => boxes.forEach(([b]) => { b.checked = e.target.checked; }) });
    instancesBox.replaceChildren(
      el('h2', {}, `Instances (${res.count})`),
      el('form', { class: 'bar', onsubmit: (e) => { e.preventDefault(); loadInstances(); } },
        filterIn, el('button', { type: 'submit', 'data-testid': 'apply-filter' }, 'Filter'),
        el('button', { type: 'button', onclick: () => batch(false), 'data-testid': 'batch-offline' }, 'Offline selected'),
        el('button', { type: 'button', onclick: () => batch(true), 'data-testid': 'batch-online' }, 'Online selected')),
      rows.length
        ? table([all, 'Address', 'Cluster', 'Weight', 'Health', 'State', '', 'Metadata', 'Kind'], rows, { 'data-testid': 'instances' })
        : message('No instance.'),
    );
  }
  async function loadSubscribers() {
    try {
      const res = await get('/v1/ns/service/subscribers', { ...base, pageNo: 1, pageSize: 100 });
      const rows = res.subscribers.map((s) => el('tr', {},
        el('td', {}, s.addrStr), el('td', {}, s.type || ''), el('td', {}, s.agent), el('td', {}, s.app), el('td', {}, s.cluster || '')));
      subsBox.replaceChildren(el('h2', {}, `Subscribers of this node (${res.count})`),
        rows.length ? table(['Address', 'Kind', 'Agent', 'App', 'Clusters'], rows, { 'data-testid': 'subscribers' }) : message('No subscriber.'));
    } catch (e) {
      subsBox.replaceChildren(el('h2', {}, 'Subscribers'), message(e.message, 'error'));
    }
  }
  function render0() {
    view.replaceChildren();
    render(view, params, state);
  }
  await Promise.all([loadInstances(), loadSubscribers()]);
}

// An edit is answered once the node owning the instance applied it; the node this page reads
// from may show it a moment later (ephemeral instances replicate asynchronously). Wait for it
// (up to 5 s) so the table does not show the old value as if the edit had failed.
async function settled(base, inst, fields) {
  const want = (i) => (fields.weight === undefined || Number(i.weight) === Number(fields.weight))
    && (fields.enabled === undefined || i.enabled === (fields.enabled === true || fields.enabled === 'true'))
    && (fields.metadata === undefined || JSON.stringify(i.metadata) === JSON.stringify(JSON.parse(fields.metadata)));
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const res = await get('/v1/ns/catalog/instances', { ...base, clusterName: inst.clusterName, pageNo: 1, pageSize: 1000 });
    const now = res.list.find((i) => i.ip === inst.ip && i.port === inst.port);
    if (!now || want(now)) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error('the change is not visible on this node after 5 s');
}

function serviceForm(svc, base, guard) {
  const threshold = el('input', { type: 'number', min: 0, max: 1, step: 0.01, value: svc.protectThreshold, 'data-testid': 'protect-threshold' });
  const meta = el('textarea', { rows: 2, 'data-testid': 'service-metadata' });
  meta.value = JSON.stringify(svc.metadata || {});
  return el('form', { class: 'card', onsubmit: (e) => {
    e.preventDefault();
    guard('service', () => put('/v1/ns/service', { ...base, protectThreshold: threshold.value, metadata: meta.value }));
  } },
  el('dl', {},
    el('dt', {}, 'Kind'), el('dd', {}, svc.ephemeral ? 'ephemeral' : 'persistent'),
    el('dt', {}, 'Protect threshold'), el('dd', {}, threshold),
    el('dt', {}, 'Metadata'), el('dd', {}, meta)),
  el('button', { type: 'submit', 'data-testid': 'save-service' }, 'Save service'));
}

function clustersTable(clusters, svc, base, guard, reload) {
  const rows = clusters.map((c) => {
    const type = el('select', {}, ['TCP', 'HTTP', 'NONE'].map((t) => el('option', { value: t, selected: (c.healthChecker.type || 'TCP') === t }, t)));
    const path = el('input', { placeholder: 'HTTP path', value: c.healthChecker.path || '' });
    const port = el('input', { type: 'number', class: 'weight', value: c.defaultCheckPort });
    const usePort = el('input', { type: 'checkbox', checked: c.useIPPort4Check });
    const save = () => guard(`cluster ${c.name}`, async () => {
      const checker = { type: type.value };
      if (type.value === 'HTTP') Object.assign(checker, { path: path.value || '/', headers: '', expectedResponseCode: 200 });
      await put('/v1/ns/cluster', {
        ...base, clusterName: c.name, checkPort: port.value, useInstancePort4Check: usePort.checked,
        healthChecker: JSON.stringify(checker), metadata: JSON.stringify(c.metadata || {}),
      });
      reload();
    });
    const persistent = !svc.ephemeral;
    return el('tr', {},
      el('td', {}, c.name),
      el('td', {}, persistent ? type : (c.healthChecker.type || 'TCP')),
      el('td', {}, persistent ? path : (c.healthChecker.path || '')),
      el('td', {}, persistent ? port : c.defaultCheckPort),
      el('td', {}, persistent ? usePort : String(c.useIPPort4Check)),
      el('td', {}, JSON.stringify(c.metadata || {})),
      el('td', {}, persistent ? el('button', { onclick: save }, 'Save') : 'clients report health'));
  });
  return rows.length
    ? table(['Cluster', 'Health check', 'Path', 'Check port', 'Instance port', 'Metadata', ''], rows, { 'data-testid': 'clusters' })
    : message('No cluster.');
}
