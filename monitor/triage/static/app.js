// Framewatch triage page: plain JS, no dependencies. Every value from the API is inserted as text
// (textContent), never as HTML: prompts are attacker-controlled.
"use strict";

const REFRESH_MS = 5000;
const TOKEN_KEY = "framewatch.adminToken";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const ci = (c) => (c ? `${pct(c[0])} – ${pct(c[1])}` : "–");

async function getJSON(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

function windowName() {
  return document.getElementById("window").value;
}

function renderClusters(data) {
  const w = windowName();
  const base = data.untriggered[w];
  document.getElementById("untriggered").textContent =
    `Untriggered traffic (${w}): ${base.failures} failures / ${base.events} events = ${pct(base.failure_rate)} ` +
    `(95% CI ${ci(base.ci)})`;
  const body = document.querySelector("#clusters tbody");
  body.replaceChildren();
  for (const c of data.clusters) {
    const t = c.windows[w].triggered;
    const gap = c.windows[w].gap;
    const alarm = gap && gap.ci[0] > 0;
    body.append(el("tr", { class: alarm ? "alarm" : "", "data-cluster": c.id },
      el("td", { title: c.description }, c.id),
      el("td", { class: "num events" }, t.events),
      el("td", { class: "num" }, t.failures),
      el("td", { class: "num" + (alarm ? " bad" : "") }, pct(t.failure_rate)),
      el("td", { class: "num" }, ci(t.ci)),
      el("td", { class: "num" }, gap ? `${gap.gap >= 0 ? "+" : ""}${pct(gap.gap)} (${ci(gap.ci)})` : "–"),
      el("td", { class: "num" }, gap ? gap.p_value.toExponential(1) : "–")));
  }
}

function renderCandidates(data) {
  const box = document.getElementById("candidates");
  box.replaceChildren();
  document.getElementById("candidates-empty").hidden = data.candidates.length > 0;
  for (const c of data.candidates) {
    const msg = el("span", { class: "msg muted" });
    const button = el("button", { type: "button", "data-candidate": c.id }, "Promote to cluster");
    button.addEventListener("click", () => promote(c.id, button, msg));
    const examples = el("ul", {}, ...c.examples.map((e) =>
      el("li", {}, el("code", {}, e.segment || ""), ` — score ${e.misalignment_score}, trace `,
        el("code", {}, e.trace_id || e.event_id), ` @ ${e.kafka.topic}:${e.kafka.partition}:${e.kafka.offset}`)));
    box.append(el("div", { class: "candidate", "data-candidate": c.id },
      el("div", {}, el("span", { class: "rep" }, `“${c.representative}”`), el("span", { class: "muted" }, `  ${c.id}`)),
      el("div", {}, `failure rate `, el("span", { class: "bad" }, pct(c.failure_rate)),
        ` (95% CI ${ci(c.ci)}) over ${c.events} events vs. ${pct(c.baseline.failure_rate)} `,
        `(95% CI ${ci(c.baseline.ci)}) elsewhere; ${c.failures_seen} failing events seen`),
      examples,
      el("div", {}, button, msg)));
  }
}

function renderIncidents(data) {
  const body = document.querySelector("#incidents tbody");
  body.replaceChildren();
  for (const i of data.incidents) {
    body.append(el("tr", {},
      el("td", { class: "num" }, new Date(i.flagged_at).toLocaleTimeString()),
      el("td", {}, i.cluster || (i.candidate ? `candidate ${i.candidate}` : "none")),
      el("td", {}, i.framing),
      el("td", { class: "num" + (i.misaligned ? " bad" : "") }, i.misalignment_score.toFixed(2)),
      el("td", { class: "text" }, i.segment || ""),
      el("td", { class: "text" }, i.prompt || ""),
      el("td", { class: "text" }, i.trace_id || i.event_id),
      el("td", { class: "num" }, `${i.kafka.topic}:${i.kafka.partition}:${i.kafka.offset}`)));
  }
}

async function promote(id, button, msg) {
  let token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    token = window.prompt("Admin token (FRAMEWATCH_ADMIN_TOKEN) to change the trigger registry:");
    if (!token) return;
  }
  button.disabled = true;
  msg.textContent = "promoting…";
  try {
    const resp = await fetch(`/v1/candidates/${encodeURIComponent(id)}/promote`, {
      method: "POST", headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" }, body: "{}",
    });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401 || resp.status === 403) sessionStorage.removeItem(TOKEN_KEY);
    if (!resp.ok) throw new Error(body.detail || `HTTP ${resp.status}`);
    sessionStorage.setItem(TOKEN_KEY, token);
    const flash = document.getElementById("flash");
    flash.textContent = `Candidate ${id} promoted: added cluster ${body.cluster}` +
      (body.reloaded ? " (live; every replica applies it)" : " (published; reload pending)");
    flash.className = "ok";
    await refresh();
  } catch (err) {
    msg.textContent = `failed: ${err.message}`;
    msg.className = "msg bad";
    button.disabled = false;
  }
}

let last = {};

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [clusters, candidates, incidents] = await Promise.all([
      getJSON("/v1/clusters"), getJSON("/v1/candidates"), getJSON("/v1/incidents?limit=25")]);
    last = { clusters, candidates, incidents };
    renderClusters(clusters);
    renderCandidates(candidates);
    renderIncidents(incidents);
    const scope = candidates.shared
      ? `all replicas (${candidates.evidence.events_merged} events merged from the evidence topic)`
      : "single replica (shared view off)";
    status.textContent = `updated ${new Date().toLocaleTimeString()} · ${scope} · registry ${clusters.registry.digest} · ` +
      `redaction ${incidents.redaction}`;
  } catch (err) {
    status.textContent = `error: ${err.message}`;
  }
}

document.getElementById("window").addEventListener("change", () => last.clusters && renderClusters(last.clusters));
refresh();
setInterval(refresh, REFRESH_MS);
