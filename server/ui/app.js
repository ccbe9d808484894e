// cohortd's built-in page. Every call below is a documented /v1 call made
// with the workspace API key the user pasted; the key lives in this tab's
// sessionStorage only (never a cookie, never localStorage). No framework:
// views are sections of index.html shown by the hash route.

import { drawSyncChart } from "./chart.js";

const KEY = "cohortd.apiKey";
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat();
// One formatter for every date: toLocaleString builds a new one per call,
// which a list of 1,000 cohorts would feel.
const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const STATUS_LABEL = {
  ok: "ok", stale: "stale", unmatched_high: "unmatched high", shrunk: "shrunk", never_synced: "never synced",
};
const STATUS_RANK = { shrunk: 0, unmatched_high: 1, stale: 2, never_synced: 3, ok: 4 };

const state = {
  cohorts: null, // GET /v1/cohorts, loaded once per sign-in (and on refresh)
  loadedAt: 0,
  signingIn: false,
  rows: new Map(), // "partner/id" → <tr>
  sort: { key: "partner", dir: 1 },
  sorted: null, // the rows in sort order (sortedRows)
  sortedBy: "",
  syncs: [],
  syncShown: 0,
  segSeq: 0,
  segTimer: 0,
  lookupSeq: 0,
};

// ---- API ----

class APIError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY);
}

async function api(method, path, body) {
  const key = apiKey();
  if (!key) throw new APIError(401, "not signed in");
  const opts = { method, headers: { Authorization: "Bearer " + key, Accept: "application/json" } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    throw new APIError(0, "cohortd did not answer (" + e.message + ")");
  }
  const textBody = await res.text();
  let data = null;
  if (textBody) {
    try { data = JSON.parse(textBody); } catch { data = null; }
  }
  if (!res.ok) {
    const msg = (data && data.message) || res.statusText || "request failed";
    if (res.status === 401 && !state.signingIn) {
      signOut("The key is no longer accepted (revoked or rotated). Sign in again.");
    }
    throw new APIError(res.status, msg);
  }
  return data;
}

const cohortPath = (p, id) => "/v1/cohorts/" + encodeURIComponent(p) + "/" + encodeURIComponent(id);

// ---- helpers ----

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function badge(health) {
  const st = health ? health.status : "never_synced";
  const b = h("span", { class: "badge badge-" + st, text: STATUS_LABEL[st] || st });
  if (health && health.reasons && health.reasons.length) b.title = health.reasons.join("\n");
  return b;
}

