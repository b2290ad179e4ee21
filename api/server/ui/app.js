// The Parallax dashboard: plain DOM code, no framework, no build step.
//
// Auth: the token lives in this tab's sessionStorage and goes out as an Authorization header on every
// request, streams included (they are read with fetch, not EventSource, which cannot send headers). So it
// never appears in a URL, a server log or a cookie, and no other site can make this browser use it (a
// cookie would go with a cross-site form post, and POST /apply takes text/plain).
"use strict";

const TOKEN_KEY = "parallax.token";
const PHASES = ["Pending", "Creating", "Running", "Paused", "Restarting", "CrashLoopBackOff", "Suspended", "Succeeded", "Failed", "Terminating"];
const MAX_LOG_LINES = 5000;

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, { dataset, ...props } = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
};

// ---- API ------------------------------------------------------------------------------------------

class Unauthorized extends Error {}

function headers(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, { method = "GET", body, type = "application/json", signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": type }), signal };
  if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
  const resp = await fetch(path, init);
  if (resp.status === 401) throw new Unauthorized();
  const text = await resp.text();
  let data = text;
  try { data = JSON.parse(text); } catch { /* text */ }
  return { status: resp.status, ok: resp.ok, data };
}

// Reads a streamed response line by line until it ends or `signal` aborts.
async function readLines(resp, onLine) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    rest += decoder.decode(value, { stream: true });
    const lines = rest.split("\n");
    rest = lines.pop();
    for (const line of lines) onLine(line);
  }
  if (rest) onLine(rest);
}

// A Server-Sent Events stream read with fetch, so that it carries the Authorization header.
async function openStream(path, signal, onMessage) {
  const resp = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (resp.status === 401) throw new Unauthorized();
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  let event = { data: "" };
  await readLines(resp, (line) => {
    if (line === "") {
      if (event.data) onMessage(event.type, JSON.parse(event.data), event.id);
      event = { data: "" };
    } else if (line.startsWith("data:")) event.data += line.slice(5).trim();
    else if (line.startsWith("event:")) event.type = line.slice(6).trim();
    else if (line.startsWith("id:")) event.id = line.slice(3).trim();
  });
}

