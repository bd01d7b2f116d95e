// The phalanx dashboard: one page over the node's own JSON API (no framework, no CDN). It
// polls /v1/status every second and streams /v1/events (Server-Sent Events read through
// fetch, which can carry the API token where EventSource cannot); the slower panels
// (availability, drills, balancers, sessions) every 5 s. Operator actions ask for a
// confirmation, then call the same routes as the CLI. The token comes from the link that
// `phalanx ui` prints (#token=…, never sent to the server) or the login box, and is kept in
// sessionStorage for this tab only. Everything from the cluster is inserted as text, never as
// HTML.
'use strict';

const $ = (s) => document.querySelector(s);
let token = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function ago(ms) {
  if (ms === null || ms === undefined) return 'never';
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
  return Math.round(ms / 60000) + ' min';
}

function dur(ms) {
  if (ms === null || ms === undefined) return '-';
  if (ms < 1000) return ms + ' ms';
  if (ms < 3600000) return (ms / 1000).toFixed(1) + ' s';
  return (ms / 3600000).toFixed(1) + ' h';
}

function takeToken() {
  const m = location.hash.match(/token=([0-9a-fA-F]+)/);
  if (m) {
    sessionStorage.setItem('phalanx-token', m[1]);
    history.replaceState(null, '', location.pathname);
  }
  token = sessionStorage.getItem('phalanx-token');
}

function showLogin(why) {
  $('#main').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = why || '';
}

async function api(path, opts = {}) {
  const headers = { Authorization: 'Bearer ' + token, 'x-phalanx-operator': 'dashboard@' + location.hostname };
  if (opts.body) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401) {
    showLogin('The token was refused.');
    throw new Error('unauthorized');
  }
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.reason) || r.status + ' ' + r.statusText);
  return body;
}

function confirmThen(text, action) {
  const d = $('#confirm');
  $('#confirm-text').textContent = text;
  d.onclose = async () => {
    if (d.returnValue !== 'yes') return;
    try {
      await action();
      tick();
    } catch (e) {
      alert(text + ' failed: ' + e.message);
    }
  };
  d.showModal();
}

const post = (path, body) => api(path, { method: 'POST', body: JSON.stringify(body || {}) });

function renderSummary(st) {
  $('#cluster').textContent = st.cluster;
  const q = st.quorum
    ? el('span', { class: 'ok', 'data-quorum': 'yes' }, `quorum (${st.votes} of ${st.voters.length} votes, ${st.votes_needed} needed)`)
    : el('span', { class: 'bad', 'data-quorum': 'no' }, `NO QUORUM (${st.votes} of ${st.voters.length} votes, ${st.votes_needed} needed)`);
  $('#summary').replaceChildren(
    'leader ', el('b', {}, st.leader || 'none'), ` · term ${st.term} · `, q,
    st.maintenance ? el('span', { class: 'warn' }, ' · MAINTENANCE') : '',
    ` · answered by ${st.node} · heartbeat ${st.heartbeat_interval_ms} ms × ${st.dead_after} · `,
    el('small', {}, 'updated ' + new Date().toLocaleTimeString()),
  );
}

function renderNodes(st) {
  const rows = st.nodes.map((n) => {
    const links = n.is_self
      ? 'this node'
      : n.links.map((l) => el('span', { class: l.up ? 'up' : 'down' }, `link ${l.index} ${l.up ? 'up' : 'DOWN'} (${ago(l.last_heartbeat_ms_ago)}) `));
    const role = [n.voter ? 'voter' : 'learner', st.leader === n.name ? 'leader' : ''].filter(Boolean).join(', ');
    const action = n.standby
      ? el('button', { onclick: () => confirmThen(`Take ${n.name} out of standby?`, () => post(`/v1/nodes/${n.name}/standby`, { standby: false })) }, 'unstandby')
      : el('button', { onclick: () => confirmThen(`Put ${n.name} in standby (its resources move away)?`, () => post(`/v1/nodes/${n.name}/standby`, { standby: true })) }, 'standby');
    const cfg = n.config_version ? 'v' + n.config_version : '';
    return el('tr', { 'data-node': n.name, 'data-state': n.state },
      el('td', {}, n.name), el('td', { class: n.state }, n.state, n.maintenance ? ' (maintenance)' : '', n.fence && n.fence.fenced_at_ms ? ' (fenced)' : ''), el('td', {}, role), el('td', {}, links), el('td', {}, cfg), el('td', {}, action));
  });
  $('#nodes tbody').replaceChildren(...rows);
}

