// relay console: plain JS, no framework, no network beyond this relay.  Every value from the
// relay is put in the page with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: { "content-type": "application/json", "x-relay-console": "1" },
  };
  const r = await fetch("/console/api/" + path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = { error: "answer is not JSON (" + r.status + ")" }; }
  return { status: r.status, data };
}

let INFO = null;

function show(v) {
  if (typeof v === "string") return v;
  return JSON.stringify(v, null, 2);
}

function kv(rows) {
  const t = el("table", { class: "kv" });
  for (const [k, v] of rows) {
    if (v === null || v === undefined) continue;
    t.appendChild(el("tr", {}, el("th", {}, k), el("td", {}, el("code", {}, typeof v === "string" ? v : JSON.stringify(v)))));
  }
  return t;
}

function renderRecord(rec, i, n) {
  const box = el("div", { class: "record", "data-index": String(i) });
  if (n > 1) box.appendChild(el("h3", {}, "Message " + (i + 1) + " of " + n));
  // 1. frame: the bytes as received
  const len = new TextEncoder().encode(rec.input).length;
  box.appendChild(el("h3", {}, "Frame ", el("span", { class: "dim" }, "(" + len + " bytes)")));
  box.appendChild(el("pre", { class: "frame" }, rec.input));
  // 2. syslog fields, or the parse error with a caret at the bad byte
  if (!rec.ok) {
    const err = rec.error || {};
    box.appendChild(el("h3", {}, "Parse"));
    box.appendChild(el("p", { class: "bad parse-error", "data-offset": String(err.offset) },
      "PARSE ERROR at byte " + err.offset + ": " + err.reason));
    if (rec.caret) {
      box.appendChild(el("pre", { class: "caret-block" }, el("span", { class: "caret-input" }, rec.caret.line), "\n",
        el("span", { class: "caret" }, rec.caret.caret)));
    }
  } else if (rec.syslog) {
    const s = rec.syslog;
    box.appendChild(el("h3", {}, "Syslog ", el("span", { class: "ok" }, s.format)));
    box.appendChild(kv([["facility", s.facility], ["severity", s.severity], ["pri", s.pri], ["version", s.version],
      ["timestamp", s.timestamp], ["hostname", s.hostname], ["app_name", s.app_name], ["procid", s.procid],
      ["msgid", s.msgid], ["structured data", s.structured_data], ["msg", s.msg]]));
  } else {
    box.appendChild(el("h3", {}, "Body ", el("span", { class: "ok" }, "JSON")));
    if (rec.body !== undefined) box.appendChild(el("pre", { class: "body" }, show(rec.body)));
  }
  for (const note of rec.notes || []) box.appendChild(el("p", { class: "warn" }, "note: " + note));
  // 3. canonical event (and enrichment)
  if (rec.event) {
    box.appendChild(el("h3", {}, "Canonical event"));
    box.appendChild(el("pre", { class: "event" }, show(rec.event)));
  }
  if (rec.enrich) {
    box.appendChild(el("h3", {}, "Enrichment"));
    box.appendChild(el("pre", { class: "enrich" }, show(rec.enrich)));
  }
  // 4. routes, each with why
  const routes = rec.routes || [];
  box.appendChild(el("h3", {}, "Routes ", el("span", { class: "dim" }, routes.length ? "matched: " + routes.join(", ") : "none matched")));
  const checks = rec.route_checks || {};
  for (const [name, chk] of Object.entries(checks)) {
    const hit = routes.includes(name);
    const div = el("div", { class: "route " + (hit ? "route-yes" : "route-no"), "data-route": name });
    div.appendChild(el("div", {}, el("span", { class: hit ? "ok" : "dim" }, hit ? "\u2713 " : "\u2717 "), el("strong", {}, name),
      hit ? "" : (chk.rule ? " (rule true; an earlier final route stopped it)" : "")));
    div.appendChild(el("pre", { class: "why" }, (chk.lines || []).join("\n")));
    box.appendChild(div);
  }
  for (const name of routes) {
    if (!(name in checks)) box.appendChild(el("div", { class: "route route-yes", "data-route": name },
      el("span", { class: "ok" }, "\u2713 "), el("strong", {}, name), el("span", { class: "dim" }, " (triage escalation)")));
  }
  // 5. each sink's exact bytes or request
  const sinks = rec.sinks || {};
  box.appendChild(el("h3", {}, "Sinks"));
  if (!Object.keys(sinks).length) box.appendChild(el("p", { class: "dim" }, "no sink gets this event"));
  for (const [name, out] of Object.entries(sinks)) {
    const type = ((INFO && INFO.sinks.find((s) => s.name === name)) || {}).type || "";
    const div = el("div", { class: "sink", "data-sink": name });
    div.appendChild(el("div", {}, el("strong", {}, name), el("span", { class: "dim" }, " " + type)));
    if (out && typeof out === "object" && "error" in out && Object.keys(out).length === 1) {
      div.appendChild(el("p", { class: "bad" }, "dead letter: " + out.error));
    } else {
      div.appendChild(el("pre", { class: "sink-output", "data-sink": name }, show(out)));
    }
    box.appendChild(div);
  }
  return box;
}

