// Pure logic of the LoRA Lab loss chart: no DOM, no ComfyUI imports, so `node --test` can load it.
// The browser extension (loss_chart.js) draws with these functions.

/** A loss value as a number: anything that is not a finite number (null, NaN, ±inf, a string) is NaN. */
export function toLoss(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : NaN;
}

/**
 * Bias-corrected exponential moving average (TensorBoard's smoothing, and the server's
 * training/loss_chart.py `smoothed`): non-finite values do not enter the average and come out as
 * NaN (a gap in the curve); the finite positions get the same numbers as the server's.
 */
export function smooth(values, beta = 0.9) {
  const out = new Array(values.length);
  let avg = 0;
  let weight = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (typeof v === "number" && Number.isFinite(v)) {
      avg = beta * avg + (1 - beta) * v;
      weight = beta * weight + (1 - beta);
      out[i] = avg / weight;
    } else {
      out[i] = NaN;
    }
  }
  return out;
}

/**
 * Points for drawing: `xs` ascending, `ys` values (NaN = gap). Buckets of one pixel column
 * (`buckets` columns across [x0, x1]) keep the minimum and the maximum in their original order,
 * plus a NaN point where the bucket held a non-finite value, so spikes and gaps survive while
 * thousands of steps become at most ~3 points per column. Returns [[x, y], ...]; the input
 * arrays are never changed. Fewer points than 2 * buckets are returned as they are.
 */
export function downsample(xs, ys, x0, x1, buckets) {
  const n = Math.min(xs.length, ys.length);
  buckets = Math.max(1, Math.floor(buckets));
  if (n <= 2 * buckets || !(x1 > x0)) {
    const all = new Array(n);
    for (let i = 0; i < n; i++) all[i] = [xs[i], ys[i]];
    return all;
  }
  const out = [];
  const width = (x1 - x0) / buckets;
  let i = 0;
  while (i < n) {
    const b = Math.min(buckets - 1, Math.max(0, Math.floor((xs[i] - x0) / width)));
    let minI = -1;
    let maxI = -1;
    let gapI = -1;
    for (; i < n; i++) {
      const bi = Math.min(buckets - 1, Math.max(0, Math.floor((xs[i] - x0) / width)));
      if (bi !== b) break;
      const y = ys[i];
      if (!Number.isFinite(y)) {
        if (gapI < 0) gapI = i;
        continue;
      }
      if (minI < 0 || y < ys[minI]) minI = i;
      if (maxI < 0 || y > ys[maxI]) maxI = i;
    }
    const keep = [minI, maxI, gapI].filter((k, idx, arr) => k >= 0 && arr.indexOf(k) === idx).sort((a, b2) => a - b2);
    for (const k of keep) out.push([xs[k], k === gapI ? NaN : ys[k]]);
  }
  return out;
}

