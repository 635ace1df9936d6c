// Live charts of this node's own metrics (GET /v1/console/metrics/history: one sample a
// second, the last 10 minutes), redrawn every 2 s.

import { get } from '../api.js';
import { el, message } from '../dom.js';
import { lineChart } from '../chart.js';

const WINDOWS = { '1 min': 60, '5 min': 300, '10 min': 600 };

export async function render(view) {
  let last = 300;
  const pick = el('select', { onchange: (e) => { last = Number(e.target.value); load(); } },
    Object.entries(WINDOWS).map(([k, v]) => el('option', { value: v, selected: v === last }, k)));
  const charts = {
    instances: el('canvas', { width: 560, height: 200, 'data-testid': 'chart-instances' }),
    requests: el('canvas', { width: 560, height: 200, 'data-testid': 'chart-requests' }),
    latency: el('canvas', { width: 560, height: 200, 'data-testid': 'chart-latency' }),
    pushes: el('canvas', { width: 560, height: 200, 'data-testid': 'chart-pushes' }),
    lag: el('canvas', { width: 560, height: 200, 'data-testid': 'chart-lag' }),
  };
  const err = el('div');
  const card = (title, c) => el('figure', { class: 'chart' }, el('figcaption', {}, title), c);
  view.append(el('h1', {}, 'Metrics'), el('p', {}, 'Window ', pick), err,
    el('div', { class: 'charts' },
      card('Instances, services, subscriptions', charts.instances),
      card('Requests/s by kind', charts.requests),
      card('Mean request latency by kind (ms)', charts.latency),
      card('Pushes/s sent and acknowledged', charts.pushes),
      card('Raft replication lag (entries, on the leader)', charts.lag)));
  async function load() {
    let h;
    try {
      h = await get('/v1/console/metrics/history', { last });
    } catch (e) {
      err.replaceChildren(message(e.message, 'error'));
      return;
    }
    err.replaceChildren();
    const s = h.samples;
    const t = s.map((x) => x.t);
    const busy = (key) => h.kinds.filter((k) => s.some((x) => x[key][k] > 0));
    lineChart(charts.instances, t, [
      { name: 'instances', data: s.map((x) => x.instances) },
      { name: 'services', data: s.map((x) => x.services) },
      { name: 'subscriptions', data: s.map((x) => x.subscriptions) }]);
    lineChart(charts.requests, t, busy('requestsPerSec').map((k) => ({ name: k, data: s.map((x) => x.requestsPerSec[k]) })));
    lineChart(charts.latency, t, busy('latencyMs').map((k) => ({ name: k, data: s.map((x) => x.latencyMs[k]) })));
    lineChart(charts.pushes, t, [
      { name: 'sent', data: s.map((x) => x.pushesPerSec) },
      { name: 'acked', data: s.map((x) => x.pushAcksPerSec) }]);
    lineChart(charts.lag, t, [{ name: 'max lag', data: s.map((x) => x.replicationLag) }]);
  }
  await load();
  const timer = setInterval(load, 2000);
  return () => clearInterval(timer);
}