async function run() {
  const input = $("input").value;
  if (!input.trim()) { $("status").textContent = "paste something first"; return; }
  $("status").textContent = "running...";
  const { status, data } = await api("analyse", { input, source: $("source").value || null, lenient: $("lenient").checked });
  const out = $("output");
  out.replaceChildren();
  if (status !== 200) {
    $("status").textContent = "";
    out.appendChild(el("p", { class: "bad" }, "error " + status + ": " + (data.error || "")));
    return;
  }
  const recs = data.records || [];
  recs.forEach((r, i) => out.appendChild(renderRecord(r, i, recs.length)));
  const bad = recs.filter((r) => !r.ok).length;
  $("status").textContent = recs.length + " message(s), " + bad + " failed, " + data.ms + " ms" +
    (data.source ? ", as source " + data.source : "") + (data.lenient ? ", lenient" : "");
  out.setAttribute("data-done", String(Date.now()));
}

async function save() {
  const name = $("case-name").value.trim();
  const st = $("save-status");
  if (!name) { st.textContent = "name the case first"; return; }
  st.textContent = "saving...";
  const { status, data } = await api("case", { name, input: $("input").value, source: $("source").value || null,
    lenient: $("lenient").checked, overwrite: $("case-overwrite").checked });
  st.className = status === 200 && data.status === "pass" ? "ok" : "bad";
  st.textContent = status === 200 ? "saved " + data.path + " (--cases: " + data.status + ")" : "error " + status + ": " + data.error;
  st.setAttribute("data-status", String(status));
}

// ------------------------------------------------------------------ live tap
let tapAbort = null;

function tapNames() {
  const point = $("tap-point").value;
  const names = !INFO ? [] : point === "source" ? INFO.sources.map((s) => s.name) : point === "route" ? INFO.routes : INFO.sinks.map((s) => s.name);
  $("tap-name").replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (point === "sink") $("tap-view").value = "rendered";
}

function tapLine(rec) {
  const t = new Date(rec.time * 1000).toISOString().slice(11, 23);
  const head = t + " " + (rec.source || "-") + (rec.routes && rec.routes.length ? " [" + rec.routes.join(",") + "]" : "");
  if ("raw" in rec) return head + " " + rec.raw;
  if ("syslog" in rec || "ok" in rec) return head + " " + (rec.ok ? JSON.stringify(rec.syslog) : "PARSE ERROR at byte " + rec.error.offset + ": " + rec.error.reason);
  if ("event" in rec) return head + " " + JSON.stringify(rec.event);
  return head + Object.entries(rec.sinks || {}).map(([s, p]) => "\n  -> " + s + ": " + (typeof p === "string" ? p : JSON.stringify(p))).join("");
}

