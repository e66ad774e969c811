// LoRA Lab: the live loss chart on the Train node.
//
// The server broadcasts `loralab.progress` events (start, step, samples, end) to every page and
// keeps each node's latest run (GET /loralab/runs/{node id}). This extension keeps one chart
// state per node id, fed by those events, and re-fetches the run when a node appears (page load,
// second tab, workflow switch) or when events arrive for a run it did not see start.
// Under the chart, a strip shows each checkpoint's samples (thumbnails from ComfyUI's /view, labelled
// "step N", newest first), from the same state, so they too survive a reload.
// Drawing logic lives in loss_chart_core.js (pure, unit-tested with `node --test`).

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  applyEvent, applyFetched, computeScale, downsample, estimateEta, formatEta, formatLoss, niceTicks,
  parseLenientJson, placeMarkers, sampleGroups, smooth, stepScale, summarize,
} from "./loss_chart_core.js";

const EXTENSION = "LoRALab.LossChart";
const NODE_TYPE = "LoRALabTrain";
const EVENT = "loralab.progress";
const LOG_PROPERTY = "loralab_log_scale";
const CHART_HEIGHT = 180;
const THUMB_HEIGHT = 64;
// the sample strip under the chart: a label line, the thumbnails, room for a horizontal scrollbar
const STRIP_HEIGHT = THUMB_HEIGHT + 14 + 12;

const COLORS = {
  background: "#1c1c20",
  grid: "rgba(255,255,255,0.08)",
  axis: "rgba(255,255,255,0.45)",
  raw: "rgba(130,150,220,0.55)",
  smooth: "#f5b84c",
  save: "#5fbf6f",
  sample: "#c07ef0",
  stop: { interrupted: "#e8a33a", error: "#e5484d" },
  text: "#c8c8c8",
};

/** node id (string) -> chart state (see applyEvent in loss_chart_core.js) */
const states = new Map();
/** every chart on the page */
const views = new Set();
/** node id -> {again} while a fetch of that node's run is in flight */
const inFlight = new Map();

function nodeKey(node) {
  return node && node.id !== undefined && node.id !== null && node.id !== -1 ? String(node.id) : null;
}

function updated(id) {
  for (const view of views) if (view.key() === id) view.invalidate();
}