// Runs `connect(signal)` again after it ends or fails (1 s later), until the scope is closed.
function keepOpen(scope, connect) {
  const loop = async () => {
    while (!scope.signal.aborted) {
      try {
        await connect(scope.signal);
      } catch (err) {
        if (err instanceof Unauthorized) return showLogin("The token was refused.");
        if (scope.signal.aborted) return;
        console.warn("stream broke:", err);
        setConn(false);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  loop();
}

// ---- shared state: the agents (watch stream) and their usage (usage stream) ---------------------

const state = { agents: new Map(), usage: new Map(), selector: "", listeners: new Set(), session: null };
const changed = () => state.listeners.forEach((f) => f());

function watchAgents(scope) {
  let since = null;
  keepOpen(scope, async (signal) => {
    const q = new URLSearchParams({ watch: "true" });
    if (state.selector) q.set("labelSelector", state.selector);
    if (since) q.set("resourceVersion", since);
    else state.agents.clear();
    await openStream(`/agents?${q}`, signal, (type, item, id) => {
      setConn(true);
      if (id) since = id;
      if (type === "ERROR") { since = null; return; } // 410: too old; list again on reconnect
      const agent = item.object;
      if (type === "ADDED" || type === "MODIFIED") state.agents.set(agent.metadata.name, agent);
      else if (type === "DELETED") state.agents.delete(agent.metadata.name);
      else if (type !== "BOOKMARK") return;
      changed();
    });
  });
  return () => { since = null; };
}

function watchUsage(scope) {
  keepOpen(scope, (signal) => openStream("/metrics/agents?watch=true", signal, (type, list) => {
    state.usage = new Map(list.items.map((u) => [u.agent, u]));
    state.usageInterval = list.intervalSeconds;
    changed();
  }));
}

function setConn(up) {
  const c = $("#conn");
  c.textContent = up ? "live" : "reconnecting…";
  c.className = up ? "conn up" : "conn";
}

// ---- formatting ---------------------------------------------------------------------------------

function age(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}
const bytes = (n) => n == null ? "" : n < 1048576 ? `${(n / 1024).toFixed(0)} KiB` : n < 1073741824 ? `${(n / 1048576).toFixed(1)} MiB` : `${(n / 1073741824).toFixed(2)} GiB`;
const cpu = (p) => p == null ? "" : `${p.toFixed(1)}%`;
const phaseOf = (a) => a.metadata.deletionTimestamp ? "Terminating" : (a.status?.phase || "Pending");
const phaseBadge = (phase) => el("span", { className: `phase p-${phase}` }, phase);

// ---- views --------------------------------------------------------------------------------------

function listView(view, scope) {
  view.append($("#t-list").content.cloneNode(true));
  const tbody = $("#agents tbody"), label = $("#f-label"), type = $("#f-type"), phase = $("#f-phase");
  for (const p of PHASES) phase.append(el("option", { value: p }, p));
  label.value = state.selector;
  label.addEventListener("change", () => {
    state.selector = label.value.trim();
    state.session.restartWatch();
  });
  type.addEventListener("change", render);
  phase.addEventListener("change", render);

  function render() {
    const agents = [...state.agents.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    const types = new Set(agents.map((a) => a.spec.type));
    for (const t of [...types].sort()) {
      if (![...type.options].some((o) => o.value === t)) type.append(el("option", { value: t }, t));
    }
    const counts = {};
    for (const a of agents) counts[phaseOf(a)] = (counts[phaseOf(a)] || 0) + 1;
    $("#counts").replaceChildren(...Object.entries(counts).map(([p, n]) => el("span", { className: `count p-${p}`, dataset: { phase: p } }, `${p} ${n}`)));
    const shown = agents.filter((a) => (!type.value || a.spec.type === type.value) && (!phase.value || phaseOf(a) === phase.value));
    tbody.replaceChildren(...shown.map((a) => {
      const name = a.metadata.name, s = a.status || {}, u = state.usage.get(name);
      return el("tr", { dataset: { agent: name } },
        el("td", {}, el("a", { href: `#/agent/${encodeURIComponent(name)}` }, name)),
        el("td", {}, phaseBadge(phaseOf(a))),
        el("td", {}, a.spec.type),
        el("td", { className: "restarts num" }, String(s.restartCount ?? 0)),
        el("td", { className: "num" }, age(a.metadata.creationTimestamp)),
        el("td", {}, s.node || "local"),
        el("td", { className: "num cpu" }, cpu(u?.cpuPercent)),
        el("td", { className: "num mem" }, bytes(u?.memoryBytes)),
        el("td", { className: "error" }, s.error?.code || ""));
    }));
    $("#empty").hidden = agents.length > 0;
  }
  state.listeners.add(render);
  scope.signal.addEventListener("abort", () => state.listeners.delete(render));
  const ticker = setInterval(render, 10000); // ages only; the data comes from the streams
  scope.signal.addEventListener("abort", () => clearInterval(ticker));
  render();
}

function agentView(view, scope, name) {
  view.append($("#t-agent").content.cloneNode(true));
  $("#a-name").textContent = name;
  let agent = null;
  const result = (text, ok = true) => { const r = $("#act-result"); r.textContent = text; r.className = ok ? "ok" : "error"; };
  const act = async (label, path, opts) => {
    const r = await api(path, opts);
    result(r.ok ? `${label}: done` : `${label}: ${r.data?.error?.message || r.status}`, r.ok);
    return r;
  };

  function renderAgent() {
    if (!agent) return;
    const s = agent.status || {};
    $("#a-phase").replaceChildren(phaseBadge(phaseOf(agent)));
    $("#act-suspend").textContent = agent.spec.suspend ? "Resume" : "Suspend";
    $("#act-pause").textContent = agent.spec.paused ? "Unpause" : "Pause";
    const rows = [["Phase", phaseOf(agent)], ["Type", agent.spec.type], ["Image", agent.spec.image || ""],
      ["Restarts", s.restartCount ?? 0], ["Container", (s.containerId || "").slice(0, 12)],
      ["Started", s.startedAt || ""], ["Last activity", s.lastActivityTime || ""], ["Reason", s.reason || ""], ["Error", s.error ? `${s.error.code}: ${s.error.message}` : ""],
      ["Labels", Object.entries(agent.metadata.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")]];
    $("#a-status").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k.toLowerCase() } }, String(v))]));
    $("#a-conditions tbody").replaceChildren(...(s.conditions || []).map((c) => el("tr", {},
      el("td", {}, c.type), el("td", {}, c.status), el("td", {}, c.reason || ""), el("td", {}, c.message || ""), el("td", {}, age(c.lastTransitionTime)))));
    const { status, ...shown } = agent;
    $("#a-spec").textContent = JSON.stringify(shown, null, 2);
    logs.follow(s.containerId);
  }

  async function loadEvents() {
    const r = await api(`/agents/${encodeURIComponent(name)}/events`, { signal: scope.signal });
    if (!r.ok) return;
    $("#a-events tbody").replaceChildren(...r.data.items.slice().reverse().map((e) => el("tr", { className: e.type === "Warning" ? "warn" : "" },
      el("td", {}, e.type), el("td", {}, e.reason), el("td", {}, e.message), el("td", { className: "num" }, String(e.count)), el("td", {}, age(e.lastTimestamp)))));
  }

  // status and events: one stream for this agent; the record and its event list are read once it is open
  keepOpen(scope, (signal) => openStream(`/events?name=${encodeURIComponent(name)}`, signal, async (type, item) => {
    setConn(true);
    if (type === "BOOKMARK") {
      const r = await api(`/agents/${encodeURIComponent(name)}`, { signal });
      if (r.status === 404) { result("This agent does not exist (any more).", false); agent = null; return; }
      agent = r.data;
      renderAgent();
      loadEvents();
    } else if (type === "EVENT") loadEvents();
    else if (type === "DELETED") { result("Deleted.", true); $("#a-phase").replaceChildren(phaseBadge("Deleted")); }
    else if (item.object) { agent = item.object; renderAgent(); }
  }));

  const logs = logPane(scope, name);
  charts(scope, name);

  $("#act-restart").addEventListener("click", () => act("Restart", `/agents/${encodeURIComponent(name)}/restart`, { method: "POST" }));
  $("#act-suspend").addEventListener("click", () => agent && act(agent.spec.suspend ? "Resume" : "Suspend",
    `/agents/${encodeURIComponent(name)}`, { method: "PATCH", body: { suspend: !agent.spec.suspend }, type: "application/merge-patch+json" }));
  $("#act-pause").addEventListener("click", () => agent && act(agent.spec.paused ? "Unpause" : "Pause",
    `/agents/${encodeURIComponent(name)}`, { method: "PATCH", body: { paused: !agent.spec.paused }, type: "application/merge-patch+json" }));
  $("#act-delete").addEventListener("click", () => { $("#confirm-name").textContent = name; $("#confirm-delete").showModal(); });
  $("#confirm-delete").addEventListener("close", () => {
    if ($("#confirm-delete").returnValue === "delete") act("Delete", `/agents/${encodeURIComponent(name)}`, { method: "DELETE" });
  });
  $("#send-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("#send-text").value;
    if (!text) return;
    const r = await act("Send", `/agents/${encodeURIComponent(name)}/send`, { method: "POST", body: { message: text } });
    if (r.ok) $("#send-text").value = "";
  });
}