async function tapStart() {
  tapStop();
  const q = new URLSearchParams();
  q.set($("tap-point").value, $("tap-name").value);
  q.set("view", $("tap-view").value);
  q.set("rate", $("tap-rate").value || "5");
  if ($("tap-filter").value.trim()) q.set("filter", $("tap-filter").value.trim());
  const ctl = new AbortController();
  tapAbort = ctl;
  $("tap-start").disabled = true;
  $("tap-stop").disabled = false;
  const out = $("tap-out");
  const st = $("tap-status");
  try {
    const r = await fetch("/console/api/tap?" + q.toString(), { signal: ctl.signal });
    if (r.status !== 200) {
      let msg = "";
      try { msg = (await r.json()).error; } catch (e) { msg = String(r.status); }
      st.textContent = "refused (" + r.status + "): " + msg;
      return;
    }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const rec = JSON.parse(line);
        if (rec.type === "event") {
          out.appendChild(document.createTextNode(tapLine(rec) + "\n"));
          while (out.childNodes.length > 500) out.removeChild(out.firstChild);
          out.scrollTop = out.scrollHeight;
        } else if (rec.type === "status") {
          st.textContent = rec.sent + " shown, " + rec.skipped_total + " skipped (rate " + rec.skipped.rate + ", slow reader " + rec.skipped.full + ")";
        } else if (rec.type === "hello") {
          st.textContent = "tapping " + rec.point + " " + rec.name + (rec.note ? " (" + rec.note + ")" : "");
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") st.textContent = "tap ended: " + e;
  } finally {
    if (tapAbort === ctl) tapAbort = null;
    $("tap-start").disabled = false;
    $("tap-stop").disabled = true;
  }
}

function tapStop() {
  if (tapAbort) tapAbort.abort();
  tapAbort = null;
}

// ------------------------------------------------------------------ queues
function age(s) {
  if (s === null || s === undefined) return "-";
  if (s < 120) return Math.round(s) + "s";
  if (s < 7200) return Math.round(s / 60) + "m";
  return Math.round(s / 3600) + "h";
}

async function queues() {
  const { status, data } = await api("queues");
  if (status !== 200) return;
  const body = $("queues").tBodies[0];
  body.replaceChildren(...data.map((q) => {
    const state = q.blocked ? el("span", { class: "bad" }, "AUTH") : !q.up && q.errors ? el("span", { class: "bad" }, "DOWN")
      : !q.up ? el("span", { class: "dim" }, "idle") : el("span", { class: "ok" }, "ok");
    return el("tr", { "data-sink": q.sink }, el("td", {}, q.sink), el("td", { class: "num depth" }, String(q.depth)),
      el("td", { class: "num" + (q.oldest_age_seconds >= 600 ? " bad" : q.oldest_age_seconds >= 60 ? " warn" : "") }, age(q.oldest_age_seconds)),
      el("td", { class: "num dead" + (q.dead_letters ? " warn" : "") }, String(q.dead_letters)),
      el("td", { class: "num" }, String(q.sent)), el("td", { class: "num" }, String(q.retried)), el("td", {}, state));
  }));
}

// ------------------------------------------------------------------ start
async function init() {
  const { status, data } = await api("info");
  if (status !== 200) { $("summary").textContent = "cannot read /console/api/info: " + status; return; }
  INFO = data;
  $("summary").textContent = data.sources.length + " sources, " + data.routes.length + " routes, " + data.sinks.length + " sinks" +
    (data.workers > 1 ? ", " + data.workers + " workers" : "");
  for (const s of data.sources) $("source").appendChild(el("option", { value: s.name }, s.name + " (" + s.type + (s.bodies ? ", JSON bodies" : "") + ")"));
  if (!data.cases_dir) { $("save").disabled = true; $("save-status").textContent = "saving is off: set [relay] console_cases_dir"; }
  else $("save-status").textContent = "into " + data.cases_dir;
  try {
    const r = await fetch("/console/static/samples.json");
    const samples = await r.json();
    samples.forEach((s, i) => $("sample").appendChild(el("option", { value: String(i) }, s.name)));
    $("sample").addEventListener("change", () => { const s = samples[$("sample").value]; if (s) $("input").value = s.input; });
  } catch (e) { /* samples are optional */ }
  tapNames();
  $("tap-point").addEventListener("change", tapNames);
  $("run").addEventListener("click", run);
  $("save").addEventListener("click", save);
  $("tap-start").addEventListener("click", tapStart);
  $("tap-stop").addEventListener("click", tapStop);
  $("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  queues();
  setInterval(queues, 2000);
  document.body.setAttribute("data-ready", "1");
}

document.addEventListener("DOMContentLoaded", init);