function renderResources(st) {
  const online = st.nodes.filter((n) => n.state === 'online').map((n) => n.name);
  const rows = st.resources.map((r) => {
    const where = Object.entries(r.running).map(([n, role]) => (role === 'Promoted' || role === 'promoted' ? n + ' (promoted)' : n));
    const failures = Object.entries(r.failures).filter(([, c]) => c > 0).map(([n, c]) => `${n}: ${c}`).join(', ');
    const op = r.last_op ? `${r.last_op.op || 'monitor'} on ${r.last_op.node}: ${r.last_op.outcome}` : '';
    const id = r.parent || r.id;
    const target = el('select', {}, ...online.map((n) => el('option', { value: n }, n)));
    return el('tr', { 'data-resource': r.id, 'data-where': Object.keys(r.running).join(','), 'data-state': r.state },
      el('td', {}, r.id, r.parent ? el('small', {}, ` [${r.parent}]`) : ''),
      el('td', {}, r.agent),
      el('td', { class: r.state }, r.state),
      el('td', {}, where.join(', ') || '-'),
      el('td', {}, failures || '0', r.last_error ? el('div', { class: 'bad' }, r.last_error) : ''),
      el('td', {}, op),
      el('td', {},
        el('button', { onclick: () => why(r.id) }, 'why'),
        target,
        el('button', { onclick: () => confirmThen(`Move ${id} to ${target.value}?`, () => post(`/v1/resources/${id}/move`, { node: target.value })) }, 'move'),
        el('button', { onclick: () => confirmThen(`Clear the moves and bans of ${id}?`, () => post(`/v1/resources/${id}/clear`)) }, 'clear'),
        el('button', { onclick: () => confirmThen(`Clean up the failures of ${r.id}?`, () => post(`/v1/resources/${r.id}/cleanup`)) }, 'cleanup')));
  });
  $('#resources tbody').replaceChildren(...rows);
}

async function why(id) {
  const w = $('#why');
  try {
    const r = await api(`/v1/why/${id}`);
    const explain = Array.isArray(r.explain) ? r.explain.join('\n') : JSON.stringify(r.explain, null, 2);
    w.textContent = `${r.unit}:\n${explain}${r.next.length ? '\nnext: ' + r.next.join('; ') : ''}`;
  } catch (e) {
    w.textContent = e.message;
  }
  w.hidden = false;
}

async function renderBalancers() {
  let lbs = [];
  try { lbs = await api('/v1/balancers'); } catch (e) { return; }
  $('#balancers-section').hidden = lbs.length === 0;
  const rows = lbs.flatMap((b) => b.backends.map((be) => el('tr', { 'data-backend': be.name, 'data-state': be.state },
    el('td', {}, b.id), el('td', {}, be.name), el('td', {}, be.address), el('td', { class: be.state === 'up' ? 'up' : 'warn' }, be.state),
    el('td', {}, be.weight), el('td', {}, be.in_flight),
    el('td', {},
      el('button', { onclick: () => confirmThen(`Drain ${be.name} of ${b.id}?`, () => post(`/v1/balancers/${b.id}/backends/${be.name}`, { admin: 'drain' })) }, 'drain'),
      el('button', { onclick: () => confirmThen(`Make ${be.name} of ${b.id} ready?`, () => post(`/v1/balancers/${b.id}/backends/${be.name}`, { admin: 'ready' })) }, 'ready')))));
  $('#balancers tbody').replaceChildren(...rows);
}

async function renderSessions() {
  let s;
  try { s = await api('/v1/sessions'); } catch (e) { $('#sessions-section').hidden = true; return; }
  $('#sessions-section').hidden = !s.enabled;
  const hit = s.hit_ratio === null ? '-' : (100 * s.hit_ratio).toFixed(1) + ' %';
  $('#sessions').replaceChildren(el('p', {},
    `leader ${s.leader || 'none'} · ${s.items} items, ${s.bytes} bytes of ${s.memory_limit} · ${s.evictions} evictions · hit ratio ${hit} · ` +
    `${s.ops_per_s.toFixed(0)} ops/s · commit ${s.commit_ms === null ? '-' : s.commit_ms.toFixed(1) + ' ms'} · ${s.connections} connections here · listen ${s.listen.join(', ')}`));
}

async function renderAvailability() {
  let a;
  try { a = await api('/v1/availability'); } catch (e) { return; }
  const rows = a.resources.map((r) => el('tr', { 'data-availability': r.resource },
    el('td', {}, r.resource), el('td', {}, dur(r.observed_ms)), el('td', {}, dur(r.down_ms)), el('td', {}, dur(r.planned_down_ms)),
    el('td', {}, r.failures), el('td', {}, dur(r.mttr_ms)),
    el('td', {}, r.availability === null ? '-' : (100 * r.availability).toFixed(4) + ' %'),
    el('td', {}, r.budget_ms ? (100 * (r.budget_ms - r.budget_remaining_ms) / r.budget_ms).toFixed(0) + ' %' : '-')));
  $('#availability tbody').replaceChildren(...rows);
}

const detail = (e, k) => (e.details.find((l) => l.startsWith(k + '=')) || '').slice(k.length + 1);

