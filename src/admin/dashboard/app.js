// Levee's dashboard: reads the admin API (GET /status, GET /stats,
// GET /availability, the SSE stream GET /events/stream) and sets the service level (PUT /degradation).
// No framework, no build step: this file is embedded in the binary as is.
"use strict";

const POLL_MS = 2000;
const EVENTS_KEPT = 200;
// Event kinds the stream names (SSE `event:` field); /events polling catches
// any kind not listed here.
const KINDS = ["health", "ejection", "ejection_end", "breaker", "shed", "retry_budget",
  "rate_limit", "service_level", "reload", "slo_alert"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function badge(text, kind) {
  return el("span", { class: "badge " + kind + "-" + text, "data-state": text }, text);
}

function fmtMs(ms) {
  if (!ms) return "–";
  return ms < 10 ? ms.toFixed(2) + " ms" : ms < 1000 ? ms.toFixed(0) + " ms" : (ms / 1000).toFixed(2) + " s";
}

function fmtPct(x) {
  return (x * 100).toFixed(x > 0 && x < 0.01 ? 2 : 1) + " %";
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!r.ok) throw new Error(method + " " + path + ": " + r.status);
  return r.json();
}

// A sparkline of `values` as an inline SVG.
function sparkline(values, color) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1e-9, ...values);
  const n = Math.max(1, values.length - 1);
  const pts = values.map((v, i) => (i * 120 / n).toFixed(1) + "," + (23 - v / max * 22).toFixed(1));
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts.join(" "));
  line.setAttribute("stroke", color);
  svg.append(line);
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = "max " + (Math.round(max * 100) / 100);
  svg.append(title);
  return svg;
}

function gauge(slo) {
  if (!slo) return el("span", { class: "muted" }, "no SLO");
  const left = slo.budget_remaining;
  const color = left > 0.5 ? "var(--ok)" : left > 0 ? "var(--warn)" : "var(--bad)";
  const bar = el("span", { class: "gauge", title: "error budget left of " + slo.target_percent + " %" },
    el("span", { style: "width:" + Math.max(0, Math.min(1, left)) * 100 + "%;background:" + color }));
  const out = el("span", { "data-budget": left.toFixed(4) }, bar, fmtPct(left));
  for (const a of slo.alerts_firing) out.append(" ", badge(a, "state"));
  for (const t of (slo.latency && slo.latency.targets) || []) {
    out.append(" ", el("span", { class: "badge state-" + (t.met ? "closed" : "open"),
      title: t.percentile + " over 5m: " + fmtMs(t.value_ms) }, t.percentile + "<" + fmtMs(t.under_ms)));
  }
  return out;
}

// A route's availability composed from the live topology (GET
// /availability): over the recent window when it saw tries, else since start.
function availability(avail, name) {
  const r = avail && avail.routes.find(x => x.name === name);
  const a = r && (r.availability.window ?? r.availability.since_start);
  if (a === null || a === undefined) return el("td", { class: "num muted", "data-availability": "" }, "–");
  const nines = r.nines.window ?? r.nines.since_start;
  const observed = r.observed.availability;
  const title = "composed from the endpoints through their clusters (window " +
    (r.availability.window ?? "–") + ", since start " + (r.availability.since_start ?? "–") +
    "); answered without 5xx since start: " + (observed === null ? "–" : fmtPct(observed));
  return el("td", { class: "num", "data-availability": a.toFixed(6), title },
    (a * 100).toFixed(3) + " %" + (nines === null || nines === undefined ? "" : " · " + nines.toFixed(1) + " nines"));
}

