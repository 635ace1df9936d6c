// The shell: hash routes (#/services, #/service?…, #/namespaces, #/cluster, #/metrics,
// #/login), the namespace picker, and the auth state from /v1/console/server/state.

import { get, token, username, setLogin } from './api.js';
import { el, message } from './dom.js';
import * as services from './pages/services.js';
import * as service from './pages/service.js';
import * as namespaces from './pages/namespaces.js';
import * as cluster from './pages/cluster.js';
import * as metrics from './pages/metrics.js';
import * as login from './pages/login.js';

const routes = { services, service, namespaces, cluster, metrics, login };

export const state = {
  namespace: localStorage.getItem('nacelle.namespace') || '',
  auth: false,
};

let stop = null;

function parseHash() {
  const h = location.hash.replace(/^#\/?/, '');
  const [name, qs] = h.split('?');
  return { name: name || 'services', params: new URLSearchParams(qs || '') };
}

export async function render() {
  if (stop) {
    stop();
    stop = null;
  }
  const { name, params } = parseHash();
  if (state.auth && !token() && name !== 'login') {
    location.hash = '#/login';
    return;
  }
  const page = routes[name] || services;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === name || (name === 'service' && a.dataset.page === 'services'));
  }
  who();
  const view = document.getElementById('view');
  view.replaceChildren();
  view.dataset.page = name;
  try {
    stop = (await page.render(view, params, state)) || null;
  } catch (e) {
    view.append(message(e.message, 'error'));
  }
}

function who() {
  const w = document.getElementById('who');
  w.replaceChildren();
  if (state.auth && token()) {
    w.append(username() + ' ', el('a', { href: '#/login', onclick: () => setLogin('') }, 'log out'));
  }
}

export async function loadNamespaces() {
  const sel = document.getElementById('namespace');
  let list = [];
  try {
    list = (await get('/v1/console/namespaces')).data || [];
  } catch {
    // The login page comes first; the picker fills in after it.
  }
  sel.replaceChildren(...list.map((n) =>
    el('option', { value: n.namespace }, n.namespaceShowName + (n.namespace ? ` (${n.namespace})` : ''))));
  if (!list.some((n) => n.namespace === state.namespace)) state.namespace = '';
  sel.value = state.namespace;
}

async function start() {
  try {
    const s = await get('/v1/console/server/state');
    state.auth = s.auth_enabled === 'true';
    state.server = s;
  } catch {
    state.auth = false;
  }
  const sel = document.getElementById('namespace');
  sel.addEventListener('change', () => {
    state.namespace = sel.value;
    localStorage.setItem('nacelle.namespace', sel.value);
    render();
  });
  await loadNamespaces();
  // The namespaces page announces its changes; the login page its success.
  window.addEventListener('nacelle:namespaces', loadNamespaces);
  window.addEventListener('hashchange', render);
  await render();
}

start();