function relTime(iso) {
  if (!iso) return "never";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (s < 0) return "just now";
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function absTime(iso) {
  return iso ? dateFmt.format(new Date(iso)) : "";
}

function duration(ms) {
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function notice(msg) {
  const n = $("notice");
  n.textContent = msg || "";
  n.hidden = !msg;
}

function describeError(e) {
  if (e.status === 503) return "cohortd is not ready yet (recovering or shutting down): " + e.message;
  return e.message;
}

// ---- sign in / out ----

async function signIn(ev) {
  ev.preventDefault();
  const key = $("signin-key").value.trim();
  $("signin-error").textContent = "";
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("signin-submit").disabled = true;
  state.signingIn = true;
  try {
    await loadCohorts();
    $("signin-key").value = "";
    if (!location.hash.startsWith("#/") || location.hash === "#/signin") location.hash = "#/cohorts";
    else route();
  } catch (e) {
    sessionStorage.removeItem(KEY);
    $("signin-error").textContent = e.status === 401 || e.status === 403
      ? "That key was not accepted: use a workspace API key (not the admin token)."
      : describeError(e);
  } finally {
    state.signingIn = false;
    $("signin-submit").disabled = false;
  }
}

function signOut(msg) {
  sessionStorage.removeItem(KEY);
  state.cohorts = null;
  state.rows.clear();
  state.sorted = null;
  $("cohort-rows").replaceChildren();
  $("segment-clauses").replaceChildren();
  $("segment-sample").replaceChildren();
  $("segment-count").textContent = "";
  $("lookup-result").replaceChildren();
  $("sync-chart").replaceChildren();
  $("sync-rows").replaceChildren();
  $("signin-error").textContent = typeof msg === "string" ? msg : "";
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else route();
}

// ---- cohorts ----

async function loadCohorts() {
  const data = await api("GET", "/v1/cohorts");
  state.cohorts = data.cohorts;
  state.loadedAt = Date.now();
  buildRows();
}

function cohortKey(c) {
  return c.partner + "/" + c.cohort_id;
}

function cohortHref(c) {
  return "#/cohort/" + encodeURIComponent(c.partner) + "/" + encodeURIComponent(c.cohort_id);
}

// buildRows makes one <tr> per cohort once, by cloning a prototype row;
// filtering then only hides rows and sorting only reorders them (with keys
// computed here), so that 1,000 cohorts stay quick.
function buildRows() {
  state.rows.clear();
  state.sorted = null;
  const t0 = performance.now();
  const proto = h("tr", { "data-testid": "cohort-row" },
    h("td"), h("td", {}, h("a")), h("td", { class: "name" }), h("td", { class: "num" }), h("td"), h("td", {}, h("span")));
  for (const c of state.cohorts) {
    const last = c.health && c.health.last_sync_at;
    const st = c.health ? c.health.status : "never_synced";
    const tr = proto.cloneNode(true);
    const td = tr.children;
    tr.dataset.key = cohortKey(c);
    td[0].textContent = c.partner;
    td[1].firstChild.href = cohortHref(c);
    td[1].firstChild.textContent = c.cohort_id;
    td[2].textContent = c.name;
    td[3].textContent = fmt.format(c.size);
    td[4].textContent = relTime(last); // its title (the date) is set on hover
    tr._last = last;
    const b = td[5].firstChild;
    b.className = "badge badge-" + st;
    b.textContent = STATUS_LABEL[st] || st;
    if (c.health && c.health.reasons.length) b.title = c.health.reasons.join("\n");
    tr._c = c;
    tr._text = (c.partner + "\n" + c.cohort_id + "\n" + c.name).toLowerCase();
    tr._status = st;
    tr._sort = {
      partner: c.partner.toLowerCase(), cohort_id: c.cohort_id.toLowerCase(), name: c.name.toLowerCase(),
      size: c.size, last_sync: last ? Date.parse(last) : -Infinity, health: STATUS_RANK[st],
    };
    state.rows.set(cohortKey(c), tr);
  }
  renderRows();
  document.documentElement.dataset.cohortRenderMs = (performance.now() - t0).toFixed(1);
}

// sortedRows returns the rows in the current order, sorting only when the
// order or the rows changed.
function sortedRows() {
  const { key, dir } = state.sort;
  if (state.sorted && state.sortedBy === key + dir) return state.sorted;
  const rows = [...state.rows.values()];
  rows.sort((a, b) => {
    const x = a._sort[key], y = b._sort[key];
    if (x < y) return -dir;
    if (x > y) return dir;
    return a.dataset.key < b.dataset.key ? -1 : 1;
  });
  state.sorted = rows;
  state.sortedBy = key + dir;
  $("cohort-rows").replaceChildren(...rows);
  return rows;
}

function renderRows() {
  const t0 = performance.now();
  const q = $("cohort-filter").value.trim().toLowerCase();
  const hf = $("health-filter").value;
  const rows = sortedRows();
  let shown = 0;
  for (const tr of rows) {
    const st = tr._status;
    const ok = (!q || tr._text.includes(q)) && (!hf || (hf === "!ok" ? st !== "ok" : st === hf));
    if (tr.hidden === ok) tr.hidden = !ok;
    if (ok) shown++;
  }
  $("cohort-count").textContent = shown === rows.length ? `${rows.length} cohorts` : `${shown} of ${rows.length} cohorts`;
  $("cohort-empty").hidden = rows.length > 0;
  const { key, dir } = state.sort;
  for (const th of document.querySelectorAll("#cohort-table th")) {
    th.setAttribute("aria-sort", th.dataset.key === key ? (dir > 0 ? "ascending" : "descending") : "none");
  }
  document.documentElement.dataset.cohortFilterMs = (performance.now() - t0).toFixed(1);
}

async function showCohorts() {
  if (!state.cohorts || Date.now() - state.loadedAt > 2000) await loadCohorts();
  else renderRows();
}

// ---- one cohort ----

async function showCohort(partner, id) {
  $("cohort-title").textContent = id;
  $("cohort-badge").replaceChildren();
  $("cohort-facts").replaceChildren();
  $("cohort-reasons").replaceChildren();
  $("sync-chart").replaceChildren();
  $("sync-rows").replaceChildren();
  const [c, hist] = await Promise.all([
    api("GET", cohortPath(partner, id)),
    api("GET", cohortPath(partner, id) + "/syncs?limit=1000"),
  ]);
  $("cohort-title").textContent = c.name;
  $("cohort-badge").replaceChildren(badge(hist.health));
  const fact = (dt, dd) => h("div", {}, h("dt", { text: dt }), h("dd", { text: dd }));
  const hl = hist.health;
  $("cohort-facts").replaceChildren(
    fact("Partner / id", c.partner + " / " + c.cohort_id),
    fact("Members", fmt.format(c.size)),
    fact("Last sync", hl.last_sync_at ? relTime(hl.last_sync_at) + " (" + absTime(hl.last_sync_at) + ")" : "never"),
    fact("Usual interval", hl.expected_interval_s ? duration(Math.round(hl.expected_interval_s * 1000)) : "not known yet"),
    fact("Syncs kept", String(hist.syncs.length)),
    fact("Created", absTime(c.created_at)));
  $("cohort-reasons").replaceChildren(...hl.reasons.map((r) => h("li", { text: r })));
  state.syncs = hist.syncs;
  state.syncShown = 0;
  drawSyncChart($("sync-chart"), [...hist.syncs].reverse());
  moreSyncs();
}

function moreSyncs() {
  const next = state.syncs.slice(state.syncShown, state.syncShown + 50);
  const rows = next.map((s) => h("tr", {},
    h("td", { title: absTime(s.started_at), text: absTime(s.started_at) }),
    h("td", { text: duration(Date.parse(s.ended_at) - Date.parse(s.started_at)) }),
    h("td", { text: s.source }),
    h("td", { class: "num", text: fmt.format(s.requests) }),
    h("td", { class: "num", text: fmt.format(s.matched) }),
    h("td", { class: "num", text: fmt.format(s.added) }),
    h("td", { class: "num", text: fmt.format(s.removed) }),
    h("td", {
      class: "num", text: fmt.format(s.unmatched.unknown + s.unmatched.device_id_identified),
      title: `unknown ${s.unmatched.unknown}, device id of an identified user ${s.unmatched.device_id_identified}`,
    }),
    h("td", { class: "num", text: fmt.format(s.dropped_before_floor) }),
    h("td", { class: "num", text: fmt.format(s.size_after) })));
  $("sync-rows").append(...rows);
  state.syncShown += next.length;
  $("sync-more").hidden = state.syncShown >= state.syncs.length;
}

// ---- segment builder ----

function cohortOptions(select, value) {
  select.replaceChildren(...state.cohorts.map((c) =>
    h("option", { value: cohortKey(c), text: `${c.name} (${c.partner}/${c.cohort_id}, ${fmt.format(c.size)})` })));
  if (value) select.value = value;
}

function addClause(value) {
  const li = $("clause-template").content.firstElementChild.cloneNode(true);
  const sel = li.querySelector("select");
  cohortOptions(sel, value);
  sel.addEventListener("change", segmentChanged);
  li.querySelector("input").addEventListener("change", segmentChanged);
  li.querySelector("button").addEventListener("click", () => {
    const next = li.nextElementSibling || li.previousElementSibling;
    li.remove();
    segmentChanged();
    if (next) next.querySelector("select").focus();
    else $("segment-add").focus();
  });
  $("segment-clauses").append(li);
  return li;
}

function segmentExpr() {
  const clauses = [...document.querySelectorAll("#segment-clauses .clause")].map((li) => {
    const e = { cohort: li.querySelector("select").value };
    return li.querySelector("input").checked ? { not: e } : e;
  });
  if (clauses.length === 0) return null;
  return { [$("segment-op").value]: clauses };
}

// segmentChanged recounts after a short pause; an answer that arrives after
// a newer question is dropped.
function segmentChanged() {
  clearTimeout(state.segTimer);
  const expr = segmentExpr();
  $("segment-json").textContent = expr ? JSON.stringify({ segment: expr }, null, 2) : "";
  if (!expr) {
    $("segment-count").textContent = "";
    $("segment-sample").replaceChildren();
    return;
  }
  $("segment-count").classList.add("busy");
  state.segTimer = setTimeout(() => runSegment(expr), 120);
}

async function runSegment(expr) {
  const seq = ++state.segSeq;
  try {
    const [count, page] = await Promise.all([
      api("POST", "/v1/segments/count", { segment: expr }),
      api("POST", "/v1/segments/members", { segment: expr, limit: 10 }),
    ]);
    if (seq !== state.segSeq) return;
    $("segment-count").textContent = String(count.count);
    $("segment-warn").textContent = (count.warnings || []).join("; ");
    $("segment-sample").replaceChildren(...page.members.map((m) => h("li", { text: memberLabel(m) })));
    if (page.members.length === 0) $("segment-sample").append(h("li", { class: "muted", text: "nobody" }));
  } catch (e) {
    if (seq === state.segSeq) $("segment-warn").textContent = describeError(e);
  } finally {
    if (seq === state.segSeq) $("segment-count").classList.remove("busy");
  }
}

function memberLabel(m) {
  const parts = [];
  if (m.external_id) parts.push(m.external_id);
  for (const a of m.aliases || []) parts.push(`${a.alias_name}: ${a.alias_label}`);
  for (const d of m.device_ids || []) parts.push("device " + d);
  return parts.join(" · ") || "(no identifier)";
}

async function showSegment() {
  if (!state.cohorts) await loadCohorts();
  const clauses = $("segment-clauses");
  if (clauses.children.length === 0 && state.cohorts.length > 0) {
    addClause(cohortKey(state.cohorts[0]));
  } else {
    // Cohorts may have changed since the clauses were made.
    for (const sel of clauses.querySelectorAll("select")) cohortOptions(sel, sel.value);
  }
  segmentChanged();
}

// ---- lookup ----

async function lookup(ev) {
  ev.preventDefault();
  const v = $("lookup-input").value.trim();
  const kind = $("lookup-kind").value;
  if (!v) return;
  const seq = ++state.lookupSeq;
  const out = $("lookup-result");
  out.replaceChildren(h("p", { class: "muted", text: "Looking up…" }));
  const q = (k) => "/v1/users/lookup?" + new URLSearchParams(k).toString();
  let res = null, err = null;
  try {
    if (kind === "alias") {
      res = await api("GET", q({ alias_name: $("lookup-alias-name").value.trim() || "email", alias_label: v }));
    } else if (kind === "auto") {
      try {
        res = await api("GET", q({ external_id: v }));
      } catch (e) {
        if (e.status !== 404) throw e;
        res = await api("GET", q({ device_id: v }));
      }
    } else {
      res = await api("GET", q({ [kind]: v }));
    }
  } catch (e) {
    err = e;
  }
  if (seq !== state.lookupSeq) return;
  if (err) {
    out.replaceChildren(h("p", { class: err.status === 404 ? "muted" : "error", text: err.status === 404 ? "No user holds that identifier." : describeError(err) }));
    return;
  }
  const u = res.user;
  const ids = h("ul", {});
  if (u.external_id) ids.append(h("li", {}, "external id ", h("code", { text: u.external_id })));
  for (const a of u.aliases) ids.append(h("li", {}, "alias ", h("code", { text: `${a.alias_name}: ${a.alias_label}` })));
  for (const d of u.device_ids) ids.append(h("li", {}, "device id ", h("code", { text: d })));
  const cohorts = res.cohorts.length === 0 ? h("p", { class: "muted", text: "In no cohort." }) :
    h("ul", {}, ...res.cohorts.map((c) => h("li", {}, h("a", { href: cohortHref(c), text: c.name }), ` (${c.partner}/${c.cohort_id})`)));
  out.replaceChildren(h("div", { class: "card" },
    h("h2", { text: u.anonymous ? "Anonymous user" : "Identified user" }), ids,
    h("h2", { text: `Cohorts (${res.cohorts.length})` }), cohorts));
}

// ---- routing ----

const VIEWS = ["signin", "cohorts", "cohort", "segment", "lookup"];

function show(view) {
  for (const v of VIEWS) $("view-" + v).hidden = v !== view;
  const signedIn = view !== "signin";
  $("nav").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view || (view === "cohort" && a.dataset.view === "cohorts")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function route() {
  const hash = location.hash;
  if (hash && !hash.startsWith("#/")) return; // an in-page anchor (the skip link)
  notice("");
  const parts = hash.slice(2).split("/");
  if (!apiKey()) {
    show("signin");
    document.title = "Sign in · cohortd";
    $("signin-key").focus();
    return;
  }
  try {
    switch (parts[0]) {
      case "cohort":
        if (parts.length === 3) {
          show("cohort");
          document.title = "Cohort · cohortd";
          await showCohort(decodeURIComponent(parts[1]), decodeURIComponent(parts[2]));
          break;
        }
      // fall through
      case "":
      case "signin":
      case "cohorts":
        if (parts[0] !== "cohorts") { location.replace("#/cohorts"); return; }
        show("cohorts");
        document.title = "Cohorts · cohortd";
        await showCohorts();
        break;
      case "segment":
        show("segment");
        document.title = "Segments · cohortd";
        await showSegment();
        break;
      case "lookup":
        show("lookup");
        document.title = "User lookup · cohortd";
        $("lookup-input").focus();
        break;
      default:
        location.replace("#/cohorts");
    }
  } catch (e) {
    if (apiKey()) notice(e.status === 404 ? "Not found: " + e.message : describeError(e));
  }
}

function init() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("cohort-filter").addEventListener("input", renderRows);
  // Dates are formatted when a row is first hovered or focused, not for
  // all 1,000 rows up front.
  const dateTitle = (ev) => {
    const tr = ev.target.closest && ev.target.closest("tr");
    if (tr && tr._last && !tr.children[4].title) tr.children[4].title = absTime(tr._last);
  };
  $("cohort-rows").addEventListener("pointerover", dateTitle);
  $("cohort-rows").addEventListener("focusin", dateTitle);
  $("health-filter").addEventListener("change", renderRows);
  for (const th of document.querySelectorAll("#cohort-table th")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.key;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : (key === "size" || key === "last_sync" ? -1 : 1) };
      renderRows();
    });
  }
  $("sync-more").addEventListener("click", moreSyncs);
  $("segment-add").addEventListener("click", () => {
    const li = addClause(state.cohorts && state.cohorts.length ? cohortKey(state.cohorts[0]) : "");
    li.querySelector("select").focus();
    segmentChanged();
  });
  $("segment-op").addEventListener("change", segmentChanged);
  $("lookup-form").addEventListener("submit", lookup);
  $("lookup-kind").addEventListener("change", () => {
    $("lookup-alias-name").hidden = $("lookup-kind").value !== "alias";
  });
  window.addEventListener("hashchange", route);
  // The chart is drawn as wide as its box: redraw it when the box changes.
  let resizeTimer = 0, lastWidth = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      const w = $("sync-chart").clientWidth;
      if (!$("view-cohort").hidden && w !== lastWidth) {
        lastWidth = w;
        drawSyncChart($("sync-chart"), [...state.syncs].reverse());
      }
    }, 150);
  });
  route();
}

init();
