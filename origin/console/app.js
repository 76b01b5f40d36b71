// The allot console: placements, their delivery over time, and their targets, over the
// admin API with the token the user signs in with. No framework and no build step: the
// origin serves this file as it is. Every text goes in through textContent, never HTML.

const main = document.getElementById('main');
const SVG = 'http://www.w3.org/2000/svg';
const REFRESH_MS = 5000;
let timer = null;
// Bumped on every navigation: a view whose request answers after the user moved on
// must not draw over the new one.
let nav = 0;

// ---- plumbing ---------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v == null) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c != null && c !== false) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

const session = {
  get() { try { return JSON.parse(sessionStorage.getItem('allot') || 'null'); } catch { return null; } },
  set(v) { sessionStorage.setItem('allot', JSON.stringify(v)); },
  clear() { sessionStorage.removeItem('allot'); },
};

async function api(method, path, { body, token, ifMatch } = {}) {
  const headers = { Authorization: `Bearer ${token ?? session.get()?.token ?? ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (ifMatch) headers['If-Match'] = ifMatch;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let json = null;
  try { json = await r.json(); } catch { /* 204 */ }
  if (r.status === 401 && !token) { session.clear(); route(); }
  return { status: r.status, json, etag: r.headers.get('ETag') };
}

const pct = (x, digits = 1) => (x == null || Number.isNaN(x) ? '–' : `${(x * 100).toFixed(digits)} %`);
const when = (ms) => (ms ? new Date(ms).toLocaleString() : '–');
const HEALTH = {
  on_target: 'On target', converging: 'Converging', infeasible: 'Infeasible',
  unattainable: 'Unattainable', no_traffic: 'No traffic',
};
const badge = (health) => h('span', { class: `badge ${health}`, text: HEALTH[health] ?? health });

function show(...children) {
  main.replaceChildren(...children.filter((c) => c != null && c !== false));
}

function errorText(r) {
  return r.json?.error?.message ?? `HTTP ${r.status}`;
}

// ---- sign in ----------------------------------------------------------------------

function signIn() {
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, 'aria-describedby': 'signin-error' });
  const error = h('p', { id: 'signin-error', class: 'error', role: 'alert' });
  const form = h('form', { class: 'card signin', onsubmit: async (e) => {
    e.preventDefault();
    const r = await api('GET', '/v1/me', { token: input.value.trim() });
    if (r.status !== 200) { error.textContent = r.status === 401 ? 'That token is not known.' : errorText(r); return; }
    session.set({ token: input.value.trim(), name: r.json.name, role: r.json.role });
    location.hash = '#/';
    route();
  } },
  h('h1', { text: 'Sign in' }),
  h('label', { for: 'token', text: 'Admin token' }), input,
  h('button', { type: 'submit', text: 'Sign in' }), error);
  show(form);
  input.focus();
}

// ---- placements list --------------------------------------------------------------

async function list(after) {
  const mine = nav;
  const q = after ? `?after=${encodeURIComponent(after)}` : '';
  const r = await api('GET', `/v1/placements${q}`);
  if (mine !== nav) return;
  if (r.status !== 200) { show(h('p', { class: 'error', role: 'alert', text: errorText(r) })); return; }
  const statuses = await Promise.all(r.json.placements.map((p) => api('GET', `/v1/placements/${encodeURIComponent(p.id)}/status`)));
  if (mine !== nav) return;
  const rows = r.json.placements.map((p, i) => {
    const st = statuses[i].json ?? {};
    return h('tr', {},
      h('th', { scope: 'row' }, h('a', { href: `#/p/${encodeURIComponent(p.id)}`, text: p.id })),
      h('td', {}, st.health ? badge(st.health) : '–'),
      h('td', { class: 'num', text: p.campaigns }),
      h('td', { class: 'num', text: st.sample_rate == null ? '–' : st.sample_rate.toPrecision(3) }),
      h('td', { class: 'num', text: st.plan_version ?? '–' }),
      h('td', { text: `${p.updated_by}, ${when(p.updated_at_ms)}` }));
  });
  const table = h('table', { class: 'list' },
    h('caption', { text: 'Placements' }),
    h('thead', {}, h('tr', {}, ...['Placement', 'Health', 'Campaigns', 'Sample rate', 'Plan', 'Last change']
      .map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 6, text: 'No placements yet.' }))));
  const more = r.json.next && h('button', { type: 'button', onclick: () => list(r.json.next), text: 'Next page' });
  const create = session.get()?.role === 'manager' && newPlacementForm();
  show(h('h1', { text: 'Placements' }), table, more, create);
  timer = setTimeout(() => list(after), REFRESH_MS * 2);
}