// Followed logs: a new stream when the agent gets a new container; pause keeps lines aside, search filters.
function logPane(scope, name) {
  const pre = $("#logs"), search = $("#log-search"), pauseBtn = $("#log-pause"), stateEl = $("#log-state");
  let lines = [], held = [], paused = false, container = null, stream = null;
  const matches = (l) => !search.value || l.toLowerCase().includes(search.value.toLowerCase());
  const render = () => {
    pre.textContent = lines.filter(matches).join("\n");
    pre.scrollTop = pre.scrollHeight;
    stateEl.textContent = paused ? `paused, ${held.length} new line(s) held` : (container ? "following" : "no container");
  };
  const add = (line) => {
    (paused ? held : lines).push(line);
    if (lines.length > MAX_LOG_LINES) {
      lines = lines.slice(-MAX_LOG_LINES / 2);
      if (!paused) render();
    } else if (!paused && matches(line)) {
      pre.append((pre.textContent ? "\n" : "") + line);
      pre.scrollTop = pre.scrollHeight;
    }
    if (paused) stateEl.textContent = `paused, ${held.length} new line(s) held`;
  };
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    if (!paused) { lines.push(...held); held = []; }
    render();
  });
  search.addEventListener("input", render);
  return {
    follow(containerId) {
      if (!containerId || containerId === container) return;
      if (container) add(`--- new container ${containerId.slice(0, 12)} ---`);
      container = containerId;
      stream?.abort();
      stream = new AbortController();
      scope.signal.addEventListener("abort", () => stream.abort());
      const mine = stream;
      let tail = String(MAX_LOG_LINES);
      render();
      keepOpen(mine, async (signal) => {
        const resp = await fetch(`/agents/${encodeURIComponent(name)}/logs?follow=true&tail=${tail}`, { headers: headers(), signal });
        if (resp.status === 401) throw new Unauthorized();
        if (!resp.ok) return;
        tail = "0"; // after a break, only what is new
        await readLines(resp, add);
      });
    },
  };
}

