// Calls to the server's Nacos APIs. Bodies are form-urlencoded, as Nacos's console sends
// them. With auth on, the login token (kept in localStorage) goes with every call, both as
// the `accessToken` header and query parameter (what Nacos's console sends); a 401/403 sends
// the user back to the login page.

const TOKEN = 'nacelle.accessToken';
const USER = 'nacelle.username';

export function token() {
  return localStorage.getItem(TOKEN) || '';
}

export function username() {
  return localStorage.getItem(USER) || '';
}

export function setLogin(accessToken, user) {
  if (accessToken) {
    localStorage.setItem(TOKEN, accessToken);
    localStorage.setItem(USER, user || '');
  } else {
    localStorage.removeItem(TOKEN);
    localStorage.removeItem(USER);
  }
}

export class ApiError extends Error {
  constructor(status, text) {
    super(text || `HTTP ${status}`);
    this.status = status;
  }
}

export async function call(method, path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) q.append(k, String(v));
  }
  const t = token();
  const headers = {};
  let url = '/nacos' + path;
  let body;
  if (t) headers.accessToken = t;
  if (method === 'GET' || method === 'DELETE') {
    if (t) q.append('accessToken', t);
    const s = q.toString();
    if (s) url += '?' + s;
  } else {
    if (t) url += '?accessToken=' + encodeURIComponent(t);
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
    body = q.toString();
  }
  const r = await fetch(url, { method, headers, body });
  const text = await r.text();
  if ((r.status === 401 || r.status === 403) && !path.startsWith('/v1/auth/')) {
    setLogin('');
    if (location.hash !== '#/login') location.hash = '#/login';
  }
  if (!r.ok) throw new ApiError(r.status, text);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export const get = (path, params) => call('GET', path, params);
export const post = (path, params) => call('POST', path, params);
export const put = (path, params) => call('PUT', path, params);
export const del = (path, params) => call('DELETE', path, params);