function newPlacementForm() {
  const input = h('input', { id: 'new-id', pattern: '[A-Za-z0-9_\\-]{1,64}', required: true });
  return h('form', { class: 'card', onsubmit: (e) => {
    e.preventDefault();
    if (input.checkValidity()) location.hash = `#/p/${encodeURIComponent(input.value)}`;
  } }, h('h2', { text: 'New placement' }), h('label', { for: 'new-id', text: 'Placement id' }), input,
  h('button', { type: 'submit', text: 'Create…' }));
}

// ---- a placement ------------------------------------------------------------------

async function placement(id) {
  const mine = nav;
  const enc = encodeURIComponent(id);
  const manager = session.get()?.role === 'manager';
  const summary = h('section', { 'aria-labelledby': 'h-delivery' });
  const chart = h('section', { 'aria-labelledby': 'h-history' });
  const audit = h('section', { 'aria-labelledby': 'h-audit' });
  const got = await api('GET', `/v1/placements/${enc}`);
  if (mine !== nav) return;
  if (got.status !== 200 && got.status !== 404) { show(h('p', { class: 'error', role: 'alert', text: errorText(got) })); return; }
  const editor = targetsEditor(id, got.status === 200 ? got.json : { campaigns: [] }, got.etag, manager);
  show(h('h1', {}, h('span', { text: id }), ' ', h('span', { id: 'health' })), summary, chart, editor, audit);

  async function refresh() {
    const [st, hist, au] = await Promise.all([
      api('GET', `/v1/placements/${enc}/status`),
      api('GET', `/v1/placements/${enc}/history?limit=60`),
      api('GET', `/v1/audit?placement=${enc}&limit=20`),
    ]);
    if (mine !== nav || !document.body.contains(summary)) return;
    renderStatus(summary, st);
    renderHistory(chart, hist);
    renderAudit(audit, au);
    timer = setTimeout(refresh, REFRESH_MS);
  }
  await refresh();
}

function renderStatus(el, r) {
  const health = document.getElementById('health');
  if (r.status !== 200) {
    health.replaceChildren();
    el.replaceChildren(h('h2', { id: 'h-delivery', text: 'Delivery' }), h('p', { text: r.status === 404 ? 'Not created yet: set targets below.' : errorText(r) }));
    return;
  }
  const st = r.json;
  health.replaceChildren(badge(st.health));
  const rows = st.campaigns.map((c) => h('tr', {},
    h('th', { scope: 'row', text: c.id }),
    h('td', { class: 'num', text: pct(c.target) }),
    h('td', { class: 'num', text: `${pct(c.estimate.share)} (${pct(c.estimate.low)}–${pct(c.estimate.high)})` }),
    h('td', { class: 'num', text: c.weight == null ? '–' : c.weight.toFixed(4) }),
    h('td', { class: c.feasibility?.status === 'infeasible' ? 'warn' : '',
      text: c.feasibility?.status === 'infeasible' ? `Infeasible: at most ${pct(c.feasibility.max_share)}` : (c.feasibility?.status ?? '–') })));
  el.replaceChildren(
    h('h2', { id: 'h-delivery', text: 'Delivery in the last window' }),
    h('p', { class: 'meta', text: `Plan ${st.plan_version ?? '–'}, sample rate ${st.sample_rate == null ? '–' : st.sample_rate.toPrecision(3)}, `
      + `${Math.round(st.window.requests)} requests (${st.window.samples} sampled)`
      + (st.attainable === false ? '. This traffic cannot give the confidence asked for, even sampling every request.' : '') }),
    h('table', {}, h('thead', {}, h('tr', {}, ...['Campaign', 'Target', 'Estimated share (interval)', 'Weight', 'Feasibility']
      .map((t) => h('th', { scope: 'col', text: t })))), h('tbody', {}, rows)));
}