function renderRoutes(status, stats, avail) {
  const body = document.querySelector("#routes tbody");
  const rows = [];
  for (const route of status.routes) {
    const s = stats.routes[route.name];
    const cluster = route.cluster || route.split.map(t => t.cluster + "×" + t.weight).join(" ") || "–";
    const tr = el("tr", { "data-route": route.name }, el("td", {}, route.name), el("td", {}, cluster));
    if (s) {
      const lat = s.latency["1m"];
      tr.append(
        el("td", { class: "num" }, s.requests_per_second.toFixed(1)),
        el("td", { class: "num" }, fmtPct(s.error_ratio)),
        el("td", { class: "num" }, fmtMs(lat.p50_ms)),
        el("td", { class: "num" }, fmtMs(lat.p99_ms)),
        el("td", { class: "num" }, fmtMs(lat.p99_9_ms)),
        el("td", {}, sparkline(s.series.requests, "var(--info)")),
        el("td", {}, sparkline(s.series.errors, "var(--bad)")),
        el("td", {}, sparkline(s.latency_series.map(p => p.p99_ms), "var(--warn)")),
        el("td", {}, gauge(s.slo)));
    } else {
      for (let i = 0; i < 9; i++) tr.append(el("td", { class: "muted" }, "–"));
    }
    tr.append(availability(avail, route.name));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function breakerBadge(b) {
  if (!b) return el("span", { class: "muted" }, "–");
  const out = badge(b.state, "state");
  if (b.last_transition) out.title = b.last_transition.reason;
  return out;
}

function renderClusters(status) {
  const box = document.getElementById("clusters");
  const cards = status.clusters.map(c => {
    const extra = [];
    if (c.bulkhead) extra.push("bulkhead " + c.bulkhead.in_flight + "/" + c.bulkhead.max_concurrent + ", queued " + c.bulkhead.queued);
    if (c.adaptive_concurrency) extra.push("adaptive limit " + c.adaptive_concurrency.limit);
    if (c.retry_budget) extra.push("retries refused " + c.retry_budget.refused);
    const rows = c.endpoints.map(e => {
      const state = el("td", {}, badge(e.state, "state"));
      // Ejected by outlier detection: apart from the health state.
      if (e.ejected) state.append(" ", badge("ejected", "state"));
      return el("tr", { "data-endpoint": c.name + "/" + e.address, "data-state": e.state,
          "data-usable": String(e.usable), "data-ejected": String(e.ejected) },
        el("td", {}, e.address + (e.backup ? " (backup)" : "")),
        state,
        el("td", {}, e.usable ? "yes" : "no"),
        el("td", {}, breakerBadge(e.breaker)),
        el("td", { class: "num" }, e.in_flight),
        el("td", { class: "num" }, e.weight));
    });
    return el("div", { class: "cluster", "data-cluster": c.name },
      el("h3", {}, c.name, " ", el("span", { class: "muted" }, c.balance), " ",
        el("span", { class: "muted" }, "breaker "), breakerBadge(c.breaker),
        " ", el("span", { class: "muted" }, extra.join(" · "))),
      el("table", {},
        el("thead", {}, el("tr", {}, ...["endpoint", "state", "usable", "breaker", "in flight", "weight"].map(h => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  });
  box.replaceChildren(...cards);
}

function renderLevel(d) {
  const level = document.getElementById("level");
  level.textContent = d.level + (d.manual ? " (set by hand)" : "");
  level.className = "badge level-" + d.level;
  level.dataset.level = d.level;
  const select = document.getElementById("level-set");
  if (document.activeElement !== select) select.value = d.manual || "auto";
}

function renderMeta(status) {
  const up = status.uptime_seconds;
  const h = Math.floor(up / 3600), m = Math.floor(up % 3600 / 60);
  document.getElementById("meta").textContent =
    "v" + status.version + " · pid " + status.pid + " · up " + h + "h" + m + "m · " + status.workers + " workers";
}

let lastSeq = 0;
const seen = new Set();

function addEvent(e) {
  if (seen.has(e.seq)) return;
  seen.add(e.seq);
  lastSeq = Math.max(lastSeq, e.seq);
  const list = document.getElementById("events");
  const item = el("li", { "data-seq": e.seq, "data-kind": e.kind },
    el("span", { class: "muted" }, e.time.slice(11, 23) + " "),
    el("span", { class: "kind" }, e.kind), " ",
    el("strong", {}, e.subject), " ", e.what, " ", el("span", { class: "muted" }, "— " + e.why));
  // Newest first; the stream and the poll may deliver out of order.
  const after = [...list.children].find(li => Number(li.dataset.seq) < e.seq);
  list.insertBefore(item, after || null);
  while (list.children.length > EVENTS_KEPT) {
    seen.delete(Number(list.lastElementChild.dataset.seq));
    list.lastElementChild.remove();
  }
}

function setConn(text) {
  const c = document.getElementById("conn");
  c.textContent = text;
  c.className = "badge conn-" + text;
}

function follow() {
  const source = new EventSource("/events/stream");
  const onEvent = m => addEvent(JSON.parse(m.data));
  for (const k of KINDS) source.addEventListener(k, onEvent);
  source.onmessage = onEvent;
  source.onopen = () => setConn("live");
  // EventSource reconnects by itself, resuming after the last id it saw.
  source.onerror = () => setConn("lost");
}

async function pollEvents() {
  try {
    const r = await api("GET", "/events?since=" + lastSeq + "&limit=" + EVENTS_KEPT);
    for (const e of r.events) addEvent(e);
  } catch (e) {
    console.warn(e.message);
  }
}

async function poll() {
  try {
    // The availability column is a bonus: the rest renders without it.
    const [status, stats, avail] = await Promise.all([api("GET", "/status"), api("GET", "/stats?points=60"),
      api("GET", "/availability").catch(e => { console.warn(e.message); return null; })]);
    renderMeta(status);
    renderLevel(status.degradation);
    renderRoutes(status, stats, avail);
    renderClusters(status);
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    setConn("lost");
    console.warn(e.message);
  }
}

document.getElementById("level-set").addEventListener("change", async ev => {
  try {
    renderLevel(await api("PUT", "/degradation", { level: ev.target.value === "auto" ? null : ev.target.value }));
  } catch (e) {
    console.warn(e.message);
  }
});

poll();
follow();
setInterval(poll, POLL_MS);
setInterval(pollEvents, 10 * POLL_MS);