/** "Nice" tick values (1, 2, 2.5, 5 × 10^k) covering [min, max], about `count` of them. */
export function niceTicks(min, max, count = 4) {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [];
  if (max < min) [min, max] = [max, min];
  if (max === min) return [min];
  const raw = (max - min) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks = [];
  const first = Math.ceil(min / step - 1e-9) * step;
  for (let t = first; t <= max + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

/**
 * The value axis for `values` (NaN and ±inf ignored). Linear, or log10 when `log` is set: values
 * ≤ 0 cannot be placed on a log axis, so they are counted in `hidden` and `map` returns NaN for
 * them (drawn as a gap); when no positive value remains the axis falls back to linear and says so
 * (`log` false, `logUnavailable` true). The range is padded by `pad` (a fraction of its span); a
 * flat series gets a span around its value. `map(v)` gives 0 at the bottom, 1 at the top.
 */
export function computeScale(values, { log = false, pad = 0.05 } = {}) {
  let min = Infinity;
  let max = -Infinity;
  let finite = 0;
  let hidden = 0;
  for (const v of values) {
    if (typeof v !== "number" || !Number.isFinite(v)) continue;
    finite++;
    if (log && v <= 0) {
      hidden++;
      continue;
    }
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const logUnavailable = log && finite > 0 && finite === hidden;
  if (logUnavailable) return computeScale(values, { log: false, pad })._note(true, hidden);
  if (finite === 0) {
    min = log ? 0.1 : 0;
    max = 1;
  }
  const fwd = log ? Math.log10 : (v) => v;
  const inv = log ? (v) => 10 ** v : (v) => v;
  let lo = fwd(min);
  let hi = fwd(max);
  if (hi === lo) {
    const half = log ? 0.5 : Math.abs(lo) * 0.1 || 0.5;
    lo -= half;
    hi += half;
  } else {
    const p = (hi - lo) * pad;
    lo -= p;
    hi += p;
  }
  const span = hi - lo;
  const scale = {
    log,
    min: inv(lo),
    max: inv(hi),
    hidden: log ? hidden : 0,
    logUnavailable: false,
    map(v) {
      if (typeof v !== "number" || !Number.isFinite(v) || (log && v <= 0)) return NaN;
      return (fwd(v) - lo) / span;
    },
    ticks(count = 4) {
      if (!log) return niceTicks(scale.min, scale.max, count);
      const decades = [];
      for (let e = Math.ceil(lo - 1e-9); e <= hi + 1e-9; e++) decades.push(10 ** e);
      if (decades.length >= 2) return decades;
      // less than a decade shown: nice ticks inside it
      return niceTicks(scale.min, scale.max, count).filter((t) => t > 0);
    },
    _note(unavailable, hiddenCount) {
      scale.logUnavailable = unavailable;
      scale.hidden = hiddenCount;
      return scale;
    },
  };
  return scale;
}

/** Seconds as the progress text writes them: "M:SS", "H:MM:SS" from an hour on; "–" when unknown. */
export function formatEta(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/**
 * Seconds left, from the steps seen so far: `first` and `last` are {step, t} (t in seconds) of
 * the first and latest step this page saw. NaN when there is no rate yet.
 */
export function estimateEta(first, last, total) {
  if (!first || !last || !(last.step > first.step) || !(last.t > first.t)) return NaN;
  const perStep = (last.t - first.t) / (last.step - first.step);
  return Math.max(0, total - last.step) * perStep;
}

/** A loss for the header text: 4 significant digits, "–" when not finite. */
export function formatLoss(value) {
  return Number.isFinite(value) ? Number(value.toPrecision(4)).toString() : "–";
}

/**
 * Marker placement: `marks` [{step, kind}] (kind "save", "sample", "stop", ...), `xOf(step)` the
 * pixel column of a step, [left, right] the drawable range. Markers outside are dropped; markers
 * of the same kind closer than `minGap` pixels merge into one (its `count` and `steps` say which).
 * Returns [{kind, step, x, count, steps}] sorted by x, then kind.
 */
export function placeMarkers(marks, xOf, left, right, minGap = 4) {
  const byKind = new Map();
  for (const mark of marks) {
    if (!mark || !Number.isFinite(mark.step)) continue;
    const x = xOf(mark.step);
    if (!Number.isFinite(x) || x < left - 0.5 || x > right + 0.5) continue;
    if (!byKind.has(mark.kind)) byKind.set(mark.kind, []);
    byKind.get(mark.kind).push({ kind: mark.kind, step: mark.step, x: Math.min(right, Math.max(left, x)) });
  }
  const out = [];
  for (const list of byKind.values()) {
    list.sort((a, b) => a.x - b.x || a.step - b.step);
    let current = null;
    for (const m of list) {
      if (current && m.x - current.x < minGap) {
        if (!current.steps.includes(m.step)) {
          current.count++;
          current.steps.push(m.step);
        }
        continue;
      }
      current = { kind: m.kind, step: m.step, x: m.x, count: 1, steps: [m.step] };
      out.push(current);
    }
  }
  return out.sort((a, b) => a.x - b.x || (a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : 0));
}

/** Linear map of a step to a pixel column over [left, right] for the step range [first, last]. */
export function stepScale(first, last, left, right) {
  const span = last > first ? last - first : 1;
  return (step) => left + ((step - first) / span) * (right - left);
}

/**
 * Step entries merged by step number (a later entry for a step replaces an earlier one), sorted:
 * joins a re-fetched history with the events that arrived while it was in flight.
 */
export function mergeSteps(...lists) {
  const byStep = new Map();
  for (const list of lists) {
    for (const entry of list || []) {
      if (entry && Number.isFinite(entry.step)) byStep.set(entry.step, entry);
    }
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

/** Sorted unique step numbers. */
export function mergeStepNumbers(...lists) {
  const set = new Set();
  for (const list of lists) for (const s of list || []) if (Number.isFinite(s)) set.add(s);
  return [...set].sort((a, b) => a - b);
}

/** {last, lastStep, min, minStep, count, nonFinite} of step entries ({step, loss}). */
export function summarize(steps) {
  let min = NaN;
  let minStep = NaN;
  let last = NaN;
  let lastStep = NaN;
  let nonFinite = 0;
  for (const entry of steps) {
    const loss = toLoss(entry.loss);
    lastStep = entry.step;
    if (!Number.isFinite(loss)) {
      nonFinite++;
      continue;
    }
    last = loss;
    if (!(loss >= min)) {
      min = loss;
      minStep = entry.step;
    }
  }
  return { last, lastStep, min, minStep, count: steps.length, nonFinite };
}

/**
 * The chart state of one node after one `loralab.progress` event (or a fetched run): a pure
 * reducer, so the browser code and the tests share it. `state` may be null. Returns
 * {state, refetch}: refetch is true when the event belongs to a run this state has not seen
 * from its start (the page was loaded mid-run, or a second tab): the history must be fetched.
 */
export function applyEvent(state, event, now = 0) {
  if (!event || typeof event !== "object") return { state, refetch: false };
  // Events arrive in order, so an event of another run means a new run (also after a server
  // restart, which numbers runs from 1 again).
  const run = event.run;
  let refetch = false;
  if (!state || state.run !== run) {
    state = newRunState(event);
    refetch = event.type !== "start";
  }
  state.total = Number.isFinite(event.total) ? event.total : state.total;
  switch (event.type) {
    case "start":
      state.status = "running";
      break;
    case "step": {
      const entry = { step: event.step, epoch: event.epoch, loss: toLoss(event.loss), lr: event.lr, sigma: event.sigma };
      const steps = state.steps;
      if (steps.length && steps[steps.length - 1].step >= entry.step) state.steps = mergeSteps(steps, [entry]);
      else steps.push(entry);
      if (event.saved && !state.saves.includes(event.step)) state.saves.push(event.step);
      if (typeof event.text === "string") state.text = event.text;
      if (!state.firstSeen) state.firstSeen = { step: event.step, t: now };
      state.lastSeen = { step: event.step, t: now };
      break;
    }
    case "samples":
      if (!state.samples.some((s) => s.step === event.step)) state.samples.push({ step: event.step, images: event.images || [] });
      break;
    case "end":
      state.status = event.status || "success";
      state.endStep = event.step;
      break;
    default:
      break;
  }
  return { state, refetch };
}

function newRunState(event) {
  return { run: event.run, node: String(event.node), total: event.total, steps: [], saves: [], samples: [],
           status: "running", endStep: undefined, text: "", firstSeen: null, lastSeen: null };
}

/**
 * A run fetched from GET /loralab/runs/{node} joined with the state the events built meanwhile.
 * The fetched run wins when it is newer; the same run is merged step by step.
 */
export function applyFetched(state, fetched) {
  if (!fetched || typeof fetched !== "object" || !Number.isFinite(fetched.run)) return state;
  if (state && state.run > fetched.run) return state;
  const steps = (fetched.steps || []).map((s) => ({ ...s, loss: toLoss(s.loss) }));
  if (!state || state.run !== fetched.run) {
    state = newRunState(fetched);
    state.steps = mergeSteps(steps);
  } else {
    state.steps = mergeSteps(steps, state.steps);
  }
  state.total = fetched.total ?? state.total;
  state.saves = mergeStepNumbers(fetched.saves, state.saves);
  const samples = new Map();
  for (const s of [...(fetched.samples || []), ...state.samples]) if (s && !samples.has(s.step)) samples.set(s.step, s);
  state.samples = [...samples.values()].sort((a, b) => a.step - b.step);
  if (fetched.status && fetched.status !== "running") {
    state.status = fetched.status;
    if (state.endStep === undefined) state.endStep = state.steps.length ? state.steps[state.steps.length - 1].step : 0;
  }
  return state;
}

/**
 * JSON as Python's json.dumps may write it: bare NaN, Infinity and -Infinity (outside strings)
 * become null. Plain JSON is parsed as it is.
 */
export function parseLenientJson(text) {
  try {
    return JSON.parse(text);
  } catch (error) {
    let out = "";
    let inString = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (inString) {
        out += c;
        if (c === "\\") out += text[++i] ?? "";
        else if (c === '"') inString = false;
        continue;
      }
      if (c === '"') {
        inString = true;
        out += c;
        continue;
      }
      const rest = text.slice(i, i + 9);
      const token = rest.startsWith("NaN") ? "NaN" : rest.startsWith("-Infinity") ? "-Infinity"
        : rest.startsWith("Infinity") ? "Infinity" : null;
      if (token) {
        out += "null";
        i += token.length - 1;
        continue;
      }
      out += c;
    }
    return JSON.parse(out);
  }
}

/**
 * The query of ComfyUI's GET /view for one image entry ({filename, subfolder, type}), as the
 * frontend builds it (URLSearchParams of the entry): "filename=…&subfolder=…&type=temp". A missing
 * subfolder is "", a missing type "temp" (where the trainer's samples go). null without a filename.
 */
export function viewQuery(image) {
  if (!image || typeof image.filename !== "string" || !image.filename) return null;
  return new URLSearchParams({
    filename: image.filename,
    subfolder: typeof image.subfolder === "string" ? image.subfolder : "",
    type: typeof image.type === "string" && image.type ? image.type : "temp",
  }).toString();
}

/**
 * The sample strip's groups: one per checkpoint step (the first entry of a step wins, as in
 * applyEvent), newest first, each {step, label: "step N", images: [query, ...]} with the view
 * queries of its images (entries without a filename are left out). `key` changes exactly when
 * what the strip shows changes, so the page rebuilds it only then.
 */
export function sampleGroups(samples) {
  const byStep = new Map();
  for (const s of samples || []) {
    if (!s || !Number.isFinite(s.step) || byStep.has(s.step)) continue;
    const images = (Array.isArray(s.images) ? s.images : []).map(viewQuery).filter((q) => q !== null);
    byStep.set(s.step, { step: s.step, label: `step ${s.step}`, images });
  }
  const groups = [...byStep.values()].sort((a, b) => b.step - a.step);
  const key = groups.map((g) => `${g.step}:${g.images.join(",")}`).join("|");
  return { groups, key };
}