// One small chart per campaign: the interval as a band, the estimate as a line, the
// target dashed; oldest window on the left.
function renderHistory(el, r) {
  const title = h('h2', { id: 'h-history', text: 'Over time' });
  const windows = r.status === 200 ? [...r.json.windows].reverse() : [];
  if (windows.length === 0) { el.replaceChildren(title, h('p', { text: 'No window recorded yet.' })); return; }
  const ids = [...new Set(windows.flatMap((w) => w.campaigns.map((c) => c.id)))];
  const charts = ids.map((id) => {
    const points = windows.map((w, i) => ({ i, c: w.campaigns.find((c) => c.id === id) })).filter((p) => p.c);
    const top = Math.min(1, Math.max(...points.map((p) => Math.max(p.c.estimate.high, p.c.target))) * 1.2 || 0.1);
    const W = 520, H = 120, n = Math.max(windows.length - 1, 1);
    const x = (i) => 40 + (i / n) * (W - 50);
    const y = (v) => 10 + (1 - Math.min(v, top) / top) * (H - 30);
    const last = points[points.length - 1].c;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart', 'data-campaign': id,
      'aria-label': `${id}: target ${pct(last.target)}, last estimate ${pct(last.estimate.share)} over ${points.length} windows` });
    const band = points.map((p) => `${x(p.i)},${y(p.c.estimate.high)}`)
      .concat([...points].reverse().map((p) => `${x(p.i)},${y(p.c.estimate.low)}`)).join(' ');
    svg.append(
      s('polygon', { points: band, class: 'band' }),
      s('polyline', { points: points.map((p) => `${x(p.i)},${y(p.c.target)}`).join(' '), class: 'target' }),
      s('polyline', { points: points.map((p) => `${x(p.i)},${y(p.c.estimate.share)}`).join(' '), class: 'estimate' }));
    for (const v of [0, top / 2, top]) {
      const t = s('text', { x: 2, y: y(v) + 4, class: 'axis' });
      t.textContent = pct(v, 0);
      svg.append(t);
    }
    return h('figure', {}, svg, h('figcaption', { text: `${id}: target (dashed), estimate (line) and its interval (band)` }));
  });
  el.replaceChildren(title, h('p', { class: 'meta', text: `The last ${windows.length} windows.` }), ...charts);
}

function renderAudit(el, r) {
  const items = r.status === 200 ? r.json.entries.map((e) => h('li', {},
    h('time', { text: when(e.at_ms) }), ` ${e.who} ${e.action === 'delete' ? 'deleted the placement' : 'set the targets'} (revision ${e.rev})`)) : [];
  el.replaceChildren(h('h2', { id: 'h-audit', text: 'Changes' }),
    items.length ? h('ol', { class: 'audit' }, items) : h('p', { text: 'No changes recorded.' }));
}

// ---- editing ----------------------------------------------------------------------

const csv = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);

