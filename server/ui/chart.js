// The sync history chart: inline SVG drawn here, no library. One slot per
// sync, oldest on the left: added (up, green) and unmatched (up, amber)
// side by side above the zero line, removed (down, red) below it, and the
// size after each sync as a line on its own scale (right axis). Hovering a
// slot shows its figures (an SVG <title>); the table under the chart holds
// the same figures for keyboards and screen readers.

const NS = "http://www.w3.org/2000/svg";
const W = 800, H = 260;
const M = { left: 58, right: 64, top: 14, bottom: 30 };

const fmt = new Intl.NumberFormat();

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function text(parent, x, y, s, anchor) {
  const t = el("text", { x, y, "text-anchor": anchor || "start" }, parent);
  t.textContent = s;
  return t;
}

function shortDate(iso) {
  const d = new Date(iso);
  return d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " +
    d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

// drawSyncChart replaces the content of container with the chart of syncs
// (oldest first, objects of GET /v1/cohorts/…/syncs).
export function drawSyncChart(container, syncs) {
  container.replaceChildren();
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" }, container);
  const title = el("title", {}, svg);
  title.textContent = syncs.length === 0 ? "No sync yet" :
    `${syncs.length} syncs: added, removed and unmatched per sync, and the size after each`;
  if (syncs.length === 0) {
    const t = text(svg, W / 2, H / 2, "No sync yet", "middle");
    t.setAttribute("class", "empty");
    return;
  }
  const pw = W - M.left - M.right, ph = H - M.top - M.bottom;
  const unmatched = (s) => s.unmatched.unknown + s.unmatched.device_id_identified;
  let up = 0, down = 0, size = 0;
  for (const s of syncs) {
    up = Math.max(up, s.added, unmatched(s));
    down = Math.max(down, s.removed);
    size = Math.max(size, s.size_after);
  }
  up = Math.max(up, 1);
  // The zero line splits the plot in proportion, keeping some room for
  // each side so that small bars stay visible.
  const upShare = down === 0 ? 1 : Math.min(0.85, Math.max(0.35, up / (up + down)));
  const y0 = M.top + ph * upShare;
  const upH = y0 - M.top, downH = M.top + ph - y0;
  const yUp = (v) => y0 - (v / up) * upH;
  const yDown = (v) => y0 + (down === 0 ? 0 : (v / down) * downH);
  const ySize = (v) => M.top + ph - (size === 0 ? 0 : (v / size) * ph);

  // Axes and labels.
  el("line", { x1: M.left, x2: M.left + pw, y1: y0, y2: y0, class: "axis" }, svg);
  el("line", { x1: M.left, x2: M.left, y1: M.top, y2: M.top + ph, class: "axis" }, svg);
  el("line", { x1: M.left + pw, x2: M.left + pw, y1: M.top, y2: M.top + ph, class: "axis" }, svg);
  text(svg, M.left - 6, M.top + 10, fmt.format(up), "end");
  text(svg, M.left - 6, y0 + 4, "0", "end");
  if (down > 0) text(svg, M.left - 6, M.top + ph, "−" + fmt.format(down), "end");
  text(svg, M.left + pw + 6, M.top + 10, fmt.format(size), "start");
  text(svg, M.left + pw + 6, M.top + ph, "0", "start");
  text(svg, M.left, H - 8, shortDate(syncs[0].started_at), "start");
  if (syncs.length > 1) text(svg, M.left + pw, H - 8, shortDate(syncs[syncs.length - 1].started_at), "end");

  // Bars, one slot per sync.
  const slot = pw / syncs.length;
  const bw = Math.max(0.6, Math.min(18, slot * 0.4));
  const points = [];
  syncs.forEach((s, i) => {
    const cx = M.left + slot * (i + 0.5);
    const g = el("g", {}, svg);
    const tip = el("title", {}, g);
    tip.textContent = `${shortDate(s.started_at)} · ${s.source}, ${s.requests} request${s.requests === 1 ? "" : "s"}\n` +
      `added ${fmt.format(s.added)}, removed ${fmt.format(s.removed)}, unmatched ${fmt.format(unmatched(s))}\n` +
      `size after ${fmt.format(s.size_after)}`;
    el("rect", { x: cx - slot / 2, y: M.top, width: slot, height: ph, fill: "transparent" }, g);
    if (s.added > 0) el("rect", { x: cx - bw, y: yUp(s.added), width: bw, height: Math.max(1, y0 - yUp(s.added)), class: "bar-added" }, g);
    if (unmatched(s) > 0) el("rect", { x: cx, y: yUp(unmatched(s)), width: bw, height: Math.max(1, y0 - yUp(unmatched(s))), class: "bar-unmatched" }, g);
    if (s.removed > 0) el("rect", { x: cx - bw / 2, y: y0, width: bw, height: Math.max(1, yDown(s.removed) - y0), class: "bar-removed" }, g);
    points.push([cx, ySize(s.size_after)]);
  });
  el("polyline", { points: points.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "), class: "line-size" }, svg);
  if (syncs.length <= 60) {
    for (const [x, y] of points) el("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 3, class: "dot-size" }, svg);
  }
}
