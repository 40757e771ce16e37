// herd console: groups and insights over herd's JSON API (/api/v1). No build step; the page
// state lives in the URL hash (#/page?…), so a link reproduces what is on the screen. The
// project's secret key is kept per tab (sessionStorage) and sent as a Bearer token.
'use strict';

const KEY = 'herd.secret';
const main = document.getElementById('main');
let project = null;

// ---- small helpers ------------------------------------------------------------------------

/** An element with attributes and children (strings become text nodes, never HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function showError(message) {
  const box = document.getElementById('error');
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  document.getElementById('error').hidden = true;
}

/** Calls the API; throws an Error carrying the server's `detail`. */
async function api(path, body) {
  const key = sessionStorage.getItem(KEY) || '';
  const init = { headers: { Authorization: 'Bearer ' + key } };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch('/api/v1/' + path, init);
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const detail = data && data.detail ? data.detail : r.status + ' ' + r.statusText;
    const err = new Error(detail);
    err.status = r.status;
    throw err;
  }
  return data;
}

/** The hash as {page, params}. */
function location_() {
  const hash = window.location.hash.replace(/^#\/?/, '');
  const [path, query] = hash.split('?');
  return { parts: path.split('/').map(decodeURIComponent), params: new URLSearchParams(query || '') };
}

function go(page, params) {
  const q = new URLSearchParams(params || {}).toString();
  window.location.hash = '#/' + page + (q ? '?' + q : '');
}

function fmt(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') return Number.isInteger(v) ? v.toLocaleString('en-US') : v.toFixed(2);
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

function seconds(s) {
  if (s === null || s === undefined) return '–';
  if (s < 120) return s.toFixed(0) + ' s';
  if (s < 7200) return (s / 60).toFixed(1) + ' min';
  if (s < 172800) return (s / 3600).toFixed(1) + ' h';
  return (s / 86400).toFixed(1) + ' d';
}

function groupTypeOptions(selected, withUsers) {
  const opts = withUsers ? [h('option', { value: '', selected: !selected }, 'users')] : [];
  for (const t of project.group_types) {
    opts.push(h('option', { value: t.name, selected: selected === t.name }, t.name));
  }
  return opts;
}

function select(name, options, value) {
  return h('select', { name }, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

function field(label, control) {
  return h('label', {}, label, control);
}

/** A query kept in the URL as JSON (`q`), or the default. */
function queryFromUrl(params, fallback) {
  const text = params.get('q');
  if (!text) return fallback;
  try { return JSON.parse(text); } catch (_) { return fallback; }
}

/** A property filter / breakdown source: the event, or a group type's current properties. */
function source(groupType) {
  return groupType ? { group: groupType } : 'event';
}

function sourceName(s) {
  return s && typeof s === 'object' ? s.group : '';
}

// ---- sign in ------------------------------------------------------------------------------

function signIn(message) {
  document.getElementById('who').textContent = '';
  document.getElementById('signout').hidden = true;
  const input = h('input', { type: 'password', name: 'key', placeholder: 'phs_…', autocomplete: 'off' });
  const form = h('form', {
    class: 'signin',
    onsubmit: async (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      await start();
    },
  }, h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, "Your project's secret key (not the public token). It stays in this tab."),
  input, h('button', { class: 'primary', type: 'submit' }, 'Sign in'));
  main.replaceChildren(form);
  if (message) showError(message);
  input.focus();
}

async function start() {
  clearError();
  if (!sessionStorage.getItem(KEY)) return signIn();
  try {
    project = await api('project');
  } catch (e) {
    sessionStorage.removeItem(KEY);
    return signIn(e.message);
  }
  document.getElementById('who').textContent = project.name + ' (project ' + project.id + ')';
  document.getElementById('signout').hidden = false;
  await route();
}

document.getElementById('signout').addEventListener('click', () => {
  sessionStorage.removeItem(KEY);
  project = null;
  signIn();
});

// ---- groups -------------------------------------------------------------------------------

async function groupsPage(params) {
  const type = params.get('type') || (project.group_types[0] || {}).name;
  if (!type) {
    main.replaceChildren(h('h1', {}, 'Groups'), h('p', { class: 'muted' }, 'No group types yet: send a `$groupidentify`, or events with `$groups`.'));
    return;
  }
  const search = params.get('search') || '';
  const cursor = params.get('cursor') || '';
  const back = params.get('back') || '';
  const typeSelect = h('select', { name: 'type' }, groupTypeOptions(type, false));
  const searchInput = h('input', { name: 'search', value: search, placeholder: 'key or property value' });
  const form = h('form', {
    class: 'query',
    onsubmit: (e) => { e.preventDefault(); go('groups', { type: typeSelect.value, search: searchInput.value }); },
  }, field('Group type', typeSelect), field('Search', searchInput), h('button', { class: 'primary', type: 'submit' }, 'Search'));
  const q = new URLSearchParams({ search, cursor, page_size: '50' });
  const page = await api('groups/' + encodeURIComponent(type) + '?' + q);
  // Property columns: the most common keys on this page.
  const counts = new Map();
  for (const g of page.groups) for (const k of Object.keys(g.properties)) counts.set(k, (counts.get(k) || 0) + 1);
  const columns = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, 6).map(([k]) => k);
  const table = h('table', { id: 'groups-table' },
    h('tr', {}, h('th', {}, 'key'), columns.map((c) => h('th', {}, c)), h('th', {}, 'created')),
    page.groups.map((g) => h('tr', {},
      h('td', {}, h('a', { href: '#/group/' + encodeURIComponent(type) + '/' + encodeURIComponent(g.key) }, g.key)),
      columns.map((c) => h('td', {}, fmt(g.properties[c]))),
      h('td', {}, new Date(g.created_at / 1000).toISOString().slice(0, 10)))));
  const pager = h('p', {},
    cursor ? h('a', { href: '#/groups?' + new URLSearchParams({ type, search, cursor: back }) }, '← first page') : null, ' ',
    page.next_cursor ? h('a', { id: 'next-page', href: '#/groups?' + new URLSearchParams({ type, search, cursor: page.next_cursor, back: cursor }) }, 'next page →') : null);
  main.replaceChildren(h('h1', {}, 'Groups'), form,
    page.groups.length ? table : h('p', { class: 'muted' }, 'No groups match.'), pager);
}

async function groupPage(type, key) {
  const g = await api('groups/' + encodeURIComponent(type) + '/' + encodeURIComponent(key));
  const props = g.group ? g.group.properties : {};
  main.replaceChildren(
    h('h1', {}, type + ' ', h('span', { id: 'group-key' }, key)),
    g.group ? h('p', { class: 'muted' }, 'created ' + new Date(g.group.created_at / 1000).toISOString() + ' · version ' + g.group.version)
      : h('p', { class: 'muted' }, 'No properties identified for this group.'),
    h('h2', {}, 'Properties'),
    h('table', { id: 'group-properties' }, h('tr', {}, h('th', {}, 'property'), h('th', {}, 'value')), Object.entries(props).map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', {}, fmt(v))))),
    h('h2', {}, 'Related users (' + g.related.users.length + (g.related.truncated ? '+' : '') + ')'),
    h('p', {}, g.related.users.slice(0, 100).join(', ')),
    h('h2', {}, 'Related groups'),
    h('p', {}, g.related.groups.map((r) => [h('a', { href: '#/group/' + encodeURIComponent(r.group_type) + '/' + encodeURIComponent(r.key) }, r.group_type + ' ' + r.key), ' '])),
    h('h2', {}, 'Latest events'),
    h('table', { id: 'group-events' },
      h('tr', {}, h('th', {}, 'time'), h('th', {}, 'event'), h('th', {}, 'person'), h('th', {}, 'properties')),
      g.events.map((e) => h('tr', {},
        h('td', {}, new Date(e.timestamp / 1000).toISOString().replace('T', ' ').slice(0, 19)),
        h('td', {}, e.event), h('td', {}, e.distinct_id),
        h('td', {}, h('pre', { class: 'props' }, e.properties))))));
}

// ---- charts -------------------------------------------------------------------------------

const PALETTE = ['#1d4aff', '#f04f58', '#22a06b', '#e8a33b', '#8d4aeb', '#16a0b3', '#6b6f7b'];

/** A line chart of `lines` ({label, data}) over `starts` (µs). */
function lineChart(starts, lines, yLabel) {
  const box = h('div', { class: 'chart', id: 'chart' });
  const xs = starts.map((t) => t / 1e6);
  const opts = {
    width: Math.min(1100, main.clientWidth - 30),
    height: 320,
    scales: { x: { time: true } },
    series: [{}].concat(lines.map((l, i) => ({ label: l.label, stroke: PALETTE[i % PALETTE.length], width: 2 }))),
    axes: [{}, { label: yLabel }],
  };
  // uPlot draws once the box is in the page.
  requestAnimationFrame(() => {
    new uPlot(opts, [xs].concat(lines.map((l) => l.data)), box);
    box.dataset.drawn = 'true';
    window.herdFirstChart = window.herdFirstChart || performance.now();
  });
  return box;
}

// ---- trends -------------------------------------------------------------------------------

const MATHS = [['total', 'total events'], ['dau', 'unique users'], ['unique_group', 'unique groups'],
  ['weekly_active', 'weekly active'], ['monthly_active', 'monthly active']];
const INTERVALS = [['hour', 'hour'], ['day', 'day'], ['week', 'week'], ['month', 'month']];
const OPERATORS = ['exact', 'is_not', 'icontains', 'not_icontains', 'gt', 'lt', 'is_set', 'is_not_set'];

function defaultTrends() {
  const company = (project.group_types[0] || {}).name;
  return {
    series: [{ event: 'signed_up', math: company ? { math: 'unique_group', group_type: company } : { math: 'total' } }],
    interval: 'week', date_from: '-30d', date_to: '', timezone: '',
  };
}

/** Rows of property filters: `[GROUP TYPE] key operator value`. */
function filterRows(filters) {
  const rows = h('div', { class: 'rows' });
  const add = (f) => {
    const row = h('div', { class: 'row filter' },
      h('select', { name: 'fsource' }, groupTypeOptions(sourceName(f.source), true).map((o) => { if (o.value === '') o.textContent = 'event'; return o; })),
      h('input', { name: 'fkey', value: f.key || '', placeholder: 'property' }),
      select('fop', OPERATORS.map((o) => [o, o]), f.operator || 'exact'),
      h('input', { name: 'fvalue', value: (f.values || []).join(','), placeholder: 'value(s), comma separated' }),
      h('button', { type: 'button', onclick: () => row.remove() }, '×'));
    rows.append(row);
  };
  (filters || []).forEach(add);
  rows.append(h('button', { type: 'button', onclick: (e) => { e.target.remove(); add({}); rows.append(e.target); } }, '+ filter'));
  return rows;
}

function readFilters(form) {
  const out = [];
  for (const row of form.querySelectorAll('.filter')) {
    const key = row.querySelector('[name=fkey]').value.trim();
    if (!key) continue;
    const value = row.querySelector('[name=fvalue]').value;
    out.push({ key, source: source(row.querySelector('[name=fsource]').value), operator: row.querySelector('[name=fop]').value,
      values: value === '' ? [] : value.split(',').map((v) => v.trim()) });
  }
  return out;
}

function dateFields(q) {
  return [field('From', h('input', { name: 'date_from', value: q.date_from || '', size: 12 })),
    field('To', h('input', { name: 'date_to', value: q.date_to || '', size: 12, placeholder: 'now' })),
    field('Timezone', h('input', { name: 'timezone', value: q.timezone || '', size: 14, placeholder: 'UTC' }))];
}

function breakdownFields(b) {
  return [field('Breakdown by', h('input', { name: 'bkey', value: b ? b.property : '', placeholder: 'property', size: 10 })),
    field('of', h('select', { name: 'bsource' }, groupTypeOptions(b ? sourceName(b.source) : '', true).map((o) => { if (o.value === '') o.textContent = 'event'; return o; })))];
}

function readBreakdown(form) {
  const key = form.bkey.value.trim();
  return key ? { property: key, source: source(form.bsource.value) } : undefined;
}

/** One series row of the trends form: event, what is counted, and of which actors. */
function seriesRow(s) {
  const m = s.math || { math: 'total' };
  const row = h('div', { class: 'row series' },
    field('Event', h('input', { name: 'event', value: s.event || '', placeholder: 'any event' })),
    field('Counting', select('math', MATHS, m.math || 'total')),
    field('of', h('select', { name: 'group_type' }, groupTypeOptions(m.group_type, true))),
    h('button', { type: 'button', title: 'remove series', onclick: () => row.remove() }, '×'));
  return row;
}

async function trendsPage(params) {
  const q = queryFromUrl(params, defaultTrends());
  const m = (q.series[0] || {}).math || { math: 'total' };
  const series = h('div', { class: 'rows', id: 'series' }, q.series.map(seriesRow));
  const form = h('form', { class: 'query', id: 'trends-form' }, series,
    h('button', { type: 'button', onclick: () => series.append(seriesRow({})) }, '+ series'),
    field('Interval', select('interval', INTERVALS, q.interval || 'day')),
    field('Display', select('display', [['time_series', 'time series'], ['total_value', 'total'], ['cumulative', 'cumulative']], q.display || 'time_series')),
    ...dateFields(q), ...breakdownFields(q.breakdown),
    filterRows(q.filters ? q.filters.filters : []),
    h('button', { class: 'primary', type: 'submit' }, 'Run'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = e.target;
    const rows = [...f.querySelectorAll('.series')].map((r) => {
      const math = { math: r.querySelector('[name=math]').value };
      const g = r.querySelector('[name=group_type]').value;
      if (g) math.group_type = g;
      return { event: r.querySelector('[name=event]').value.trim() || null, math };
    });
    const next = { series: rows, interval: f.interval.value,
      date_from: f.date_from.value, date_to: f.date_to.value, timezone: f.timezone.value, display: f.display.value };
    const b = readBreakdown(f);
    if (b) next.breakdown = b;
    const filters = readFilters(f);
    if (filters.length) next.filters = { op: 'and', filters };
    go('trends', { q: JSON.stringify(next) });
  });
  main.replaceChildren(h('h1', {}, 'Trends'), form, h('p', { class: 'muted' }, 'Running…'));
  const r = await api('insights/trends', q);
  const label = (l) => l.breakdown_value !== null && l.breakdown_value !== undefined ? l.label + ' · ' + l.breakdown_value.replace('$$_posthog_breakdown_null_$$', 'none').replace('$$_posthog_breakdown_other_$$', 'other') : l.label;
  if (q.display === 'total_value') {
    main.replaceChildren(h('h1', {}, 'Trends'), form, h('table', { id: 'trends-table' },
      h('tr', {}, h('th', {}, 'series'), h('th', { class: 'num' }, 'value')),
      r.results.map((l) => h('tr', {}, h('td', {}, label(l)), h('td', { class: 'num' }, fmt(l.aggregated_value))))));
    return;
  }
  const lines = r.results.map((l) => ({ label: label(l), data: l.data }));
  const table = h('table', { id: 'trends-table' },
    h('tr', {}, h('th', {}, 'series'), r.labels.map((x) => h('th', { class: 'num' }, x)), h('th', { class: 'num' }, 'total')),
    r.results.map((l, i) => h('tr', { 'data-line': i }, h('td', {}, label(l)), l.data.map((v) => h('td', { class: 'num' }, fmt(v))), h('td', { class: 'num' }, fmt(l.count)))));
  main.replaceChildren(h('h1', {}, 'Trends'), form, lineChart(r.bucket_starts, lines, m.math), h('div', { class: 'scroll' }, table));
}

// ---- funnel -------------------------------------------------------------------------------

function defaultFunnel() {
  const company = (project.group_types[0] || {}).name;
  return { steps: [{ event: '$pageview' }, { event: 'signed_up' }, { event: 'created_project' }],
    aggregation_group_type: company || null, window: { value: 14, unit: 'day' }, date_from: '-30d', date_to: '' };
}

async function funnelPage(params) {
  const q = queryFromUrl(params, defaultFunnel());
  const steps = h('div', { class: 'rows', id: 'steps' });
  const addStep = (s) => steps.append(h('div', { class: 'row step' }, h('input', { name: 'step', value: s.event || '', placeholder: 'event' }),
    h('button', { type: 'button', onclick: (e) => e.target.parentNode.remove() }, '×')));
  q.steps.forEach(addStep);
  const exclusions = h('div', { class: 'rows' });
  const addExclusion = (x) => exclusions.append(h('div', { class: 'row exclusion' }, 'exclude',
    h('input', { name: 'xevent', value: x.event || '', placeholder: 'event' }), 'between steps',
    h('input', { name: 'xfrom', value: x.from_step ?? 0, size: 2 }), 'and', h('input', { name: 'xto', value: x.to_step ?? 1, size: 2 })));
  (q.exclusions || []).forEach(addExclusion);
  const w = q.window || { value: 14, unit: 'day' };
  const form = h('form', { class: 'query', id: 'funnel-form' }, steps,
    h('div', { class: 'row' }, h('button', { type: 'button', onclick: () => addStep({}) }, '+ step'),
      h('button', { type: 'button', onclick: () => addExclusion({}) }, '+ exclusion')), exclusions,
    field('Aggregating by', h('select', { name: 'agg' }, groupTypeOptions(q.aggregation_group_type, true))),
    field('Window', h('input', { name: 'wvalue', value: w.value, size: 4 })),
    field('unit', select('wunit', ['minute', 'hour', 'day', 'week', 'month'].map((u) => [u, u]), w.unit || 'day')),
    field('Order', select('order', [['ordered', 'ordered'], ['strict', 'strict'], ['unordered', 'unordered']], q.order || 'ordered')),
    field('View', select('viz', [['steps', 'steps'], ['time_to_convert', 'time to convert'], ['trends', 'trends']], q.viz || 'steps')),
    ...dateFields(q), ...breakdownFields(q.breakdown),
    h('button', { class: 'primary', type: 'submit' }, 'Run'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = e.target;
    const next = { steps: [...f.querySelectorAll('[name=step]')].map((i) => ({ event: i.value.trim() || null })),
      aggregation_group_type: f.agg.value || null, window: { value: Number(f.wvalue.value), unit: f.wunit.value },
      order: f.order.value, viz: f.viz.value, date_from: f.date_from.value, date_to: f.date_to.value, timezone: f.timezone.value };
    const x = [...f.querySelectorAll('.exclusion')].filter((r) => r.querySelector('[name=xevent]').value.trim())
      .map((r) => ({ event: r.querySelector('[name=xevent]').value.trim(), from_step: Number(r.querySelector('[name=xfrom]').value), to_step: Number(r.querySelector('[name=xto]').value) }));
    if (x.length) next.exclusions = x;
    const b = readBreakdown(f);
    if (b) next.breakdown = b;
    go('funnel', { q: JSON.stringify(next) });
  });
  main.replaceChildren(h('h1', {}, 'Funnel'), form, h('p', { class: 'muted' }, 'Running…'));
  const r = await api('insights/funnel', q);
  const out = [h('h1', {}, 'Funnel'), form];
  if ((q.viz || 'steps') === 'steps') {
    for (const line of r.lines) {
      const first = line.steps[0] ? line.steps[0].count : 0;
      if (line.breakdown_value !== null) out.push(h('h2', {}, line.breakdown_value || 'none'));
      out.push(h('div', { class: 'bars' }, line.steps.map((s) => {
        const pct = first ? (100 * s.count) / first : 0;
        return h('div', { class: 'bar' }, h('span', {}, (s.order + 1) + '. ' + s.name),
          h('div', { class: 'track' }, h('div', { class: 'fill', style: 'width:' + pct.toFixed(1) + '%' })),
          h('span', {}, fmt(s.count) + ' · ' + pct.toFixed(1) + '% · median ' + seconds(s.median_conversion_time)));
      })));
    }
    out.push(h('table', { id: 'funnel-table' },
      h('tr', {}, h('th', {}, 'breakdown'), h('th', {}, 'step'), h('th', { class: 'num' }, 'count'), h('th', { class: 'num' }, '% of first'), h('th', { class: 'num' }, 'median time')),
      r.lines.flatMap((line) => line.steps.map((s) => h('tr', {}, h('td', {}, line.breakdown_value ?? ''), h('td', {}, s.name),
        h('td', { class: 'num' }, fmt(s.count)), h('td', { class: 'num' }, line.steps[0].count ? (100 * s.count / line.steps[0].count).toFixed(1) + '%' : '–'),
        h('td', { class: 'num' }, seconds(s.median_conversion_time)))))));
  } else if (q.viz === 'time_to_convert') {
    const t = r.time_to_convert || { bins: [] };
    const most = Math.max(1, ...t.bins.map((b) => b[1]));
    out.push(h('p', {}, 'average ' + seconds(t.average_conversion_time)),
      h('div', { class: 'bars' }, t.bins.map(([start, n]) => h('div', { class: 'bar' }, h('span', {}, seconds(start)),
        h('div', { class: 'track' }, h('div', { class: 'fill', style: 'width:' + (100 * n / most).toFixed(1) + '%' })), h('span', {}, fmt(n))))));
  } else {
    const starts = r.trends.length ? r.trends[0].data.map((p) => p.start) : [];
    out.push(lineChart(starts, r.trends.map((l) => ({ label: l.breakdown_value || 'conversion %', data: l.data.map((p) => p.conversion_rate) })), '%'),
      h('table', { id: 'funnel-table' }, h('tr', {}, h('th', {}, 'period'), h('th', { class: 'num' }, 'entered'), h('th', { class: 'num' }, 'converted'), h('th', { class: 'num' }, '%')),
        (r.trends[0] ? r.trends[0].data : []).map((p) => h('tr', {}, h('td', {}, p.label), h('td', { class: 'num' }, fmt(p.reached_from_step_count)), h('td', { class: 'num' }, fmt(p.reached_to_step_count)), h('td', { class: 'num' }, p.conversion_rate.toFixed(2))))));
  }
  main.replaceChildren(...out);
}

// ---- retention ----------------------------------------------------------------------------

async function retentionPage(params) {
  const company = (project.group_types[0] || {}).name;
  const q = queryFromUrl(params, { target: { event: 'signed_up' }, returning: { event: '$pageview' }, period: 'week', periods: 8, aggregation_group_type: company || null, date_to: '' });
  const form = h('form', { class: 'query', id: 'retention-form' },
    field('Cohort by', h('input', { name: 'tevent', value: q.target.event || '', placeholder: 'any event' })),
    field('Coming back with', h('input', { name: 'revent', value: q.returning.event || '', placeholder: 'any event' })),
    field('Aggregating by', h('select', { name: 'agg' }, groupTypeOptions(q.aggregation_group_type, true))),
    field('Period', select('period', INTERVALS, q.period || 'day')),
    field('Periods', h('input', { name: 'periods', value: q.periods || 7, size: 3 })),
    field('Cohorts', select('rtype', [['recurring', 'recurring'], ['first_time', 'first time']], q.retention_type || 'recurring')),
    field('Up to', h('input', { name: 'date_to', value: q.date_to || '', placeholder: 'now', size: 12 })),
    h('button', { class: 'primary', type: 'submit' }, 'Run'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = e.target;
    go('retention', { q: JSON.stringify({ target: { event: f.tevent.value.trim() || null }, returning: { event: f.revent.value.trim() || null },
      aggregation_group_type: f.agg.value || null, period: f.period.value, periods: Number(f.periods.value), retention_type: f.rtype.value, date_to: f.date_to.value }) });
  });
  main.replaceChildren(h('h1', {}, 'Retention'), form, h('p', { class: 'muted' }, 'Running…'));
  const r = await api('insights/retention', q);
  const table = h('table', { id: 'retention-table' },
    h('tr', {}, h('th', {}, 'cohort'), h('th', { class: 'num' }, 'size'), r.labels.slice(1).map((l) => h('th', { class: 'num' }, l))),
    r.cohorts.map((c, n) => h('tr', {}, h('td', {}, c.date + (c.breakdown_value ? ' · ' + c.breakdown_value : '')), h('td', { class: 'num' }, fmt(c.values[0])),
      c.values.slice(1).map((v, k) => {
        // Cohort i (of each breakdown value's table) has periods − i periods so far.
        const visible = k + 1 < r.labels.length - (n % r.labels.length);
        const pct = c.values[0] ? (100 * v) / c.values[0] : 0;
        return h('td', { class: 'num', title: fmt(v), style: visible ? 'background: rgba(29,74,255,' + (pct / 100 * 0.85 + 0.05).toFixed(2) + ')' + (pct > 50 ? ';color:#fff' : '') : '' },
          visible ? pct.toFixed(1) + '%' : '');
      }))));
  main.replaceChildren(h('h1', {}, 'Retention'), form, h('div', { class: 'scroll' }, table));
}

// ---- routing ------------------------------------------------------------------------------

async function route() {
  if (!project) return;
  clearError();
  const { parts, params } = location_();
  const page = parts[0] || 'groups';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page || (page === 'group' && a.dataset.page === 'groups'));
  try {
    if (page === 'group') await groupPage(parts[1], parts.slice(2).join('/'));
    else if (page === 'trends') await trendsPage(params);
    else if (page === 'funnel') await funnelPage(params);
    else if (page === 'retention') await retentionPage(params);
    else await groupsPage(params);
  } catch (e) {
    if (e.status === 401) { sessionStorage.removeItem(KEY); project = null; return signIn(e.message); }
    for (const p of main.querySelectorAll('p.muted')) if (p.textContent === 'Running…') p.remove();
    showError(e.message);
  }
}

window.addEventListener('hashchange', route);
start();