// CPU and memory over the last minutes: the history once, then each new sample from the usage stream.
function charts(scope, name) {
  const note = $("#chart-note");
  if (!window.uPlot) { note.textContent = "charts unavailable"; return; }
  const data = [[], [], []];
  const opts = (title, label, fmt, el) => ({
    title, width: Math.max(280, el.clientWidth || 420), height: 160,
    scales: { x: { time: true } },
    series: [{}, { label, stroke: "#2563eb", fill: "rgba(37,99,235,.12)", value: (u, v) => fmt(v) }],
    axes: [{}, { values: (u, vals) => vals.map(fmt), size: 70 }],
  });
  const cpuEl = $("#chart-cpu"), memEl = $("#chart-mem");
  const cpuChart = new uPlot(opts("CPU", "CPU", cpu, cpuEl), [data[0], data[1]], cpuEl);
  const memChart = new uPlot(opts("Memory", "Memory", bytes, memEl), [data[0], data[2]], memEl);
  let window_ = 600;
  const push = (p) => {
    if (data[0].length && p.time <= data[0][data[0].length - 1]) return;
    data[0].push(p.time); data[1].push(p.cpuPercent); data[2].push(p.memoryBytes);
    while (data[0].length && data[0][0] < p.time - window_) data.forEach((d) => d.shift());
    cpuChart.setData([data[0], data[1]]);
    memChart.setData([data[0], data[2]]);
    note.textContent = `${data[0].length} samples over the last ${Math.round(window_ / 60)} min`;
  };
  api(`/agents/${encodeURIComponent(name)}/metrics/history`, { signal: scope.signal }).then((r) => {
    if (!r.ok) return;
    window_ = r.data.windowSeconds;
    r.data.points.forEach(push);
    if (!r.data.points.length) note.textContent = `no samples yet (one every ${r.data.intervalSeconds} s while running)`;
  }).catch(() => {});
  const onUsage = () => { const u = state.usage.get(name); if (u) push(u); };
  state.listeners.add(onUsage);
  scope.signal.addEventListener("abort", () => state.listeners.delete(onUsage));
}