function plot(runs) {
  const svg = $('#drill-plot');
  const ns = 'http://www.w3.org/2000/svg';
  const max = Math.max(100, ...runs.map((r) => r.rto));
  const w = 600, h = 120, bw = Math.max(4, Math.min(30, (w - 60) / Math.max(1, runs.length) - 2));
  const items = [];
  const text = (x, y, t) => { const e = document.createElementNS(ns, 'text'); e.setAttribute('x', x); e.setAttribute('y', y); e.setAttribute('font-size', '10'); e.textContent = t; return e; };
  items.push(text(4, 12, `RTO per run (max ${max} ms)`));
  runs.forEach((r, i) => {
    const bh = Math.max(1, (h - 30) * r.rto / max);
    const b = document.createElementNS(ns, 'rect');
    b.setAttribute('x', 40 + i * (bw + 2)); b.setAttribute('y', h - 10 - bh); b.setAttribute('width', bw); b.setAttribute('height', bh);
    b.setAttribute('fill', r.scenario === 'switchover' ? '#4a7bd0' : r.scenario === 'kill-service' ? '#d09a4a' : '#c0504d');
    const t = document.createElementNS(ns, 'title'); t.textContent = `${r.scenario} run ${r.run}: ${r.rto} ms`; b.append(t);
    items.push(b);
  });
  svg.replaceChildren(...items);
}

async function renderDrills() {
  let d;
  try { d = await api('/v1/drills'); } catch (e) { return; }
  $('#drill-active').replaceChildren(d.active
    ? el('p', { class: 'warn', 'data-drill-active': 'yes' }, `Drill running: ${d.active.summary} (by ${d.active.by || d.active.reporter})`)
    : el('p', {}, 'No drill running.'));
  const runs = d.events.filter((e) => e.kind === 'drill_run');
  plot(runs.map((e) => ({ scenario: e.task, run: detail(e, 'run'), rto: Number(detail(e, 'rto_ms') || 0) })));
  const rows = runs.slice(-50).reverse().map((e) => el('tr', { 'data-drill-run': e.seq },
    el('td', {}, new Date(e.time_ms).toLocaleString()), el('td', {}, `${e.task} of ${e.resource}`), el('td', {}, detail(e, 'run')),
    el('td', {}, `${detail(e, 'from')} → ${detail(e, 'to')}`), el('td', {}, detail(e, 'rto_ms') ? detail(e, 'rto_ms') + ' ms' : 'none'),
    el('td', {}, `${detail(e, 'failed_probes')} of ${detail(e, 'probes')}`)));
  $('#drills tbody').replaceChildren(...rows);
}

function addEvent(e, fresh) {
  const list = $('#events');
  const t = new Date(e.time_ms).toLocaleTimeString();
  const li = el('li', { value: e.seq, 'data-kind': e.kind, class: fresh ? 'new' : '' }, `${t} ${e.kind.padEnd(22)} ${e.summary}`);
  list.prepend(li);
  while (list.children.length > 300) list.lastChild.remove();
  if (fresh) setTimeout(() => li.classList.remove('new'), 3000);
}

// The history's tail, then every new event as it is committed; resumes after the last seen
// sequence number when the stream breaks (a node restart, a network blip).
async function followEvents() {
  let next = null;
  for (;;) {
    try {
      if (next === null) {
        const page = await api('/v1/events?limit=50');
        page.events.forEach((e) => addEvent(e, false));
        next = page.next_seq;
      }
      $('#events-state').textContent = 'live';
      const r = await fetch(`/v1/events?follow=1&since=${next}`, { headers: { Authorization: 'Bearer ' + token } });
      if (!r.ok || !r.body) throw new Error('HTTP ' + r.status);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
          const id = block.split('\n').find((l) => l.startsWith('id:'));
          if (!data || !id) continue;
          const e = JSON.parse(data);
          next = e.seq + 1;
          addEvent(e, true);
          if (e.kind.startsWith('drill')) renderDrills();
        }
      }
    } catch (e) {
      $('#events-state').textContent = 'reconnecting (' + e.message + ')';
    }
    await new Promise((res) => setTimeout(res, 1000));
  }
}

async function tick() {
  try {
    const st = await api('/v1/status');
    renderSummary(st);
    renderNodes(st);
    renderResources(st);
    document.body.setAttribute('data-updated', String(Date.now()));
  } catch (e) {
    if (e.message !== 'unauthorized') $('#summary').textContent = 'no answer from this node: ' + e.message;
  }
}

function slow() {
  renderAvailability();
  renderDrills();
  renderBalancers();
  renderSessions();
}

let started = false;

async function start() {
  $('#login').hidden = true;
  $('#main').hidden = false;
  await tick();
  if ($('#main').hidden || started) return;
  started = true;
  slow();
  followEvents();
  setInterval(tick, 1000);
  setInterval(slow, 5000);
}

document.addEventListener('DOMContentLoaded', () => {
  takeToken();
  $('#login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('#token').value.trim();
    sessionStorage.setItem('phalanx-token', token);
    start();
  });
  if (token) start(); else showLogin('');
});
