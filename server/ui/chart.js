// The sync history chart: inline SVG drawn here, no library. One slot per
// sync, oldest on the left. The upper panel has added (up, green) and
// unmatched (up, amber) side by side above the zero line and removed (down,
// red) below it; the lower panel the size after each sync. Hovering a slot
// shows its figures (an SVG <title>); the table under the chart holds the
// same figures for keyboards and screen readers.

const NS = "http://www.w3.org/2000/svg";
const M = { left: 62, right: 16, top: 18, bottom: 26, gap: 30 };

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
// (oldest first, objects of GET /v1/cohorts/…/syncs). The drawing is as wide
// as the container, so that its text stays readable on a phone.
export function drawSyncChart(container, syncs) {
  container.replaceChildren();
  const W = Math.max(300, Math.min(1400, Math.round(container.clientWidth || 800)));
  const H = W < 500 ? 300 : 340;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" }, container);
  const title = el("title", {}, svg);
  title.textContent = syncs.length === 0 ? "No sync yet" :
    `${syncs.length} syncs: added, removed and unmatched per sync, and the size after each`;
  if (syncs.length === 0) {
    const t = text(svg, W / 2, H / 2, "No sync yet", "middle");
    t.setAttribute("class", "empty");
    return;
  }
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom - M.gap;
  // Two panels: the changes of each sync (62%), the size after it (38%).
  const top = M.top, changesH = Math.round(ph * 0.62);
  const sizeTop = top + changesH + M.gap, sizeH = ph - changesH;
  const unmatched = (s) => s.unmatched.unknown + s.unmatched.device_id_identified;
  let up = 0, down = 0, size = 0;
  for (const s of syncs) {
    up = Math.max(up, s.added, unmatched(s));
    down = Math.max(down, s.removed);
    size = Math.max(size, s.size_after);
  }
  up = Math.max(up, 1);
  // The zero line splits the changes panel in proportion, keeping some
  // room for each side so that small bars stay visible.
  const upShare = down === 0 ? 1 : Math.min(0.8, Math.max(0.3, up / (up + down)));
  const y0 = top + changesH * upShare;
  const yUp = (v) => y0 - (v / up) * (y0 - top);
  const yDown = (v) => y0 + (down === 0 ? 0 : (v / down) * (top + changesH - y0));
  const ySize = (v) => sizeTop + sizeH - (size === 0 ? 0 : (v / size) * sizeH);

  // Axes and labels.
  text(svg, M.left, top - 6, "changes per sync", "start");
  el("line", { x1: M.left, x2: M.left + pw, y1: y0, y2: y0, class: "axis" }, svg);
  el("line", { x1: M.left, x2: M.left, y1: top, y2: top + changesH, class: "axis" }, svg);
  text(svg, M.left - 6, top + 10, fmt.format(up), "end");
  text(svg, M.left - 6, y0 + 4, "0", "end");
  if (down > 0) text(svg, M.left - 6, top + changesH, "−" + fmt.format(down), "end");
  text(svg, M.left, sizeTop - 6, "size after", "start");
  el("line", { x1: M.left, x2: M.left + pw, y1: sizeTop + sizeH, y2: sizeTop + sizeH, class: "axis" }, svg);
  el("line", { x1: M.left, x2: M.left, y1: sizeTop, y2: sizeTop + sizeH, class: "axis" }, svg);
  text(svg, M.left - 6, sizeTop + 10, fmt.format(size), "end");
  text(svg, M.left - 6, sizeTop + sizeH, "0", "end");
  text(svg, M.left, H - 6, shortDate(syncs[0].started_at), "start");
  if (syncs.length > 1) text(svg, M.left + pw, H - 6, shortDate(syncs[syncs.length - 1].started_at), "end");

  // One slot per sync; hovering anywhere in it shows its figures.
  const slot = pw / syncs.length;
  const bw = Math.max(0.6, Math.min(18, slot * 0.35));
  const points = [];
  syncs.forEach((s, i) => {
    const cx = M.left + slot * (i + 0.5);
    const g = el("g", {}, svg);
    const tip = el("title", {}, g);
    tip.textContent = `${shortDate(s.started_at)} · ${s.source}, ${s.requests} request${s.requests === 1 ? "" : "s"}\n` +
      `added ${fmt.format(s.added)}, removed ${fmt.format(s.removed)}, unmatched ${fmt.format(unmatched(s))}\n` +
      `size after ${fmt.format(s.size_after)}`;
    el("rect", { x: cx - slot / 2, y: top, width: slot, height: H - top - M.bottom, fill: "transparent" }, g);
    if (s.added > 0) el("rect", { x: cx - bw, y: yUp(s.added), width: bw, height: Math.max(1, y0 - yUp(s.added)), class: "bar-added" }, g);
    if (unmatched(s) > 0) el("rect", { x: cx, y: yUp(unmatched(s)), width: bw, height: Math.max(1, y0 - yUp(unmatched(s))), class: "bar-unmatched" }, g);
    if (s.removed > 0) el("rect", { x: cx - bw / 2, y: y0, width: bw, height: Math.max(1, yDown(s.removed) - y0), class: "bar-removed" }, g);
    points.push([cx, ySize(s.size_after)]);
  });
  const line = points.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ");
  const base = (sizeTop + sizeH).toFixed(1);
  el("polygon", { points: `${points[0][0].toFixed(1)},${base} ${line} ${points[points.length - 1][0].toFixed(1)},${base}`, class: "area-size" }, svg);
  el("polyline", { points: line, class: "line-size" }, svg);
  if (syncs.length <= 60) {
    for (const [x, y] of points) el("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 3, class: "dot-size" }, svg);
  }
}
