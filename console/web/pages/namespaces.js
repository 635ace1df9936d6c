// Namespaces: list, create, edit, delete (GET/POST/PUT/DELETE /v1/console/namespaces, with
// Nacos's parameter names).

import { get, post, put, del } from '../api.js';
import { el, table, message } from '../dom.js';

export async function render(view) {
  const status = el('div', { 'data-testid': 'status' });
  const say = (t, k = 'info') => status.replaceChildren(message(t, k));
  const changed = () => {
    window.dispatchEvent(new Event('nacelle:namespaces'));
    view.replaceChildren();
    render(view);
  };
  const act = async (what, f) => {
    try {
      await f();
      say(`${what}: done`, 'ok');
      changed();
    } catch (e) {
      say(`${what}: ${e.message}`, 'error');
    }
  };
  const res = await get('/v1/console/namespaces');
  const rows = res.data.map((n) => {
    const show = el('input', { value: n.namespaceShowName, 'data-testid': 'ns-show' });
    const desc = el('input', { value: n.namespaceDesc || '', 'data-testid': 'ns-desc' });
    const editable = n.type === 2 && n.created !== false;
    return el('tr', { 'data-namespace': n.namespace },
      el('td', {}, n.namespace || '(public)'),
      el('td', {}, editable ? show : n.namespaceShowName),
      el('td', {}, editable ? desc : (n.namespaceDesc || '')),
      el('td', { class: 'num' }, n.serviceCount ?? ''),
      el('td', {}, editable ? [
        el('button', { 'data-testid': 'ns-save', onclick: () => act(`edit ${n.namespace}`, () => put('/v1/console/namespaces', { namespace: n.namespace, namespaceShowName: show.value, namespaceDesc: desc.value })) }, 'Save'),
        el('button', { 'data-testid': 'ns-delete', onclick: () => confirm(`Delete namespace ${n.namespace}?`) && act(`delete ${n.namespace}`, () => del('/v1/console/namespaces', { namespaceId: n.namespace })) }, 'Delete'),
      ] : ''));
  });
  const id = el('input', { placeholder: 'id (optional)', 'data-testid': 'new-ns-id' });
  const show = el('input', { placeholder: 'name', required: true, 'data-testid': 'new-ns-name' });
  const desc = el('input', { placeholder: 'description', 'data-testid': 'new-ns-desc' });
  const create = el('form', { class: 'bar', onsubmit: (e) => {
    e.preventDefault();
    act(`create ${show.value}`, () => post('/v1/console/namespaces', { customNamespaceId: id.value.trim(), namespaceName: show.value, namespaceDesc: desc.value }));
  } }, id, show, desc, el('button', { type: 'submit', 'data-testid': 'new-ns' }, 'Create'));
  view.append(el('h1', {}, 'Namespaces'), status, table(['Id', 'Name', 'Description', 'Services', ''], rows, { 'data-testid': 'namespaces' }), el('h2', {}, 'New namespace'), create);
}
