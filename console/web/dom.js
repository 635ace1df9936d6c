// A tiny element builder: el('a', {href: '#/x', onclick: f}, 'text', child, ...).

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'value') e.value = v;
    else if (k === 'checked') e.checked = !!v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function table(headers, rows, attrs = {}) {
  return el('table', attrs,
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows));
}

export function message(text, kind = 'info') {
  return el('p', { class: `msg ${kind}`, 'data-testid': `msg-${kind}` }, text);
}

export function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleString() : '';
}

export function hashLink(page, params) {
  const q = new URLSearchParams(params).toString();
  return `#/${page}${q ? '?' + q : ''}`;
}