async function refetch(id) {
  if (!id) return;
  const pending = inFlight.get(id);
  if (pending) {
    pending.again = true; // the answer in flight may predate what we need: ask once more after it
    return;
  }
  const entry = { again: false };
  inFlight.set(id, entry);
  try {
    do {
      entry.again = false;
      const response = await api.fetchApi(`/loralab/runs/${encodeURIComponent(id)}`, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const fetched = parseLenientJson(await response.text());
      const next = applyFetched(states.get(id) ?? null, fetched);
      if (next) {
        states.set(id, next);
        updated(id);
      }
    } while (entry.again);
  } catch (error) {
    console.warn(`[LoRA Lab] could not fetch the run history of node ${id}:`, error);
  } finally {
    inFlight.delete(id);
  }
}

function onProgress({ detail }) {
  if (!detail || detail.node === undefined) return;
  const id = String(detail.node);
  const { state, refetch: needHistory } = applyEvent(states.get(id) ?? null, detail, performance.now() / 1000);
  if (!state) return;
  states.set(id, state);
  updated(id);
  if (needHistory) refetch(id);
}

// --- the chart widget --------------------------------------------------------------------------

class ChartView {
  constructor(node) {
    this.node = node;
    this.scheduled = false;
    this.lastDraw = null;
    this.errors = 0;

    const root = document.createElement("div");
    root.className = "loralab-chart";
    root.style.cssText = "display:flex;flex-direction:column;width:100%;height:100%;box-sizing:border-box;" +
      "font:11px sans-serif;color:" + COLORS.text + ";gap:2px;";
    const header = document.createElement("div");
    header.style.cssText = "display:flex;align-items:center;gap:6px;min-height:16px;white-space:nowrap;overflow:hidden;";
    this.summary = document.createElement("span");
    this.summary.className = "loralab-chart-summary";
    this.summary.style.cssText = "flex:1;overflow:hidden;text-overflow:ellipsis;";
    const label = document.createElement("label");
    label.title = "Log-scale loss axis (log10)";
    label.style.cssText = "display:flex;align-items:center;gap:2px;cursor:pointer;user-select:none;";
    this.logBox = document.createElement("input");
    this.logBox.type = "checkbox";
    this.logBox.className = "loralab-chart-log";
    this.logBox.style.cssText = "margin:0;cursor:pointer;";
    this.logBox.checked = !!node.properties?.[LOG_PROPERTY];
    this.logBox.addEventListener("change", () => {
      this.node.properties = this.node.properties || {};
      this.node.properties[LOG_PROPERTY] = this.logBox.checked;
      this.invalidate();
    });
    label.append(this.logBox, document.createTextNode("log"));
    header.append(this.summary, label);
    this.canvas = document.createElement("canvas");
    this.canvas.className = "loralab-chart-canvas";
    this.canvas.style.cssText = "flex:1;min-height:0;width:100%;border-radius:4px;display:block;";
    // samples of each checkpoint, newest first, in a row that scrolls sideways; hidden until a
    // run has samples (the node grows by STRIP_HEIGHT then, see getMinHeight in attachChart)
    this.strip = document.createElement("div");
    this.strip.className = "loralab-samples";
    this.strip.style.cssText = `display:none;flex:none;height:${STRIP_HEIGHT}px;gap:8px;overflow-x:auto;` +
      "overflow-y:hidden;align-items:flex-start;";
    this.sampleKey = "";
    this.thumbs = new Map(); // view query -> <img>, kept while its sample is shown
    root.append(header, this.canvas, this.strip);
    this.element = root;

    if (typeof ResizeObserver !== "undefined") {
      this.resizeObserver = new ResizeObserver(() => this.invalidate());
      this.resizeObserver.observe(this.canvas);
    }
  }

  key() {
    return nodeKey(this.node);
  }

  get state() {
    const id = this.key();
    return id ? states.get(id) ?? null : null;
  }

  get logScale() {
    return this.logBox.checked;
  }

  set logScale(value) {
    this.logBox.checked = !!value;
    this.node.properties = this.node.properties || {};
    this.node.properties[LOG_PROPERTY] = !!value;
    this.invalidate();
  }

  invalidate() {
    if (this.scheduled) return;
    this.scheduled = true;
    const run = () => {
      this.scheduled = false;
      try {
        this.draw();
      } catch (error) {
        this.errors++;
        console.error("[LoRA Lab] loss chart:", error);
      }
    };
    if (typeof requestAnimationFrame === "function" && document.visibilityState !== "hidden") requestAnimationFrame(run);
    else setTimeout(run, 50);
    this.node.setDirtyCanvas?.(true, false);
  }

  dispose() {
    views.delete(this); // the node may come back (undo): onAdded adds it again
  }

  updateSummary(state, stats) {
    let text;
    if (!state) text = "loss chart: no run yet";
    else if (!state.steps.length) text = state.status === "running" ? `waiting for step 1 of ${state.total}…` : `no steps (${state.status})`;
    else {
      const parts = [`last ${formatLoss(stats.last)}`, `min ${formatLoss(stats.min)} @${stats.minStep}`,
                     `${stats.lastStep}/${state.total}`];
      if (state.status === "running") {
        const eta = estimateEta(state.firstSeen, state.lastSeen, state.total);
        if (Number.isFinite(eta)) parts.push(`ETA ${formatEta(eta)}`);
      } else if (state.status === "success") parts.push("done");
      else parts.push(`${state.status} at ${state.endStep ?? stats.lastStep}`);
      text = parts.join(" · ");
    }
    if (this.summary.textContent !== text) this.summary.textContent = text;
  }

  get hasSamples() {
    return this.sampleKey !== "";
  }

  /** Rebuilds the sample strip when the state's samples changed; grows the node to show it. */
  updateSamples(state) {
    const { groups, key } = sampleGroups(state?.samples);
    if (key === this.sampleKey) return;
    const wasShown = this.hasSamples;
    this.sampleKey = key;
    const thumbs = new Map();
    const children = groups.map((group) => {
      const box = document.createElement("div");
      box.className = "loralab-sample-group";
      box.dataset.step = String(group.step);
      box.style.cssText = "flex:none;display:flex;flex-direction:column;gap:1px;";
      const label = document.createElement("span");
      label.className = "loralab-sample-label";
      label.textContent = group.label;
      label.style.cssText = "line-height:13px;color:" + COLORS.sample + ";";
      const row = document.createElement("div");
      row.style.cssText = `display:flex;gap:2px;height:${THUMB_HEIGHT}px;`;
      for (const query of group.images) {
        let img = this.thumbs.get(query) ?? thumbs.get(query);
        if (!img) {
          img = document.createElement("img");
          img.className = "loralab-sample-img";
          img.decoding = "async";
          img.draggable = false;
          img.style.cssText = `height:${THUMB_HEIGHT}px;width:auto;min-width:16px;border-radius:3px;` +
            "background:" + COLORS.background + ";object-fit:contain;";
          img.src = api.apiURL(`/view?${query}`);
        }
        img.title = `${group.label}: ${new URLSearchParams(query).get("filename")}`;
        thumbs.set(query, img);
        row.append(img);
      }
      if (!group.images.length) row.append(document.createTextNode("no images"));
      box.append(label, row);
      return box;
    });
    this.thumbs = thumbs;
    this.strip.replaceChildren(...children);
    this.strip.style.display = children.length ? "flex" : "none";
    if (this.hasSamples !== wasShown) {
      // the widget's minimum height changed: let the node grow (never shrink what the user sized)
      const [, h] = this.node.computeSize();
      if (this.hasSamples && (this.node.size?.[1] ?? 0) < h) this.node.setSize([this.node.size[0], h]);
      this.node.setDirtyCanvas?.(true, true);
    }
  }

  draw() {
    const state = this.state;
    const stats = summarize(state?.steps ?? []);
    this.updateSummary(state, stats);
    this.updateSamples(state);
    const canvas = this.canvas;
    const cssW = canvas.clientWidth;
    const cssH = canvas.clientHeight;
    if (!cssW || !cssH) return;
    const dpr = Math.min(3, window.devicePixelRatio || 1);
    const pxW = Math.round(cssW * dpr);
    const pxH = Math.round(cssH * dpr);
    if (canvas.width !== pxW || canvas.height !== pxH) {
      canvas.width = pxW;
      canvas.height = pxH;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    ctx.fillStyle = COLORS.background;
    ctx.fillRect(0, 0, cssW, cssH);
    ctx.font = "10px sans-serif";
    ctx.textBaseline = "middle";

    const left = 42;
    const right = cssW - 8;
    const top = 18; // below the legend strip
    const bottom = cssH - 16;
    const info = { points: 0, raw: 0, smooth: 0, markers: [], log: false, hidden: 0, width: cssW, height: cssH };
    this.lastDraw = info;
    if (right - left < 10 || bottom - top < 10) return;

    const steps = state?.steps ?? [];
    const xs = steps.map((s) => s.step);
    const ys = steps.map((s) => s.loss);
    const smoothed = smooth(ys);
    const sampleSteps = (state?.samples ?? []).map((s) => s.step);
    const firstStep = Math.max(0, Math.min(xs.length ? xs[0] - 1 : 0, ...sampleSteps));
    const lastStep = Math.max(state?.total ?? 1, xs.length ? xs[xs.length - 1] : 1, 1);
    const xOf = stepScale(firstStep, lastStep, left, right);
    const scale = computeScale(ys, { log: this.logScale });
    const yOf = (v) => bottom - scale.map(v) * (bottom - top);
    info.points = steps.length;
    info.log = scale.log;
    info.hidden = scale.hidden;

    // grid and axes
    ctx.strokeStyle = COLORS.grid;
    ctx.fillStyle = COLORS.axis;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    for (const t of steps.length ? scale.ticks(4) : []) {
      const y = Math.round(yOf(t)) + 0.5;
      if (!(y >= top - 1 && y <= bottom + 1)) continue;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(right, y);
      ctx.stroke();
      ctx.fillText(formatTick(t), left - 4, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of niceTicks(firstStep, lastStep, 5).filter(Number.isInteger)) {
      ctx.fillText(String(t), Math.min(right - 8, Math.max(left + 8, xOf(t))), bottom + 3);
    }
    ctx.strokeStyle = COLORS.axis;
    ctx.beginPath();
    ctx.moveTo(left + 0.5, top);
    ctx.lineTo(left + 0.5, bottom + 0.5);
    ctx.lineTo(right, bottom + 0.5);
    ctx.stroke();

    // markers under the curves: saves (dashed lines), samples (dots on the axis), where a run stopped
    const marks = [
      ...(state?.saves ?? []).map((step) => ({ step, kind: "save" })),
      ...sampleSteps.map((step) => ({ step, kind: "sample" })),
    ];
    const stopped = state && (state.status === "interrupted" || state.status === "error");
    if (stopped) marks.push({ step: state.endStep ?? stats.lastStep ?? 0, kind: "stop" });
    const placed = placeMarkers(marks, xOf, left, right);
    info.markers = placed.map((m) => ({ kind: m.kind, step: m.step, count: m.count }));
    for (const m of placed) {
      const x = Math.round(m.x) + 0.5;
      if (m.kind === "save") {
        ctx.strokeStyle = COLORS.save;
        ctx.setLineDash([3, 3]);
        ctx.beginPath();
        ctx.moveTo(x, top);
        ctx.lineTo(x, bottom);
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = COLORS.save;
        ctx.beginPath();
        ctx.moveTo(x - 4, top);
        ctx.lineTo(x + 4, top);
        ctx.lineTo(x, top + 5);
        ctx.fill();
      } else if (m.kind === "sample") {
        ctx.fillStyle = COLORS.sample;
        ctx.beginPath();
        ctx.arc(x, bottom - 4, 3.5, 0, 2 * Math.PI);
        ctx.fill();
      } else if (m.kind === "stop") {
        ctx.strokeStyle = COLORS.stop[state.status];
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(x, top);
        ctx.lineTo(x, bottom);
        ctx.stroke();
        ctx.lineWidth = 1;
      }
    }

    // raw loss (thin), smoothed (thick); NaN = gap; min/max per pixel column for long runs
    const columns = Math.max(1, Math.round(right - left));
    info.raw = strokeSeries(ctx, downsample(xs, ys, firstStep, lastStep, columns), xOf, yOf, COLORS.raw, 1);
    info.smooth = strokeSeries(ctx, downsample(xs, smoothed, firstStep, lastStep, columns), xOf, yOf, COLORS.smooth, 2);

    // where an interrupted or failed run stopped: the line is under the curves, its label on top
    if (stopped) {
      const m = placed.find((p) => p.kind === "stop");
      if (m) {
        const color = COLORS.stop[state.status];
        const x = Math.round(m.x) + 0.5;
        const label = `${state.status} at ${m.step}`;
        ctx.font = "bold 10px sans-serif";
        ctx.textBaseline = "top";
        const w = ctx.measureText(label).width;
        const tx = x + 4 + w > right ? x - 4 - w : x + 4;
        ctx.fillStyle = COLORS.background;
        ctx.fillRect(tx - 2, top + 8, w + 4, 13);
        ctx.fillStyle = color;
        ctx.textAlign = "left";
        ctx.fillText(label, tx, top + 9);
      }
    }

    // a strip above the plot: notes on the left, the legend on the right
    ctx.font = "10px sans-serif";
    ctx.textBaseline = "middle";
    const ly = 7;
    const notes = [];
    if (scale.logUnavailable) notes.push("no loss > 0: linear axis");
    else if (scale.hidden) notes.push(`${scale.hidden} loss ≤ 0 off the log axis`);
    if (stats.nonFinite) notes.push(`${stats.nonFinite} NaN/inf (gaps)`);
    if (scale.log) notes.unshift("log10");
    ctx.textAlign = "left";
    ctx.fillStyle = COLORS.stop.interrupted;
    ctx.fillText(notes.join(" · "), 4, ly);
    if (steps.length) {
      ctx.textAlign = "right";
      let lx = right;
      for (const [name, color] of [["smoothed", COLORS.smooth], ["raw", COLORS.raw], ["save", COLORS.save],
                                   ["sample", COLORS.sample]]) {
        ctx.fillStyle = COLORS.text;
        ctx.fillText(name, lx, ly);
        lx -= ctx.measureText(name).width + 3;
        ctx.fillStyle = color;
        ctx.fillRect(lx - 8, ly - 1.5, 8, 3);
        lx -= 16;
      }
    } else {
      ctx.textAlign = "center";
      ctx.fillStyle = COLORS.axis;
      ctx.fillText(state ? "waiting for the first step" : "the loss appears here while the node trains",
                   (left + right) / 2, (top + bottom) / 2);
    }
  }
}

function formatTick(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(0);
  return Number(v.toPrecision(3)).toString();
}

/** Strokes [[step, value]] as a polyline broken at NaN; returns how many points were drawn. */
function strokeSeries(ctx, points, xOf, yOf, color, width) {
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = width;
  ctx.lineJoin = "round";
  let drawn = 0;
  let run = [];
  const flush = () => {
    if (run.length === 1) {
      ctx.beginPath();
      ctx.arc(run[0][0], run[0][1], width + 0.5, 0, 2 * Math.PI);
      ctx.fill();
    } else if (run.length > 1) {
      ctx.beginPath();
      ctx.moveTo(run[0][0], run[0][1]);
      for (let i = 1; i < run.length; i++) ctx.lineTo(run[i][0], run[i][1]);
      ctx.stroke();
    }
    drawn += run.length;
    run = [];
  };
  for (const [step, value] of points) {
    const y = yOf(value);
    if (Number.isFinite(y)) run.push([xOf(step), y]);
    else flush();
  }
  flush();
  ctx.lineWidth = 1;
  return drawn;
}

// --- the extension ----------------------------------------------------------------------------

function attachChart(node) {
  if (node.loralabChart) return node.loralabChart;
  const view = new ChartView(node);
  node.loralabChart = view;
  views.add(view);
  node.addDOMWidget("loss_chart", "loralab_loss_chart", view.element, {
    serialize: false,
    getMinHeight: () => CHART_HEIGHT + (view.hasSamples ? STRIP_HEIGHT : 0),
    getMaxHeight: () => CHART_HEIGHT * 3 + (view.hasSamples ? STRIP_HEIGHT : 0),
  });
  const [w, h] = node.computeSize();
  node.setSize([Math.max(w, node.size?.[0] ?? 0, 420), Math.max(h, node.size?.[1] ?? 0)]);
  return view;
}

function chartOnTrainNodes(nodeType) {
  const { onNodeCreated, onAdded, onConfigure, onRemoved } = nodeType.prototype;
  nodeType.prototype.onNodeCreated = function () {
    const result = onNodeCreated?.apply(this, arguments);
    attachChart(this);
    return result;
  };
  nodeType.prototype.onAdded = function () {
    const result = onAdded?.apply(this, arguments);
    const view = attachChart(this);
    views.add(view);
    queueMicrotask(() => {
      refetch(view.key());
      view.invalidate();
    });
    return result;
  };
  nodeType.prototype.onConfigure = function () {
    const result = onConfigure?.apply(this, arguments);
    const view = attachChart(this);
    view.logBox.checked = !!this.properties?.[LOG_PROPERTY];
    refetch(view.key());
    view.invalidate();
    return result;
  };
  nodeType.prototype.onRemoved = function () {
    const result = onRemoved?.apply(this, arguments);
    this.loralabChart?.dispose();
    return result;
  };
}

const extension = {
  name: EXTENSION,
  /** node id -> chart state: read by tests and by anyone debugging a chart */
  states,
  chartState(nodeId) {
    return states.get(String(nodeId)) ?? null;
  },
  setup() {
    api.addEventListener(EVENT, onProgress);
    // events sent while the socket was down are lost: take every chart's run from the server again
    api.addEventListener("reconnected", () => {
      for (const view of views) refetch(view.key());
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === NODE_TYPE) chartOnTrainNodes(nodeType);
  },
};

app.registerExtension(extension);
