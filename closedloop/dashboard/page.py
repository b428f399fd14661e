"""The dashboard's page: one HTML document with its CSS and JavaScript inline (nothing is fetched from
elsewhere), drawing each snapshot on canvases as ``/events`` pushes it.

Numbers sit in elements with stable ids (``presented``, ``total``, ``responses``, ``time-left``,
``status``, ``deadline-misses``, ``dropped-frames``, ``turnaround-median``, ...); each unit is a
``section.unit`` with ``data-unit`` (its name), ``data-spikes``, ``data-responses`` and
``data-r-observed``; each chosen image a ``figure.chosen`` with ``data-pool-index`` and ``data-decision``.
"""

from __future__ import annotations

import html
import json

STYLE = """
body{font:14px system-ui,sans-serif;margin:0 auto;max-width:1300px;padding:12px;color:#222;background:#fafafa}
h1{font-size:18px;margin:4px 0}h2{font-size:15px;margin:14px 0 6px}
#bar{height:14px;background:#ddd;border-radius:7px;overflow:hidden}#fill{height:100%;background:#2a7;width:0}
.numbers{display:flex;flex-wrap:wrap;gap:6px 18px;margin:8px 0}.numbers b{font-weight:600}
#units{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
.unit,.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
.unit h3{font-size:14px;margin:0 0 4px}canvas{width:100%;display:block}
#chosen{display:flex;flex-wrap:wrap;gap:8px}figure.chosen{margin:0;width:120px;font-size:11px}
figure.chosen img{width:120px;height:120px;image-rendering:pixelated;background:#888}
#error{color:#b00}.note{color:#666;font-size:12px}table{border-collapse:collapse}td{padding:1px 8px}
"""

BODY = """
<h1>closedloop: <span id="session"></span> <span id="status"></span> <span id="connection" class="note"></span></h1>
<div id="error"></div>
<div id="bar"><div id="fill"></div></div>
<div class="numbers">
<span>presented <b id="presented">0</b> of <b id="total">?</b></span>
<span>responses <b id="responses">0</b></span>
<span>time left <b id="time-left">?</b></span>
<span>presenting for <b id="elapsed">?</b></span>
<span><b id="rate">?</b> images/s</span>
</div>
<div class="numbers">
<span>deadline misses <b id="deadline-misses">0</b></span>
<span>dropped frames <b id="dropped-frames">0</b></span>
<span>frame interval median <b id="frame-median">?</b> ms, max <b id="frame-max">?</b> ms</span>
<span>decisions <b id="decisions">0</b></span>
<span>turnaround latest <b id="turnaround-latest">?</b> ms, median <b id="turnaround-median">?</b> ms,
p99 <b id="turnaround-p99">?</b> ms</span>
</div>
<div class="numbers">
<span>spikes behind the newest onset <b id="spikes-behind">?</b> ms</span>
<span>windows open <b id="pending-windows">0</b></span>
<span>spike gaps <b id="spike-gaps">0</b> (responses cut <b id="gap-responses">0</b>)</span>
<span>clock events <b id="clock-events">0</b></span>
<span>spike stream <b id="stream-state">ok</b></span>
</div>
<h2>Units</h2>
<p class="note">Raster: spikes around the latest onsets (newest at the bottom), grey band the response window,
red bar the image on. PSTH: mean rate around the onsets whose spikes are all in. Scatter: observed count
against the model's prediction at the decision that chose the image. Held-out r: observed (solid) and true
rates (dashed, simulated rigs) as the model learned.</p>
<div id="units"></div>
<h2>Latest chosen images</h2>
<p class="note">Newest decision first; predicted and observed mean counts per unit.</p>
<div id="chosen"></div>
<h2>Hypothesis posterior</h2>
<div id="posterior" class="panel"><span class="note">no strategy has logged a posterior</span></div>
"""

