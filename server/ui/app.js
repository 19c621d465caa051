/* memattn inspector — plain JavaScript against the daemon's REST API (docs/API.md), same origin.
 *
 * State lives in `st`; every view is re-rendered from API answers (no client-side cache beyond the
 * selected session, slot and version). Edits send If-Match with the version on screen; a 412 reloads
 * the slot. A 401 opens the token dialog; the token is kept in sessionStorage and sent as Bearer.
 * All daemon data is inserted as text (textContent), never as HTML. */
"use strict";

const st = { session: null, slot: null, current: null, version: null, next: null, resident: false, prot: false };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of kids) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function status(msg, isError) {
  const s = $("status");
  s.textContent = msg;
  s.className = isError ? "error" : "";
}

class ApiError extends Error {
  constructor(status, code, message) { super(`${status} ${code}: ${message}`); this.status = status; this.code = code; }
}

let tokenWaiters = [];
function askToken() {
  return new Promise((resolve) => {
    tokenWaiters.push(resolve);
    const d = $("token-dialog");
    if (!d.open) { d.showModal(); $("token-input").focus(); }
  });
}

/* One API call; returns {status, etag, body}. 401 asks for the token and retries once it is given. */
async function api(method, path, body, ifMatch) {
  for (;;) {
    const h = { "Accept": "application/json" };
    const tok = sessionStorage.getItem("memattn.token");
    if (tok) h["Authorization"] = "Bearer " + tok;
    if (body !== undefined) h["Content-Type"] = "application/json";
    if (ifMatch !== undefined && ifMatch !== null) h["If-Match"] = `"${ifMatch}"`;
    const r = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
    const text = await r.text();
    let doc = null;
    try { doc = text ? JSON.parse(text) : null; } catch (e) { doc = null; }
    if (r.status === 401) { await askToken(); continue; }
    if (!r.ok) {
      const e = doc && doc.error ? doc.error : { code: "http_" + r.status, message: text.slice(0, 200) };
      throw new ApiError(r.status, e.code, e.message);
    }
    return { status: r.status, etag: r.headers.get("ETag"), body: doc };
  }
}

