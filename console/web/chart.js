// Line charts on a canvas: shared time axis, y from 0 to the largest value, a legend.

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777', '#4b5563'];

export function lineChart(canvas, times, series) {
  const ctx = canvas.getContext('2d');
  const W = canvas.width;
  const H = canvas.height;
  const pad = { l: 48, r: 8, t: 8, b: 34 };
  ctx.clearRect(0, 0, W, H);
  ctx.font = '11px sans-serif';
  ctx.fillStyle = '#6b7280';
  if (!times.length || !series.length) {
    ctx.fillText('no data yet', W / 2 - 30, H / 2);
    return;
  }
  const max = Math.max(1, ...series.flatMap((s) => s.data));
  const t0 = times[0];
  const t1 = Math.max(times[times.length - 1], t0 + 1);
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
  ctx.strokeStyle = '#e5e7eb';
  ctx.beginPath();
  for (const f of [0, 0.5, 1]) {
    ctx.moveTo(pad.l, y(max * f));
    ctx.lineTo(W - pad.r, y(max * f));
    ctx.fillText(fmt(max * f), 2, y(max * f) + 4);
  }
  ctx.stroke();
  ctx.fillText(new Date(t0).toLocaleTimeString(), pad.l, H - pad.b + 12);
  const end = new Date(t1).toLocaleTimeString();
  ctx.fillText(end, W - pad.r - ctx.measureText(end).width, H - pad.b + 12);
  let lx = pad.l;
  series.forEach((s, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    s.data.forEach((v, j) => (j ? ctx.lineTo(x(times[j]), y(v)) : ctx.moveTo(x(times[j]), y(v))));
    ctx.stroke();
    ctx.fillStyle = ctx.strokeStyle;
    const label = `${s.name} ${fmt(s.data[s.data.length - 1] ?? 0)}`;
    ctx.fillRect(lx, H - 12, 8, 8);
    ctx.fillText(label, lx + 11, H - 4);
    lx += ctx.measureText(label).width + 24;
  });
  ctx.lineWidth = 1;
}

function fmt(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (v >= 1e3) return (v / 1e3).toFixed(1) + 'k';
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}