function targetsEditor(id, spec, etag, manager) {
  const enc = encodeURIComponent(id);
  let current = etag;
  const rows = h('tbody');
  const status = h('div', { id: 'form-status', role: 'status', 'aria-live': 'polite' });
  const conflict = h('div', { id: 'conflict' });
  const preview = h('section', { id: 'preview', 'aria-live': 'polite' });
  const margin = h('input', { id: 'margin', name: 'confidence.margin', type: 'number', step: '0.01', min: '0.01', max: '50',
    value: ((spec.confidence?.margin ?? 0.01) * 100).toString(), disabled: !manager });
  const level = h('input', { id: 'level', name: 'confidence.level', type: 'number', step: '0.1', min: '50', max: '99.99',
    value: ((spec.confidence?.level ?? 0.95) * 100).toString(), disabled: !manager });

  function addRow(c = { id: '', rate: 0, creative: {}, eligibility: {} }) {
    const i = rows.children.length;
    const cell = (name, label, attrs) => {
      const inputId = `f-${i}-${name}`;
      return h('td', {}, h('label', { for: inputId, class: 'sr-only', text: label }),
        h('input', { id: inputId, name: `campaigns[${i}].${name}`, disabled: !manager, ...attrs }),
        h('span', { class: 'field-error', id: `${inputId}-error` }));
    };
    const row = h('tr', {},
      cell('id', `Campaign ${i + 1} id`, { value: c.id }),
      cell('rate', `Campaign ${i + 1} target share, percent`, { type: 'number', step: 'any', value: String(+(c.rate * 100).toFixed(6)) }),
      cell('eligibility.platforms', `Campaign ${i + 1} platforms`, { value: (c.eligibility?.platforms ?? []).join(', '), placeholder: 'all' }),
      cell('eligibility.countries', `Campaign ${i + 1} countries`, { value: (c.eligibility?.countries ?? []).join(', '), placeholder: 'all' }),
      h('td', {}, manager && h('button', { type: 'button', 'aria-label': `Remove campaign ${i + 1}`, text: 'Remove',
        onclick: () => { row.remove(); } })));
    row.creative = c.creative ?? {};
    rows.append(row);
  }
  (spec.campaigns ?? []).forEach(addRow);

  function read() {
    const campaigns = [...rows.children].map((row) => {
      const v = (name) => row.querySelector(`[name$=".${name}"]`).value;
      return { id: v('id').trim(), rate: Number(v('rate')) / 100, creative: row.creative,
        eligibility: { platforms: csv(v('eligibility.platforms')), countries: csv(v('eligibility.countries')) } };
    });
    return { campaigns, confidence: { margin: Number(margin.value) / 100, level: Number(level.value) / 100 } };
  }

  function clearErrors() {
    form.querySelectorAll('.field-error').forEach((e) => { e.textContent = ''; });
    form.querySelectorAll('[aria-invalid]').forEach((e) => { e.removeAttribute('aria-invalid'); e.removeAttribute('aria-describedby'); });
    status.textContent = '';
    status.className = '';
  }

  // A 422 names the field as a path into the body: campaigns[1].rate → that input.
  function fieldError(r) {
    const { field, message } = r.json.error;
    // campaigns[0].eligibility.platforms[2] → the first row's platforms input.
    const m = field?.match(/^campaigns\[(\d+)\]\.(.+?)(\[\d+\])?$/);
    const input = m ? rows.children[Number(m[1])]?.querySelector(`[name$=".${CSS.escape(m[2])}"]`)
      : field && form.querySelector(`[name="${CSS.escape(field)}"]`);
    if (input) {
      const note = document.getElementById(`${input.id}-error`);
      if (note) { note.textContent = message; input.setAttribute('aria-describedby', note.id); }
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
    status.className = 'error';
    status.textContent = `Not saved: ${message}`;
  }

  async function save(ifMatch) {
    clearErrors();
    conflict.replaceChildren();
    const r = await api('PUT', `/v1/placements/${enc}`, { body: read(), ifMatch });
    if (r.status === 200 || r.status === 201) {
      current = r.etag;
      status.className = 'ok';
      status.textContent = `Saved (revision ${current}). The next control round publishes a plan for it.`;
    } else if (r.status === 422) {
      fieldError(r);
    } else if (r.status === 412) {
      await showConflict();
    } else {
      status.className = 'error';
      status.textContent = `Not saved: ${errorText(r)}`;
    }
  }

  async function showConflict() {
    const theirs = await api('GET', `/v1/placements/${enc}`);
    const list = (theirs.json?.campaigns ?? []).map((c) => h('li', { text: `${c.id}: ${pct(c.rate)}` }));
    conflict.replaceChildren(h('div', { class: 'card conflict', role: 'alert' },
      h('h3', { text: 'Someone changed these targets since you opened them' }),
      h('p', { text: `Their version (revision ${theirs.etag ?? 'deleted'}):` }), h('ul', {}, list),
      h('button', { type: 'button', text: 'Discard mine and load theirs', onclick: () => route() }), ' ',
      h('button', { type: 'button', text: 'Save mine over theirs', onclick: () => save(theirs.etag ?? undefined) })));
    status.className = 'error';
    status.textContent = 'Not saved: the targets changed meanwhile.';
  }

  async function runPreview() {
    clearErrors();
    const r = await api('POST', `/v1/placements/${enc}/preview`, { body: read() });
    if (r.status === 422) { fieldError(r); preview.replaceChildren(); return; }
    if (r.status !== 200) { preview.replaceChildren(h('p', { class: 'error', text: errorText(r) })); return; }
    const p = r.json;
    const rows = p.campaigns.map((c) => h('tr', { class: c.feasible ? '' : 'warn' },
      h('th', { scope: 'row', text: c.id }), h('td', { class: 'num', text: pct(c.target) }),
      h('td', { class: 'num', text: pct(c.predicted_share) }),
      h('td', { text: c.feasible ? 'Feasible' : `Infeasible: best achievable ${pct(c.max_share)}` })));
    preview.replaceChildren(
      h('h3', { text: 'Preview on the recent traffic' }),
      h('p', { text: (p.feasible ? 'Every target can be met.' : 'Some targets cannot be met together.')
        + ` Sample rate needed: ${p.sample_rate.toPrecision(3)}`
        + (p.required_samples == null ? '' : ` (${Math.ceil(p.required_samples)} samples per window)`)
        + (p.attainable === false ? '. The traffic cannot give this confidence even sampling every request.' : '.') }),
      h('table', {}, h('thead', {}, h('tr', {}, ...['Campaign', 'Target', 'Would get', 'Feasibility']
        .map((t) => h('th', { scope: 'col', text: t })))), h('tbody', {}, rows)));
  }

  const form = h('form', { id: 'targets', novalidate: true, onsubmit: (e) => { e.preventDefault(); if (manager) save(current); } },
    h('h2', { id: 'h-targets', text: 'Targets' }),
    !manager && h('p', { class: 'meta', text: 'Your token reads only (viewer role): preview is open, saving is not.' }),
    h('table', { class: 'editor' }, h('thead', {}, h('tr', {}, ...['Campaign', 'Share (%)', 'Platforms', 'Countries', '']
      .map((t) => h('th', { scope: 'col', text: t })))), rows),
    manager && h('button', { type: 'button', text: 'Add campaign', onclick: () => addRow() }),
    h('fieldset', {}, h('legend', { text: 'Confidence' }),
      h('label', { for: 'margin', text: 'Margin (± percentage points)' }), margin,
      h('span', { class: 'field-error', id: 'margin-error' }),
      h('label', { for: 'level', text: 'Level (%)' }), level, h('span', { class: 'field-error', id: 'level-error' })),
    h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'preview-button', text: 'Preview', onclick: runPreview }),
      manager && h('button', { type: 'submit', id: 'save-button', text: 'Save' })),
    status, conflict, preview);
  return form;
}