const enc = encodeURIComponent;
const sp = () => "/v1/sessions/" + enc(st.session);
const fmtBytes = (n) => n >= 1 << 20 ? (n / 1048576).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
const fmtTime = (t) => t ? t.replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
const pretty = (p) => p === undefined || p === null ? "(no payload)" : typeof p === "string" ? p : JSON.stringify(p, null, 2);
function parsePayload(s) {
  const t = s.trim();
  if (/^[{\["0-9-]|^(true|false|null)$/.test(t)) { try { return JSON.parse(t); } catch (e) { /* text */ } }
  return s;
}

/* ---- sessions ---- */
async function loadSessions(more) {
  const ul = $("sessions");
  if (!more) { ul.textContent = ""; st.next = null; }
  const q = "?limit=100" + (more && st.next ? "&after=" + enc(st.next) : "");
  const { body } = await api("GET", "/v1/sessions" + q);
  for (const s of body.sessions) {
    ul.append(el("li", { "data-id": s.id, class: s.id === st.session ? "sel" : "", title: s.id, onclick: () => openSession(s.id) },
      el("span", { class: "id" }, s.id), el("span", { class: "n" }, `${s.length} ev · ${s.slots} sl`)));
  }
  if (!body.sessions.length && !more) ul.append(el("li", { class: "dim" }, "no sessions yet"));
  st.next = body.next || null;
  $("btn-more").hidden = !st.next;
}

async function openSession(id) {
  st.session = id; st.slot = null;
  for (const li of $("sessions").children) li.classList.toggle("sel", li.dataset.id === id);
  $("empty").hidden = true;
  $("session").hidden = false;
  $("slot-detail").hidden = true;
  $("slot-empty").hidden = false;
  $("query-result").textContent = "";
  history.replaceState(null, "", "#" + enc(id));
  await Promise.all([loadSessionInfo(), loadSlots()]);
  status(`session ${id}`);
}

async function loadSessionInfo() {
  const { body: s } = await api("GET", sp());
  const c = s.config || {};
  $("session-title").textContent = s.id;
  $("session-config").textContent = `heads ${c.heads} · dim ${c.dim} · value_dim ${c.value_dim} · ${c.backbone} · selector ${c.selector} · chunk ${c.chunk}`;
  const stat = (v, label, id) => el("div", { class: "stat", id }, el("b", null, v), el("span", null, label));
  $("session-stats").replaceChildren(
    stat(s.length, "events", "stat-length"), stat(s.chunks, "chunks"),
    stat(`${s.slots_resident} / ${c.slots}`, "slots resident", "stat-slots"),
    stat(fmtBytes(s.bytes), "in memory", "stat-bytes"), stat(fmtBytes(s.stored_bytes), "stored", "stat-stored"),
    stat(fmtTime(s.updated_at), "updated"));
  const bb = s.backbone || { state_norm: [], penalty_norm: [] };
  const smax = Math.max(1e-9, ...bb.state_norm), pmax = Math.max(1e-9, ...bb.penalty_norm);
  const bar = (v, max, cls) => {   // bars scaled per column: heads compare within a norm
    const b = el("span", { class: "bar " + cls });
    b.style.width = Math.max(2, Math.round(120 * v / max)) + "px";   // CSSOM, allowed by the page's CSP (a style attribute is not)
    return el("td", null, b, Number(v).toPrecision(4));
  };
  $("norms").tBodies[0].replaceChildren(...bb.state_norm.map((v, h) =>
    el("tr", null, el("td", null, h), bar(v, smax, ""), bar(bb.penalty_norm[h], pmax, "pen"))));
}

async function loadSlots() {
  const { body } = await api("GET", sp() + "/slots");
  const tb = $("slots").tBodies[0];
  tb.replaceChildren(...body.slots.map((s) => el("tr", { "data-name": s.name, class: s.name === st.slot ? "sel" : "", onclick: () => openSlot(s.name) },
    el("td", { class: "mono" }, s.name), el("td", null, "v" + s.version),
    el("td", null, s.protected ? el("span", { class: "badge protected" }, "protected") : ""),
    el("td", null, s.event === null || s.event === undefined ? "–" : "#" + s.event), el("td", null, s.usage ?? ""))));
  if (!body.slots.length) tb.append(el("tr", null, el("td", { colspan: 5, class: "dim" }, "no resident slots")));
  $("slots-count").textContent = `${body.slots.length} resident`;
}

/* ---- a slot: history timeline, payloads, edits ---- */
async function openSlot(name, version) {
  st.slot = name;
  for (const tr of $("slots").tBodies[0].rows) tr.classList.toggle("sel", tr.dataset.name === name);
  $("slot-empty").hidden = true;
  $("slot-detail").hidden = false;
  $("slot-title").textContent = name;
  const path = sp() + "/slots/" + enc(name);
  const [vers, cur] = await Promise.all([
    api("GET", path + "/versions"),
    api("GET", path).catch((e) => { if (e.status === 404) return null; throw e; }),
  ]);
  st.resident = !!cur;
  st.current = cur ? cur.body.version : null;
  st.prot = cur ? !!cur.body.protected : false;
  const vs = vers.body.versions;
  const live = vs.filter((v) => !v.tombstone);
  st.version = version ?? (st.current ?? (live.length ? live[live.length - 1].version : null));
  $("slot-badges").replaceChildren(
    st.resident ? el("span", { class: "badge" }, "current v" + st.current) : el("span", { class: "badge evicted" }, "evicted"),
    st.prot ? el("span", { class: "badge protected" }, "protected") : "");
  $("timeline").replaceChildren(...vs.map((v) => el("div", {
    class: "ver" + (v.tombstone ? " tomb" : "") + (v.version === st.current ? " cur" : "") + (v.version === st.version ? " sel" : ""),
    "data-version": v.version, title: v.tombstone ? "evicted" : (v.event === null ? "written by a slot verb" : "written by event #" + v.event),
    onclick: () => { if (!v.tombstone) showVersion(v.version); },
  }, el("span", { class: "dot" }), el("span", { class: "lbl" }, (v.tombstone ? "✕" : "v") + v.version), el("span", { class: "when" }, (v.at || "").slice(11, 19)))));
  $("btn-protect").textContent = st.prot ? "Unprotect" : "Protect";
  $("btn-protect").disabled = !st.resident;
  $("btn-evict").disabled = !st.resident || st.prot;
  $("btn-overwrite").disabled = st.prot;
  await showVersion(st.version);
}

async function showVersion(v) {
  st.version = v;
  for (const d of $("timeline").children) d.classList.toggle("sel", Number(d.dataset.version) === v);
  $("btn-restore").disabled = v === null || (st.resident && v === st.current) || st.prot;
  $("btn-restore").textContent = v === null ? "Restore" : `Restore v${v}`;
  if (v === null) { $("version-meta").textContent = ""; $("version-payload").textContent = ""; return; }
  const { body } = await api("GET", sp() + "/slots/" + enc(st.slot) + "?version=" + v);
  $("version-meta").textContent = `v${body.version}` + (v === st.current ? " (current)" : "") +
    (body.event === null || body.event === undefined ? " · written by a slot verb" : ` · written by event #${body.event}`);
  $("version-payload").textContent = pretty(body.payload);
  $("payload-input").value = typeof body.payload === "string" ? body.payload : body.payload === undefined ? "" : JSON.stringify(body.payload);
}

/* Runs an edit; on 412 reloads the slot and says so. */
async function edit(what, fn) {
  try {
    const r = await fn();
    status(`${what}: ${st.slot}` + (r && r.body && r.body.version ? ` is now v${r.body.version}` : ""));
  } catch (e) {
    if (e.status === 412) status(`${what}: the slot changed since it was shown; reloaded, nothing applied`, true);
    else status(`${what}: ${e.message}`, true);
  }
  await Promise.all([loadSlots(), loadSessionInfo(), loadSessions(), st.slot ? openSlot(st.slot) : null])
    .catch((e) => status(e.message, true));
}

function wire() {
  $("token-form").addEventListener("submit", () => {
    sessionStorage.setItem("memattn.token", $("token-input").value);
    const w = tokenWaiters; tokenWaiters = [];
    w.forEach((f) => f());
  });
  $("btn-token").addEventListener("click", () => { sessionStorage.removeItem("memattn.token"); $("token-input").value = ""; askToken().then(() => loadSessions()); });
  $("btn-refresh").addEventListener("click", () => guard(async () => { await loadSessions(); if (st.session) await openSession(st.session); }));
  $("btn-more").addEventListener("click", () => guard(() => loadSessions(true)));
  const path = () => sp() + "/slots/" + enc(st.slot);
  $("btn-overwrite").addEventListener("click", () => edit("overwrite", () =>
    api("PUT", path(), { payload: parsePayload($("payload-input").value) }, st.current)));
  $("btn-protect").addEventListener("click", () => edit(st.prot ? "unprotect" : "protect", () =>
    api("PATCH", path(), { protected: !st.prot }, st.current)));
  $("btn-evict").addEventListener("click", () => edit("evict", () => api("DELETE", path(), undefined, st.current)));
  $("btn-restore").addEventListener("click", () => edit("restore", () =>
    api("POST", path() + "/restore", { version: st.version }, st.resident ? st.current : undefined)));
  $("new-slot").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("new-name").value.trim();
    guard(async () => {
      const r = await api("POST", sp() + "/slots", { name, payload: parsePayload($("new-payload").value) });
      status(`write: ${name} is v${r.body.version}` + (r.body.evicted && r.body.evicted.length ? `, evicted ${r.body.evicted.join(", ")}` : ""));
      $("new-name").value = ""; $("new-payload").value = "";
      await Promise.all([loadSlots(), loadSessionInfo(), loadSessions()]);
      await openSlot(name);
    });
  });
  $("query-form").addEventListener("submit", (ev) => { ev.preventDefault(); guard(runQuery); });
}

async function runQuery() {
  const q = { text: $("query-text").value };
  if ($("query-route").value) q.route = $("query-route").value;
  const out = $("query-result");
  let r;
  try {
    r = (await api("POST", sp() + "/query", { queries: [q] })).body.results[0];
  } catch (e) {
    out.replaceChildren(el("div", { class: "err" }, e.message));
    return;
  }
  if (r.error) { out.replaceChildren(el("div", { class: "err" }, `${r.error.code}: ${r.error.message}`)); return; }
  const rows = [["route", el("span", { class: "badge route route-" + r.route, id: "query-route-badge" }, r.route)],
                ["score", r.score === undefined ? "–" : Number(r.score).toFixed(4)]];
  if (r.route === "slot") {
    rows.push(["evidence", el("span", { id: "query-evidence" }, "slot ",
      el("a", { class: "link mono", onclick: () => openSlot(r.slot, r.version) }, r.slot), ` version ${r.version}`)]);
  } else if (r.event !== undefined) {
    rows.push(["evidence", el("span", { id: "query-evidence" }, `pointer event #${r.event}`,
      r.chunks ? ` · chunks read [${r.chunks.join(", ")}]` : "")]);
  } else {
    rows.push(["evidence", el("span", { id: "query-evidence", class: "dim" }, "the backbone state (no pointer)")]);
  }
  rows.push(["payload", el("pre", { class: "payload", id: "query-payload" }, pretty(r.payload))]);
  out.replaceChildren(el("div", { class: "answer" }, ...rows.flatMap(([k, v]) => [el("div", { class: "k" }, k), el("div", null, v)])));
  status(`query answered by ${r.route}`);
  await loadSlots();   // usage counts changed
}

async function guard(fn) {
  try { await fn(); } catch (e) { status(e.message, true); }
}

window.addEventListener("DOMContentLoaded", () => {
  wire();
  guard(async () => {
    await loadSessions();
    const want = decodeURIComponent(location.hash.slice(1));
    if (want) await openSession(want);
    else status("ready");
  });
});
