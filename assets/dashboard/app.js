// cdc-monitor dashboard: polls /api/events and /api/stats every second and
// draws the live table, the charts and the search results.
//
// Every value from the store reaches the page as a text node or an
// attribute value (textContent, setAttribute), never as markup, so row data
// cannot inject HTML. The server's Content-Security-Policy backs this up.
'use strict';

(() => {
  const OPS = ['insert', 'update', 'delete', 'ddl', 'snapshot'];
  const POLL_MS = 1000;
  const LIVE_ROWS = 25;
  const SEARCH_PAGE = 50;
  const MAX_CHIPS = 8;
  const MAX_VALUE_CHARS = 120;
  const REQUEST_TIMEOUT_MS = 5000;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#2563eb', '#16a34a', '#ea580c', '#9333ea', '#0891b2',
    '#db2777', '#65a30d', '#ca8a04', '#475569', '#dc2626'];

  const $ = (id) => document.getElementById(id);
  const numberFormat = new Intl.NumberFormat();

  // ---------------------------------------------------------------- DOM

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.setAttribute('class', v);
      else node.setAttribute(k, String(v));
    }
    return node;
  }

  /** An HTML element; string children become text nodes. */
  function h(tag, attrs, ...children) {
    const node = setAttrs(document.createElement(tag), attrs);
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  /** An SVG element; string children become text nodes. */
  function s(tag, attrs, ...children) {
    const node = setAttrs(document.createElementNS(SVG_NS, tag), attrs);
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function setText(id, text, value) {
    const node = $(id);
    node.textContent = text;
    if (value !== undefined) node.setAttribute('data-value', String(value));
  }

  // ---------------------------------------------------------- formatting

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function fmtTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso ?? '');
    const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
    const now = new Date();
    if (d.toDateString() === now.toDateString()) return clock;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}`;
  }

  function fmtClock(ms, seconds) {
    const d = new Date(ms);
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    return seconds ? `${hm}:${pad(d.getSeconds())}` : hm;
  }

  function fmtRate(r) {
    if (r === 0) return '0';
    if (r < 1) return String(Number(r.toFixed(2)));
    if (r < 10) return String(Number(r.toFixed(1)));
    return numberFormat.format(Math.round(r));
  }

  function fmtPercent(share) {
    return `${(share * 100).toFixed(1)} %`;
  }

  function fmtLag(sec) {
    if (!Number.isFinite(sec)) return '–';
    if (sec < 10) return `${sec.toFixed(1)} s`;
    if (sec < 60) return `${Math.round(sec)} s`;
    if (sec < 3600) return `${Math.floor(sec / 60)} m ${pad(Math.round(sec % 60))} s`;
    return `${Math.floor(sec / 3600)} h ${pad(Math.floor((sec % 3600) / 60))} m`;
  }

  /** A column value as text; null stays null (shown as NULL). */
  function valueText(v) {
    if (v === null || v === undefined) return null;
    if (typeof v === 'string') return v;
    return JSON.stringify(v);
  }

  function clip(text, max = MAX_VALUE_CHARS) {
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  function asObject(v) {
    return v && typeof v === 'object' && !Array.isArray(v) ? v : {};
  }

  function opClass(op) {
    return OPS.includes(op) ? `op-${op}` : 'op-other';
  }

  // ------------------------------------------------------------- fetching

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJSON(path) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), REQUEST_TIMEOUT_MS);
    try {
      const resp = await fetch(path, { cache: 'no-store', signal: ctrl.signal, headers: { Accept: 'application/json' } });
      let body = null;
      try { body = await resp.json(); } catch (_) { /* not JSON: reported below */ }
      if (!resp.ok) {
        const msg = body && typeof body.error === 'string' ? body.error : `HTTP ${resp.status}`;
        throw new ApiError(resp.status, msg);
      }
      if (body === null) throw new ApiError(resp.status, 'the server did not answer JSON');
      return body;
    } catch (err) {
      if (err instanceof ApiError) throw err;
      throw new ApiError(0, err.name === 'AbortError' ? 'no answer within 5 s' : 'server unreachable');
    } finally {
      clearTimeout(timer);
    }
  }

  // ----------------------------------------------------------- event rows

  function valueNode(v, cls) {
    const text = valueText(v);
    if (text === null) return h('span', { class: `null ${cls || ''}`.trim() }, 'NULL');
    return h('span', { class: cls || 'v' }, clip(text));
  }

  function fullText(v) {
    const t = valueText(v);
    return t === null ? 'NULL' : t;
  }

  // `old` may hold only the changed columns (Canal) or the whole row before
  // the change (TiCDC, binlog capture): a column changed when its value did.
  function changed(key, data, old) {
    return Object.prototype.hasOwnProperty.call(old, key)
      && JSON.stringify(old[key]) !== JSON.stringify(data[key]);
  }

  function chip(ev, key, data, old) {
    if (ev.op === 'update' && changed(key, data, old)) {
      return h('span', { class: 'chip changed', title: `${key}: ${fullText(old[key])} → ${fullText(data[key])}` },
        h('span', { class: 'k' }, key),
        valueNode(old[key], 'before'),
        h('span', { class: 'arrow' }, '→'),
        valueNode(data[key], 'after'));
    }
    return h('span', { class: ev.op === 'delete' ? 'chip gone' : 'chip', title: `${key}: ${fullText(data[key])}` },
      h('span', { class: 'k' }, key),
      valueNode(data[key]));
  }

  function valueCell(ev) {
    const cell = h('td', { class: 'c-values' });
    const lm = ev.large_message;
    if (lm && typeof lm === 'object') {
      const label = lm.kind === 'claim_check' ? 'claim check' : 'key only';
      cell.append(h('span', { class: 'tag', title: lm.location ? `stored at ${lm.location}` : 'TiCDC sent the key only' }, label));
    }
    if (ev.op === 'ddl') {
      const sql = typeof ev.sql === 'string' ? ev.sql : '';
      cell.append(h('code', { class: 'sql', title: sql }, clip(sql, 400)));
      return cell;
    }
    const data = asObject(ev.data);
    const old = asObject(ev.old);
    // An update shows the columns it changed (those in `old`); an insert or
    // delete shows the whole row.
    let keys = Object.keys(data);
    if (ev.op === 'update') {
      const diff = Object.keys(old).filter((k) => changed(k, data, old));
      if (diff.length > 0) keys = diff;
    }
    for (const key of keys.slice(0, MAX_CHIPS)) cell.append(chip(ev, key, data, old));
    const rest = keys.slice(MAX_CHIPS);
    if (rest.length > 0) {
      cell.append(h('span', { class: 'chip more', title: rest.map((k) => `${k}: ${fullText(data[k])}`).join('\n') },
        `+${rest.length} more`));
    }
    return cell;
  }

  function pkText(pk) {
    const obj = asObject(pk);
    const parts = Object.keys(obj).map((k) => `${k}=${fullText(obj[k])}`);
    return parts.join(', ');
  }

  /** The `pk` parameter of /api/rows for an event's row: its key columns
   * (in key order), or the whole row for a keyless table. */
  function rowParam(ev) {
    const pk = asObject(ev.pk);
    if (Object.keys(pk).length > 0) return JSON.stringify(pk);
    return JSON.stringify(Object.values(asObject(ev.data)));
  }

  function pkCell(ev, database, table, pk) {
    if (ev.op === 'ddl') return h('td', { class: 'c-pk', title: pk }, pk);
    return h('td', { class: 'c-pk' },
      h('button', {
        class: 'link row-link', type: 'button', title: `History of this row of ${database}.${table}`,
        'data-row-database': database, 'data-row-table': table, 'data-pk': rowParam(ev),
        'data-label': pk || 'whole row',
      }, pk || 'whole row'));
  }

  function eventRow(ev, fresh) {
    const database = String(ev.database ?? '');
    const table = String(ev.table ?? '');
    const op = String(ev.op ?? '');
    const pk = pkText(ev.pk);
    return h('tr', { 'data-id': ev.id, 'data-op': op, class: fresh ? 'new' : null },
      h('td', { class: 'c-time', title: String(ev['@timestamp'] ?? '') }, fmtTime(ev['@timestamp'])),
      h('td', { class: 'c-table' },
        h('button', {
          class: 'link', type: 'button', title: `Search ${database}.${table}`,
          'data-database': database, 'data-table': table,
        }, `${database}.${table}`)),
      h('td', { class: 'c-op' }, h('span', { class: `op ${opClass(op)}` }, op)),
      pkCell(ev, database, table, pk),
      valueCell(ev));
  }

  // ------------------------------------------------------------ row history

  let historySeq = 0;

  /** One change of the history: each column with its value before and after. */
  function historyRow(ev) {
    const data = asObject(ev.data);
    const old = asObject(ev.old);
    const op = String(ev.op ?? '');
    const cols = h('tbody');
    const keys = [...new Set([...Object.keys(old), ...Object.keys(data)])];
    for (const key of keys) {
      const had = op === 'update' ? Object.prototype.hasOwnProperty.call(old, key) : op === 'delete';
      const before = op === 'delete' ? data[key] : old[key];
      const was = had ? valueNode(before, 'before') : h('span', { class: 'faint' }, '—');
      const now = op === 'delete' ? h('span', { class: 'faint' }, '—') : valueNode(data[key], 'after');
      const isChange = op === 'update' && changed(key, data, old);
      cols.append(h('tr', { class: isChange ? 'changed' : null, 'data-column': key },
        h('th', {}, key), h('td', { class: 'before' }, was), h('td', { class: 'after' }, now)));
    }
    return h('tr', { 'data-id': ev.id, 'data-op': op },
      h('td', { class: 'c-time', title: String(ev['@timestamp'] ?? '') }, fmtTime(ev['@timestamp'])),
      h('td', { class: 'c-op' }, h('span', { class: `op ${opClass(op)}` }, op)),
      h('td', { class: 'c-version' }, String(ev.commit_ts ?? '')),
      h('td', {}, h('table', { class: 'side-by-side' },
        h('thead', {}, h('tr', {}, h('th', {}, 'column'), h('th', {}, 'before'), h('th', {}, 'after'))),
        cols)));
  }

  async function showHistory(database, table, pk, label) {
    const seq = ++historySeq;
    const panel = $('history-panel');
    panel.hidden = false;
    $('history-title').textContent = `${database}.${table} ${label}`;
    $('history-state').textContent = 'Loading…';
    $('history-table').tBodies[0].replaceChildren();
    panel.scrollIntoView({ behavior: 'smooth', block: 'start' });
    const p = new URLSearchParams({ database, table, pk });
    const [state, history] = await Promise.allSettled([
      getJSON(`/api/rows?${p}`),
      getJSON(`/api/rows/history?${p}&limit=200`),
    ]);
    if (seq !== historySeq) return;
    if (state.status === 'fulfilled') {
      const s = state.value;
      $('history-state').textContent = s.deleted
        ? `Deleted (version ${s.version}, ${fmtTime(s['@timestamp'])}).`
        : `Now: ${Object.entries(asObject(s.data)).map(([k, v]) => `${k}=${fullText(v)}`).join(', ')} (version ${s.version}, last ${s.op} ${fmtTime(s['@timestamp'])}).`;
    } else {
      $('history-state').textContent = `Current state: ${state.reason.message}`;
    }
    if (history.status === 'fulfilled') {
      const events = Array.isArray(history.value.events) ? history.value.events : [];
      $('history-table').tBodies[0].replaceChildren(...events.map(historyRow));
      $('history-empty').hidden = events.length > 0;
    } else {
      $('history-empty').hidden = false;
      $('history-empty').textContent = history.reason.message;
    }
  }

  // ------------------------------------------------------------ live table

  let shownIds = null; // null until the first render: nothing flashes then

  function renderLive(events) {
    const ids = events.map((e) => String(e.id));
    if (shownIds && ids.length === shownIds.length && ids.every((id, i) => id === shownIds[i])) return;
    const previous = new Set(shownIds || ids);
    const tbody = $('live-table').tBodies[0];
    tbody.replaceChildren(...events.map((ev) => eventRow(ev, !previous.has(String(ev.id)))));
    shownIds = ids;
    $('live-empty').hidden = events.length > 0;
  }

  // ------------------------------------------------------------------- pie

  function arcPoint(r, a) {
    return `${(r * Math.cos(a)).toFixed(3)} ${(r * Math.sin(a)).toFixed(3)}`;
  }

  /** A donut slice from angle a0 to a1 (radians, clockwise from 12 o'clock). */
  function slicePath(a0, a1, outer, inner) {
    if (a1 - a0 >= 2 * Math.PI - 1e-6) {
      // A full ring cannot be one arc: two halves, and the hole (even-odd fill).
      const m = a0 + Math.PI;
      return `M ${arcPoint(outer, a0)} A ${outer} ${outer} 0 1 1 ${arcPoint(outer, m)} `
        + `A ${outer} ${outer} 0 1 1 ${arcPoint(outer, a0)} Z `
        + `M ${arcPoint(inner, a0)} A ${inner} ${inner} 0 1 0 ${arcPoint(inner, m)} `
        + `A ${inner} ${inner} 0 1 0 ${arcPoint(inner, a0)} Z`;
    }
    const large = a1 - a0 > Math.PI ? 1 : 0;
    return `M ${arcPoint(outer, a0)} A ${outer} ${outer} 0 ${large} 1 ${arcPoint(outer, a1)} `
      + `L ${arcPoint(inner, a1)} A ${inner} ${inner} 0 ${large} 0 ${arcPoint(inner, a0)} Z`;
  }

  function renderPie(byOp) {
    const counts = OPS.map((op) => [op, Number(byOp?.[op]) || 0]);
    const sum = counts.reduce((a, [, n]) => a + n, 0);
    const pie = $('op-pie');
    const nodes = [];
    if (sum === 0) {
      nodes.push(s('circle', { class: 'pie-empty', r: 79, cx: 0, cy: 0 }));
    } else {
      let angle = -Math.PI / 2;
      for (const [op, n] of counts) {
        if (n === 0) continue;
        const share = n / sum;
        const end = angle + share * 2 * Math.PI;
        nodes.push(s('path', {
          class: `slice op-${op}`, d: slicePath(angle, end, 100, 58), 'fill-rule': 'evenodd',
          'data-op': op, 'data-share': share.toFixed(4), 'data-count': n,
        }, s('title', {}, `${op}: ${numberFormat.format(n)} (${fmtPercent(share)})`)));
        angle = end;
      }
    }
    nodes.push(s('text', { class: 'pie-total', x: 0, y: 6 }, sum ? numberFormat.format(sum) : '0'));
    nodes.push(s('text', { class: 'pie-caption', x: 0, y: 26 }, 'events'));
    pie.replaceChildren(...nodes);

    $('op-legend').replaceChildren(...counts.map(([op, n]) => {
      const share = sum ? n / sum : 0;
      return h('li', { 'data-op': op, 'data-share': share.toFixed(4), class: n ? null : 'zero' },
        h('span', { class: `swatch op-${op}` }),
        h('span', { class: 'name' }, op),
        h('span', { class: 'count' }, numberFormat.format(n)),
        h('span', { class: 'share' }, sum ? fmtPercent(share) : '–'));
    }));
  }

  // ------------------------------------------------------------ rate chart

  /** A round step (1, 2, 2.5 or 5 × 10^k) that splits `max` into about `parts`. */
  function niceStep(max, parts) {
    const raw = Math.max(max, 1e-9) / parts;
    const exp = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (m * exp >= raw) return m * exp;
    }
    return 10 * exp;
  }

  const TIME_STEPS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600];

  function seriesColor(i) {
    return PALETTE[i % PALETTE.length];
  }

  /** The newest bucket's rate; the backends divide it by the seconds elapsed in it so far. */
  function currentRate(points) {
    return points.length ? points[points.length - 1][1] : 0;
  }

  function renderRate(stats) {
    const chart = $('rate-chart');
    const width = Math.max(240, Math.round(chart.getBoundingClientRect().width) || 600);
    const height = 200;
    const m = { left: 44, right: 10, top: 10, bottom: 22 };
    chart.setAttribute('viewBox', `0 0 ${width} ${height}`);
    const bucketMs = (Number(stats.bucket_seconds) || 10) * 1000;
    const windowSec = Number(stats.window_seconds) || 300;
    $('rate-window').textContent = `last ${windowSec >= 120 ? `${Math.round(windowSec / 60)} min` : `${windowSec} s`}, ${bucketMs / 1000} s buckets`;

    const series = (Array.isArray(stats.rate) ? stats.rate : [])
      .map((r) => ({
        table: String(r.table),
        points: (Array.isArray(r.points) ? r.points : []).map((p) => [Number(p[0]), Number(p[1]) || 0]),
      }))
      .filter((r) => r.points.length > 0);
    series.sort((a, b) => b.points.reduce((t, p) => t + p[1], 0) - a.points.reduce((t, p) => t + p[1], 0));

    const nodes = [];
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const starts = series.flatMap((r) => r.points.map((p) => p[0]));
    const nowMs = Date.now();
    const x1 = starts.length ? Math.max(...starts) + bucketMs : nowMs;
    const x0 = starts.length ? Math.min(...starts) : nowMs - windowSec * 1000;
    const peak = Math.max(0, ...series.flatMap((r) => r.points.map((p) => p[1])));
    const yStep = peak > 0 ? niceStep(peak, 4) : 0.25;
    const yMax = Math.max(1, Math.ceil(peak / yStep)) * yStep;
    const X = (t) => m.left + ((t - x0) / Math.max(1, x1 - x0)) * plotW;
    const Y = (v) => m.top + plotH - (v / yMax) * plotH;

    for (let i = 0; i * yStep <= yMax + 1e-9; i += 1) {
      const v = i * yStep;
      const y = Y(v).toFixed(1);
      nodes.push(s('line', { class: i === 0 ? 'axis' : 'grid', x1: m.left, x2: width - m.right, y1: y, y2: y }));
      nodes.push(s('text', { x: m.left - 6, y: Number(y) + 4, 'text-anchor': 'end' }, fmtRate(v)));
    }
    const spanSec = (x1 - x0) / 1000;
    const step = (TIME_STEPS.find((st) => spanSec / st <= 6) || 21600) * 1000;
    for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
      const x = X(t);
      if (x < m.left + 14 || x > width - m.right - 14) continue;
      nodes.push(s('line', { class: 'grid', x1: x.toFixed(1), x2: x.toFixed(1), y1: m.top, y2: m.top + plotH }));
      nodes.push(s('text', { x: x.toFixed(1), y: height - 6, 'text-anchor': 'middle' }, fmtClock(t, step < 60000)));
    }

    if (series.length === 0) {
      nodes.push(s('text', { class: 'empty-note', x: m.left + plotW / 2, y: m.top + plotH / 2 }, 'No events in this window'));
    }
    series.forEach((r, i) => {
      const pts = r.points.map(([t, v]) => `${X(t + bucketMs / 2).toFixed(1)},${Y(v).toFixed(1)}`);
      const color = seriesColor(i);
      const done = pts.length > 1 ? pts.slice(0, -1) : pts;
      nodes.push(s('path', {
        class: 'series', d: `M ${done.join(' L ')}`, stroke: color, 'data-table': r.table,
      }, s('title', {}, r.table)));
      if (pts.length > 1) {
        // The newest bucket is still filling, its rate an estimate: drawn dashed.
        nodes.push(s('path', { class: 'series partial', d: `M ${pts.slice(-2).join(' L ')}`, stroke: color }));
      }
    });
    chart.replaceChildren(...nodes);

    $('rate-legend').replaceChildren(...series.map((r, i) => h('li', { 'data-table': r.table },
      h('span', { class: 'swatch', 'data-color': seriesColor(i) }),
      h('span', { class: 'name' }, r.table),
      h('span', { class: 'count' }, `${fmtRate(currentRate(r.points))}/s`))));
    // Swatch colours are data-driven; the CSSOM is allowed by the CSP where a style attribute is not.
    for (const sw of $('rate-legend').querySelectorAll('.swatch')) sw.style.background = sw.dataset.color;

    const total = series.reduce((t, r) => t + currentRate(r.points), 0);
    setText('rate-value', fmtRate(total), total);
    $('rate-sub').textContent = `over the current ${bucketMs / 1000} s`;
  }

  // ---------------------------------------------------------------- tables

  function renderTables(byTable) {
    const entries = Object.entries(byTable || {}).map(([k, v]) => [k, Number(v) || 0]);
    entries.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    const top = entries.slice(0, 10);
    const max = top.length ? top[0][1] : 1;
    const list = $('table-list');
    list.replaceChildren(...top.map(([name, n]) => {
      const dot = name.indexOf('.');
      const fill = h('div', { class: 'fill' });
      fill.style.width = `${Math.max(1, (n / max) * 100).toFixed(1)}%`;
      return h('li', { 'data-table': name },
        h('span', { class: 'name' }, h('button', {
          class: 'link', type: 'button', title: `Search ${name}`,
          'data-database': dot >= 0 ? name.slice(0, dot) : name,
          'data-table': dot >= 0 ? name.slice(dot + 1) : '',
        }, name)),
        h('span', { class: 'count' }, numberFormat.format(n)),
        h('div', { class: 'track' }, fill));
    }));
    $('tables-empty').hidden = entries.length > 0;
    updateSuggestions(entries.map(([k]) => k));
  }

  let suggested = '';

  function updateSuggestions(tables) {
    const key = tables.join('\n');
    if (key === suggested) return;
    suggested = key;
    const dbs = new Set();
    const names = new Set();
    for (const t of tables) {
      const dot = t.indexOf('.');
      if (dot < 0) continue;
      dbs.add(t.slice(0, dot));
      names.add(t.slice(dot + 1));
    }
    $('known-databases').replaceChildren(...[...dbs].sort().map((v) => h('option', { value: v })));
    $('known-tables').replaceChildren(...[...names].sort().map((v) => h('option', { value: v })));
  }

  // ------------------------------------------------------------- KPIs, lag

  function renderTotals(stats) {
    const total = Number(stats.total) || 0;
    setText('total-value', numberFormat.format(total), total);
    for (const op of OPS) {
      const n = Number(stats.by_op?.[op]) || 0;
      setText(`count-${op}`, numberFormat.format(n), n);
    }
    // An initial snapshot in progress: which table, how far.
    const snap = stats.snapshot;
    const snapBox = $('snapshot');
    snapBox.hidden = !snap;
    snapBox.textContent = snap
      ? `Snapshot in progress: ${snap.database}.${snap.table}, ${numberFormat.format(Number(snap.rows) || 0)} rows read; ` +
        `${snap.remaining_tables} table${snap.remaining_tables === 1 ? '' : 's'} to go`
      : '';
    const lagBox = $('lag');
    const lag = Number(stats.lag_seconds);
    const threshold = Number(lagBox.dataset.threshold);
    const warn = Number(lagBox.dataset.warn);
    setText('lag-value', fmtLag(lag), Number.isFinite(lag) ? lag : '');
    lagBox.classList.toggle('bad', lag > threshold);
    lagBox.classList.toggle('warn', lag > warn && lag <= threshold);
  }

  // ------------------------------------------------------------ status

  function setStatus(state, text) {
    const el = $('status');
    el.setAttribute('data-state', state);
    $('status-text').textContent = text;
  }

  function showBanner(text) {
    const b = $('banner');
    b.hidden = !text;
    b.textContent = text || '';
  }

  // ---------------------------------------------------------- polling

  let paused = false;
  let lastStats = null;

  async function refresh() {
    const [events, stats] = await Promise.allSettled([
      getJSON(`/api/events?limit=${LIVE_ROWS}`),
      getJSON('/api/stats'),
    ]);
    if (events.status === 'fulfilled') renderLive(Array.isArray(events.value.events) ? events.value.events : []);
    if (stats.status === 'fulfilled') {
      lastStats = stats.value;
      renderTotals(lastStats);
      renderPie(lastStats.by_op);
      renderRate(lastStats);
      renderTables(lastStats.by_table);
    }
    const failed = [events, stats].find((r) => r.status === 'rejected');
    if (failed) {
      const err = failed.reason;
      setStatus('error', err.message);
      showBanner(err.status === 404
        ? 'This cdc-monitor has no searchable sink (the embedded store or Elasticsearch), so there is nothing to show here. /metrics still works.'
        : `The store did not answer: ${err.message}. Retrying every second.`);
    } else {
      setStatus('live', `Live · updated ${fmtClock(Date.now(), true)}`);
      showBanner('');
    }
  }

  async function loop() {
    const started = performance.now();
    if (!paused && !document.hidden) {
      try {
        await refresh();
      } catch (err) {
        setStatus('error', String(err && err.message ? err.message : err));
      }
    }
    // Poll once a second, counting the time the last poll took.
    setTimeout(loop, Math.max(100, POLL_MS - (performance.now() - started)));
  }

  // ---------------------------------------------------------------- search

  let searchSeq = 0;
  let searchQuery = null;
  let searchCursor = null;
  let searchCount = 0;

  function searchParams() {
    const p = new URLSearchParams();
    for (const [name, id] of [['q', 'q'], ['database', 'f-database'], ['table', 'f-table'], ['op', 'f-op']]) {
      const v = $(id).value.trim();
      if (v) p.set(name, v);
    }
    const range = Number($('f-range').value);
    if (range > 0) p.set('since', String(Date.now() - range * 1000));
    p.set('limit', String(SEARCH_PAGE));
    return p;
  }

  function setSearchStatus(text, error) {
    const el = $('search-status');
    el.textContent = text;
    el.classList.toggle('error', !!error);
  }

  async function runSearch(more) {
    const seq = ++searchSeq;
    if (!more) {
      searchQuery = searchParams();
      searchCursor = null;
      searchCount = 0;
    }
    const p = new URLSearchParams(searchQuery);
    if (more && searchCursor) p.set('cursor', searchCursor);
    setSearchStatus('Searching…');
    $('search-more').hidden = true;
    try {
      const page = await getJSON(`/api/events?${p}`);
      if (seq !== searchSeq) return; // a newer search started meanwhile
      const events = Array.isArray(page.events) ? page.events : [];
      const table = $('search-results');
      const rows = events.map((ev) => eventRow(ev, false));
      if (more) table.tBodies[0].append(...rows);
      else table.tBodies[0].replaceChildren(...rows);
      searchCount += events.length;
      searchCursor = page.next_cursor || null;
      table.hidden = searchCount === 0;
      $('search-more').hidden = !searchCursor;
      if (searchCount === 0) setSearchStatus('No matching changes.');
      else setSearchStatus(`${numberFormat.format(searchCount)} ${searchCount === 1 ? 'change' : 'changes'}${searchCursor ? ', more available' : ''}.`);
    } catch (err) {
      if (seq !== searchSeq) return;
      setSearchStatus(err.message, true);
      $('search-more').hidden = !searchCursor;
    }
  }

  function searchTable(database, table) {
    $('q').value = '';
    $('f-database').value = database || '';
    $('f-table').value = table || '';
    $('f-op').value = '';
    runSearch(false);
    $('search-panel').scrollIntoView({ behavior: 'smooth', block: 'start' });
  }

  // ------------------------------------------------------------ wiring

  function onTableClick(e) {
    const row = e.target.closest('button.row-link[data-pk]');
    if (row) {
      showHistory(row.dataset.rowDatabase, row.dataset.rowTable, row.dataset.pk, row.dataset.label);
      return;
    }
    const btn = e.target.closest('button.link[data-database]');
    if (btn) searchTable(btn.dataset.database, btn.dataset.table);
  }

  function start() {
    $('search').addEventListener('submit', (e) => {
      e.preventDefault();
      runSearch(false);
    });
    $('search').addEventListener('reset', () => {
      searchSeq += 1;
      searchCursor = null;
      searchCount = 0;
      $('search-results').tBodies[0].replaceChildren();
      $('search-results').hidden = true;
      $('search-more').hidden = true;
      setSearchStatus('');
    });
    $('search-more').addEventListener('click', () => runSearch(true));
    $('history-close').addEventListener('click', () => {
      historySeq += 1;
      $('history-panel').hidden = true;
    });
    for (const id of ['live-table', 'search-results', 'table-list']) $(id).addEventListener('click', onTableClick);
    $('pause').addEventListener('click', () => {
      paused = !paused;
      $('pause').textContent = paused ? 'Resume' : 'Pause';
      $('pause').setAttribute('aria-pressed', String(paused));
      if (paused) setStatus('paused', 'Paused');
    });
    let resizeTimer = 0;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (lastStats) renderRate(lastStats); }, 100);
    });
    renderPie({});
    loop();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