SCRIPT = r"""
const token = new URLSearchParams(location.search).get('token');
const withToken = (path) => token ? path + (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token)
                                  : path;
const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 1) => (v === null || v === undefined || Number.isNaN(v)) ? '?' : Number(v).toFixed(digits);
const colours = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf'];

function duration(s) {
  if (s === null || s === undefined) return '?';
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
  return (h ? h + ' h ' : '') + (h || m ? m + ' min ' : '') + sec + ' s';
}

function canvas(parent, cls, title) {
  let c = parent.querySelector('canvas.' + cls);
  if (!c) {
    const label = document.createElement('div'); label.className = 'note'; label.textContent = title;
    c = document.createElement('canvas'); c.className = cls; c.width = 300; c.height = 110;
    parent.append(label, c);
  }
  const ctx = c.getContext('2d'); ctx.clearRect(0, 0, c.width, c.height);
  return [c, ctx];
}

// Maps data x in [x0, x1] and y in [y0, y1] onto the canvas, leaving margins for the axis labels.
function frame(c, ctx, x0, x1, y0, y1, xlabel, ylabel) {
  const L = 34, R = 6, T = 6, B = 22, w = c.width - L - R, h = c.height - T - B;
  const X = (x) => L + (x - x0) / ((x1 - x0) || 1) * w, Y = (y) => T + h - (y - y0) / ((y1 - y0) || 1) * h;
  ctx.strokeStyle = '#999'; ctx.strokeRect(L, T, w, h);
  ctx.fillStyle = '#555'; ctx.font = '10px sans-serif';
  ctx.fillText(fmt(x0, x0 % 1 ? 2 : 0), L, c.height - 10);
  ctx.fillText(fmt(x1, x1 % 1 ? 2 : 0), L + w - 18, c.height - 10);
  ctx.fillText(xlabel, L + w / 2 - 20, c.height - 2);
  ctx.fillText(fmt(y1, y1 % 1 ? 2 : 0), 2, T + 8); ctx.fillText(fmt(y0, y0 % 1 ? 2 : 0), 2, T + h);
  ctx.save(); ctx.translate(10, T + h / 2 + 20); ctx.rotate(-Math.PI / 2); ctx.fillText(ylabel, 0, 0); ctx.restore();
  return [X, Y];
}

function drawRaster(box, s, u) {
  const [c, ctx] = canvas(box, 'raster', 'raster');
  const r = u.raster, rows = r.rows, n = Math.max(rows.length, 1);
  const [X, Y] = frame(c, ctx, -r.before_s, r.after_s, 0, n, 's from onset', 'pres.');
  ctx.fillStyle = 'rgba(0,0,0,0.08)';
  ctx.fillRect(X(s.window[0]), Y(n), X(s.window[1]) - X(s.window[0]), Y(0) - Y(n));
  if (s.image_on_s) { ctx.fillStyle = '#d33'; ctx.fillRect(X(0), Y(n) - 4, X(s.image_on_s) - X(0), 3); }
  ctx.fillStyle = '#222';
  rows.forEach((row, i) => row.t.forEach((t) => ctx.fillRect(X(t), Y(n - i), 1.5, Math.max(1, Y(0) - Y(1) - 1))));
}

function drawPsth(box, s, u) {
  const [c, ctx] = canvas(box, 'psth', 'PSTH (' + u.psth.presentations + ' presentations)');
  const p = u.psth, rate = p.rate_hz, top = Math.max(1, ...rate);
  const [X, Y] = frame(c, ctx, p.start_s, p.start_s + rate.length * p.bin_s, 0, top, 's from onset', 'Hz');
  ctx.fillStyle = 'rgba(0,0,0,0.08)';
  ctx.fillRect(X(s.window[0]), Y(top), X(s.window[1]) - X(s.window[0]), Y(0) - Y(top));
  ctx.fillStyle = '#1f77b4';
  rate.forEach((v, i) => {
    const x = p.start_s + i * p.bin_s;
    ctx.fillRect(X(x), Y(v), X(x + p.bin_s) - X(x) - 0.5, Y(0) - Y(v));
  });
}

function drawScatter(box, u) {
  const [c, ctx] = canvas(box, 'scatter', 'observed against predicted count (' + u.predicted_observed.length + ')');
  const pts = u.predicted_observed, top = Math.max(1, ...pts.map((p) => Math.max(p[0], p[1])));
  const [X, Y] = frame(c, ctx, 0, top, 0, top, 'predicted', 'observed');
  ctx.strokeStyle = '#bbb'; ctx.beginPath(); ctx.moveTo(X(0), Y(0)); ctx.lineTo(X(top), Y(top)); ctx.stroke();
  ctx.fillStyle = 'rgba(31,119,180,0.6)';
  pts.forEach((p) => ctx.fillRect(X(p[0]) - 1.5, Y(p[1]) - 1.5, 3, 3));
}

function drawAccuracy(box, u) {
  const [c, ctx] = canvas(box, 'accuracy', 'held-out r against trained-on responses');
  const pts = u.r, x1 = Math.max(1, ...pts.map((p) => p[0]));
  const [X, Y] = frame(c, ctx, 0, x1, -0.2, 1, 'responses', 'r');
  [[1, []], [2, [4, 3]]].forEach(([k, dash]) => {
    ctx.setLineDash(dash); ctx.strokeStyle = '#2ca02c'; ctx.beginPath(); let on = false;
    pts.forEach((p) => { if (p[k] === null) { on = false; return; }
      on ? ctx.lineTo(X(p[0]), Y(p[k])) : ctx.moveTo(X(p[0]), Y(p[k])); on = true; });
    ctx.stroke();
  });
  ctx.setLineDash([]);
}

function renderUnits(s) {
  const root = $('units');
  s.units.forEach((u, k) => {
    let box = root.children[k];
    if (!box) {
      box = document.createElement('section'); box.className = 'unit'; root.append(box);
      const h = document.createElement('h3'); box.append(h);
    }
    const last = u.r.length ? u.r[u.r.length - 1][1] : null;
    box.dataset.unit = u.name; box.dataset.spikes = u.spikes; box.dataset.rObserved = last === null ? '' : last;
    box.dataset.psthPresentations = u.psth.presentations; box.dataset.points = u.predicted_observed.length;
    box.querySelector('h3').textContent = u.name + ': ' + u.spikes + ' spikes, mean count ' + fmt(u.mean_count, 2)
      + ', held-out r ' + fmt(last, 2);
    drawRaster(box, s, u); drawPsth(box, s, u); drawScatter(box, u); drawAccuracy(box, u);
  });
}

function counts(values) { return values ? values.map((v) => fmt(v, 1)).join(' ') : '-'; }

function renderChosen(s) {
  const root = $('chosen'); root.replaceChildren();
  s.chosen.forEach((im) => {
    const f = document.createElement('figure'); f.className = 'chosen';
    f.dataset.poolIndex = im.pool_index; f.dataset.decision = im.decision; f.dataset.shown = im.shown;
    const img = document.createElement('img'); img.alt = 'pool image ' + im.pool_index;
    img.src = withToken('image/' + im.pool_index + '.png');
    const cap = document.createElement('figcaption');
    cap.textContent = '#' + im.pool_index + ' (decision ' + im.decision + ') predicted ' + counts(im.predicted)
      + '; observed ' + counts(im.observed) + ' (' + im.shown + ' shown)';
    f.append(img, cap); root.append(f);
  });
}

function renderPosterior(s) {
  const box = $('posterior');
  if (!s.posterior) return;
  const names = Object.keys(s.posterior.hypotheses);
  let c = box.querySelector('canvas');
  if (!c) { box.replaceChildren(); c = document.createElement('canvas'); c.width = 600; c.height = 160;
            const t = document.createElement('table'); t.id = 'posterior-table'; box.append(t, c); }
  $('posterior-table').replaceChildren(...names.map((name, k) => {
    const tr = document.createElement('tr'), vals = s.posterior.hypotheses[name];
    tr.dataset.hypothesis = name; tr.dataset.p = vals[vals.length - 1];
    tr.innerHTML = '<td style="color:' + colours[k % 8] + '">&#9632;</td><td></td><td></td>';
    tr.children[1].textContent = name; tr.children[2].textContent = fmt(vals[vals.length - 1], 3);
    return tr;
  }));
  const ctx = c.getContext('2d'); ctx.clearRect(0, 0, c.width, c.height);
  const xs = s.posterior.responses.map((r, i) => r === null ? i : r);
  const [X, Y] = frame(c, ctx, Math.min(...xs), Math.max(...xs), 0, 1, 'responses', 'P');
  names.forEach((name, k) => {
    ctx.strokeStyle = colours[k % 8]; ctx.beginPath();
    s.posterior.hypotheses[name].forEach((p, i) => {
      if (p !== null) i ? ctx.lineTo(X(xs[i]), Y(p)) : ctx.moveTo(X(xs[i]), Y(p));
    });
    ctx.stroke();
  });
}

function render(s) {
  $('session').textContent = s.session; $('status').textContent = s.status; $('status').dataset.complete = s.complete;
  $('error').textContent = s.error || '';
  if (!s.progress) return;
  const p = s.progress, t = s.timing, st = s.stream;
  $('presented').textContent = p.presented; $('total').textContent = p.total; $('responses').textContent = p.responses;
  $('time-left').textContent = duration(p.time_left_s); $('elapsed').textContent = duration(p.elapsed_s);
  $('rate').textContent = fmt(p.rate_per_s, 2);
  $('fill').style.width = (100 * p.fraction) + '%'; $('bar').dataset.fraction = p.fraction;
  $('deadline-misses').textContent = t.deadline_misses; $('dropped-frames').textContent = t.dropped_frames;
  $('frame-median').textContent = fmt(t.frame_interval_median_ms, 2);
  $('frame-max').textContent = fmt(t.frame_interval_max_ms, 2);
  $('decisions').textContent = t.decisions;
  $('turnaround-latest').textContent = fmt(t.turnaround_ms.latest);
  $('turnaround-median').textContent = fmt(t.turnaround_ms.median);
  $('turnaround-p99').textContent = fmt(t.turnaround_ms.p99);
  $('spikes-behind').textContent = st.spikes_behind_s === null ? '?' : fmt(st.spikes_behind_s * 1e3, 0);
  $('pending-windows').textContent = st.pending_windows; $('spike-gaps').textContent = st.spike_gaps;
  $('gap-responses').textContent = st.gap_responses; $('clock-events').textContent = st.clock_events;
  $('stream-state').textContent = st.stream_lost ? 'lost' : 'ok';
  renderUnits(s); renderChosen(s); renderPosterior(s);
}

render(JSON.parse($('snapshot').textContent));
const events = new EventSource(withToken('events'));
events.addEventListener('snapshot', (e) => { $('connection').textContent = 'live'; render(JSON.parse(e.data)); });
events.onerror = () => {
  $('connection').textContent = $('status').dataset.complete === 'true' ? 'ended' : 'reconnecting';
};
"""


def page(snapshot: dict) -> str:
    """The page, drawing ``snapshot`` at once and each one ``/events`` pushes after it."""
    data = json.dumps(snapshot).replace("<", "\\u003c")  # no "</script>" inside the script
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>closedloop: {html.escape(snapshot['session'])}</title><style>{STYLE}</style></head>"
            f"<body>{BODY}<script id=\"snapshot\" type=\"application/json\">{data}</script>"
            f"<script>{SCRIPT}</script></body></html>")