// ---- API reference ----------------------------------------------------------------

// The origin's document and the edge's, rendered: every operation with its parameters,
// body and answers. Needs no token.
async function reference() {
  const mine = nav;
  const docs = await Promise.all(['/openapi.json', '/openapi-edge.json'].map((u) => fetch(u).then((r) => r.json())));
  if (mine !== nav) return;
  const schemaText = (sc) => (sc?.$ref ? sc.$ref.split('/').pop() : [sc?.type, sc?.pattern && `/${sc.pattern}/`].flat().filter(Boolean).join(' '));
  const sections = docs.map((doc) => h('section', {},
    h('h2', { text: doc.info.title }), h('p', { class: 'meta', text: doc.info.description ?? '' }),
    ...Object.entries(doc.paths).flatMap(([path, item]) => Object.entries(item).map(([method, op]) => h('article', { class: 'card op' },
      h('h3', {}, h('code', { text: `${method.toUpperCase()} ${path}` })),
      h('p', { text: op.summary ?? op.description ?? '' }),
      op.security?.length && h('p', { class: 'meta', text: 'Bearer token' }),
      op.parameters?.length && h('table', {}, h('thead', {}, h('tr', {}, ...['Parameter', 'In', 'Required', 'Schema'].map((t) => h('th', { scope: 'col', text: t })))),
        h('tbody', {}, op.parameters.map((p) => h('tr', {}, h('td', {}, h('code', { text: p.name })), h('td', { text: p.in }),
          h('td', { text: p.required ? 'yes' : 'no' }), h('td', { text: schemaText(p.schema) }))))),
      op.requestBody && h('p', { text: `Body: ${schemaText(op.requestBody.content?.['application/json']?.schema) || 'JSON'}` }),
      h('dl', { class: 'responses' }, Object.entries(op.responses).flatMap(([status, r]) => [h('dt', { text: status }), h('dd', { text: r.description ?? '' })])))))));
  show(h('h1', { text: 'API reference' }), ...sections);
}

// ---- routing ----------------------------------------------------------------------

function route() {
  nav += 1;
  clearTimeout(timer);
  const me = session.get();
  document.getElementById('who').textContent = me ? `${me.name} (${me.role})` : '';
  document.getElementById('signout').hidden = !me;
  if (location.hash === '#/api') { reference(); return; }
  if (!me) { signIn(); return; }
  const m = location.hash.match(/^#\/p\/(.+)$/);
  if (m) placement(decodeURIComponent(m[1]));
  else list();
  main.focus();
}

document.getElementById('signout').addEventListener('click', () => { session.clear(); location.hash = '#/'; route(); });
window.addEventListener('hashchange', route);
route();