function applyView(view) {
  view.append($("#t-apply").content.cloneNode(true));
  const yaml = $("#yaml"), out = $("#plan-out"), applyBtn = $("#apply");
  yaml.addEventListener("input", () => { applyBtn.disabled = true; });
  $("#yaml-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (file) { yaml.value = await file.text(); applyBtn.disabled = true; }
  });
  const show = (r, dry) => {
    const body = r.data;
    const parts = [];
    if (body?.error) parts.push(el("p", { className: "error" }, body.error.message));
    else if (typeof body !== "object") parts.push(el("p", { className: "error" }, `HTTP ${r.status}: ${body}`));
    for (const res of body?.results || []) {
      const steps = [...(res.plan || []).map((s) => [s.action, s.target, s.cause]),
        ...(res.operations || []).map((o) => [o.operation, o.target, o.cause])];
      parts.push(el("div", { className: "plan-doc", dataset: { name: res.name || "" } },
        el("h3", {}, `${res.name || `document ${res.index}`}: `, el("span", { className: "outcome" }, res.outcome)),
        ...(res.errors || []).map((e) => el("p", { className: "error" }, `${e.field ? e.field + ": " : ""}${e.message}`)),
        steps.length ? el("table", { className: "plan" }, el("thead", {}, el("tr", {}, el("th", {}, "Step"), el("th", {}, "Target"), el("th", {}, "Cause"))),
          el("tbody", {}, ...steps.map(([a, t, c]) => el("tr", {}, el("td", {}, a), el("td", {}, t), el("td", {}, c))))) : ""));
    }
    parts.unshift(el("p", { className: dry ? "muted" : "ok" }, dry ? "Dry run: nothing was written." : "Applied."));
    out.replaceChildren(...parts);
  };
  $("#plan").addEventListener("click", async () => {
    const r = await api("/apply?dryRun=true", { method: "POST", body: yaml.value, type: "application/yaml" });
    show(r, true);
    applyBtn.disabled = !r.ok;
  });
  applyBtn.addEventListener("click", async () => {
    const r = await api("/apply", { method: "POST", body: yaml.value, type: "application/yaml" });
    show(r, false);
    applyBtn.disabled = true;
  });
}

// ---- routing and login --------------------------------------------------------------------------

function showLogin(message = "") {
  state.session?.close();
  state.session = null;
  state.agents.clear();
  state.usage.clear();
  $("#view").replaceChildren();
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#conn").textContent = "";
  $("#logout").hidden = true;
  $("#token").focus();
}

let page = null;
function route() {
  if (!state.session) return;
  page?.abort();
  page = new AbortController();
  const view = $("#view");
  view.replaceChildren();
  const [, where, arg] = location.hash.split("/");
  if (where === "agent" && arg) agentView(view, page, decodeURIComponent(arg));
  else if (where === "apply") applyView(view, page);
  else listView(view, page);
}

function start() {
  $("#login").hidden = true;
  $("#logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  let scope = new AbortController();
  const session = {
    close: () => { scope.abort(); page?.abort(); },
    restartWatch: () => { scope.abort(); scope = new AbortController(); state.agents.clear(); watchAgents(scope); watchUsage(scope); changed(); },
  };
  state.session = session;
  watchAgents(scope);
  watchUsage(scope);
  route();
}

async function boot() {
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value);
    $("#token").value = "";
    await check();
  });
  $("#logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showLogin(); });
  window.addEventListener("hashchange", route);
  await check();
}

// One cheap authenticated call decides between the login and the dashboard.
async function check() {
  try {
    await api("/metrics/agents");
    start();
  } catch (err) {
    if (!(err instanceof Unauthorized)) throw err;
    const had = sessionStorage.getItem(TOKEN_KEY);
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(had ? "The token was refused." : "");
  }
}

boot();
