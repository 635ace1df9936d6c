// Service list: search by name and group (substrings), hide empty services, server-side
// paging (GET /v1/ns/catalog/services). The search lives in the hash, so back/forward and
// reloads keep it.

import { get } from '../api.js';
import { el, table, message, hashLink } from '../dom.js';

export async function render(view, params, state) {
  const name = params.get('name') || '';
  const group = params.get('group') || '';
  const hideEmpty = params.get('hideEmpty') === 'true';
  const page = Math.max(1, Number(params.get('page')) || 1);
  const size = Number(params.get('size')) || 20;

  const nameIn = el('input', { id: 'svc-name', 'data-testid': 'search-name', placeholder: 'service name contains', value: name });
  const groupIn = el('input', { id: 'svc-group', 'data-testid': 'search-group', placeholder: 'group contains', value: group });
  const emptyIn = el('input', { type: 'checkbox', checked: hideEmpty, 'data-testid': 'hide-empty' });
  const sizeIn = el('select', { 'data-testid': 'page-size' },
    [10, 20, 50, 100, 500].map((n) => el('option', { value: n, selected: n === size }, `${n} / page`)));
  const go = (p) => {
    location.hash = hashLink('services', {
      name: nameIn.value.trim(), group: groupIn.value.trim(), hideEmpty: emptyIn.checked, page: p, size: sizeIn.value,
    });
  };
  const form = el('form', { class: 'bar', onsubmit: (e) => { e.preventDefault(); go(1); } },
    nameIn, groupIn, el('label', {}, emptyIn, ' hide empty'), sizeIn,
    el('button', { type: 'submit', 'data-testid': 'search' }, 'Search'));
  view.append(el('h1', {}, 'Services'), form);

  const res = await get('/v1/ns/catalog/services', {
    pageNo: page, pageSize: size, serviceNameParam: name, groupNameParam: group,
    hasIpCount: hideEmpty, namespaceId: state.namespace, withInstances: false,
  });
  const pages = Math.max(1, Math.ceil(res.count / size));
  const rows = res.serviceList.map((s) => el('tr', { 'data-service': `${s.groupName}@@${s.name}` },
    el('td', {}, el('a', { href: hashLink('service', { name: s.name, group: s.groupName }) }, s.name)),
    el('td', {}, s.groupName),
    el('td', {}, s.ephemeral ? 'ephemeral' : 'persistent'),
    el('td', { class: 'num' }, s.clusterCount),
    el('td', { class: 'num' }, s.ipCount),
    el('td', { class: 'num' + (s.healthyInstanceCount < s.ipCount ? ' warn' : '') }, s.healthyInstanceCount),
    el('td', {}, s.triggerFlag === 'true' ? 'protecting' : ''),
  ));
  view.append(
    el('p', { class: 'count', 'data-testid': 'service-count' }, `${res.count} services`),
    rows.length ? table(['Name', 'Group', 'Kind', 'Clusters', 'Instances', 'Healthy', 'Protect threshold'], rows, { 'data-testid': 'services' })
      : message('No service matches.'),
    el('div', { class: 'pager' },
      el('button', { disabled: page <= 1, onclick: () => go(page - 1), 'data-testid': 'prev' }, '‹ Prev'),
      el('span', {}, ` page ${page} of ${pages} `),
      el('button', { disabled: page >= pages, onclick: () => go(page + 1), 'data-testid': 'next' }, 'Next ›')),
  );
}
