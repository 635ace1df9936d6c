// Login (shown when server/state says auth_enabled): POST /v1/auth/login with username and
// password; the token answered goes with every later call (see api.js).

import { post, setLogin } from '../api.js';
import { el, message } from '../dom.js';

export async function render(view) {
  setLogin('');
  const user = el('input', { name: 'username', 'data-testid': 'username', autocomplete: 'username', required: true });
  const pass = el('input', { name: 'password', type: 'password', 'data-testid': 'password', autocomplete: 'current-password', required: true });
  const out = el('div');
  const submit = async (e) => {
    e.preventDefault();
    out.replaceChildren();
    try {
      const r = await post('/v1/auth/login', { username: user.value, password: pass.value });
      if (!r || !r.accessToken) throw new Error('the server answered no token');
      setLogin(r.accessToken, r.username || user.value);
      window.dispatchEvent(new Event('nacelle:namespaces'));
      location.hash = '#/services';
    } catch (err) {
      out.append(message(err.status === 403 ? 'Wrong username or password.' : err.message, 'error'));
    }
  };
  view.append(el('form', { class: 'login', onsubmit: submit },
    el('h1', {}, 'Log in'),
    el('label', {}, 'Username', user),
    el('label', {}, 'Password', pass),
    el('button', { type: 'submit', 'data-testid': 'login' }, 'Log in'),
    out));
}
