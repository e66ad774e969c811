// Unit tests of the loss chart's pure logic: `node --test tests/js/` (no npm packages).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  applyEvent, applyFetched, computeScale, downsample, estimateEta, formatEta, formatLoss, mergeSteps,
  niceTicks, parseLenientJson, placeMarkers, sampleGroups, smooth, stepScale, summarize, toLoss, viewQuery,
} from "../../web/loss_chart_core.js";

const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} != ${b}`);

describe("smooth", () => {
  test("bias-corrected EMA: the first value is itself, a constant stays constant", () => {
    const out = smooth([2, 2, 2, 2]);
    out.forEach((v) => close(v, 2));
    close(smooth([5])[0], 5);
  });

  test("matches the server's formula (training/loss_chart.py smoothed, beta 0.9)", () => {
    const values = [1, 0.5, 0.25];
    const expected = [];
    let avg = 0;
    let weight = 0;
    for (const v of values) {
      avg = 0.9 * avg + 0.1 * v;
      weight = 0.9 * weight + 0.1;
      expected.push(avg / weight);
    }
    smooth(values).forEach((v, i) => close(v, expected[i]));
    close(smooth(values)[1], (0.09 * 1 + 0.1 * 0.5) / 0.19);
  });

  test("NaN, ±inf and null become gaps and do not enter the average", () => {
    const out = smooth([1, NaN, Infinity, null, -Infinity, 1]);
    assert.ok(Number.isNaN(out[1]) && Number.isNaN(out[2]) && Number.isNaN(out[3]) && Number.isNaN(out[4]));
    close(out[0], 1);
    close(out[5], 1); // the non-finite values left the average untouched
    assert.deepEqual(smooth([]), []);
    assert.ok(smooth([NaN, NaN]).every(Number.isNaN));
  });

  test("leading gaps then values", () => {
    const out = smooth([NaN, 3, 3]);
    assert.ok(Number.isNaN(out[0]));
    close(out[1], 3);
    close(out[2], 3);
  });
});

describe("computeScale", () => {
  test("linear: padded range, map 0..1 inside it, ticks cover it", () => {
    const s = computeScale([1, 2, 3], { pad: 0 });
    assert.equal(s.log, false);
    close(s.min, 1);
    close(s.max, 3);
    close(s.map(1), 0);
    close(s.map(3), 1);
    close(s.map(2), 0.5);
    const padded = computeScale([1, 3], { pad: 0.1 });
    close(padded.min, 0.8);
    close(padded.max, 3.2);
    const ticks = s.ticks(4);
    assert.ok(ticks.length >= 2 && ticks[0] >= 1 && ticks[ticks.length - 1] <= 3);
  });

  test("flat and empty series get a usable span", () => {
    const flat = computeScale([0.5, 0.5]);
    assert.ok(flat.max > flat.min);
    close(flat.map(0.5), 0.5);
    const zero = computeScale([0, 0]);
    assert.ok(zero.max > zero.min);
    const empty = computeScale([]);
    assert.ok(Number.isFinite(empty.min) && empty.max > empty.min);
    const allNaN = computeScale([NaN, Infinity]);
    assert.ok(Number.isFinite(allNaN.min) && allNaN.max > allNaN.min);
  });

  test("linear ignores NaN and inf", () => {
    const s = computeScale([1, NaN, 2, Infinity, -Infinity], { pad: 0 });
    close(s.min, 1);
    close(s.max, 2);
    assert.ok(Number.isNaN(s.map(NaN)));
    assert.ok(Number.isNaN(s.map(Infinity)));
  });

  test("log10: decades map evenly", () => {
    const s = computeScale([0.01, 0.1, 1], { log: true, pad: 0 });
    assert.equal(s.log, true);
    close(s.map(0.01), 0);
    close(s.map(0.1), 0.5);
    close(s.map(1), 1);
    assert.deepEqual(s.ticks().map((t) => Number(t.toPrecision(6))), [0.01, 0.1, 1]);
  });

  test("log10 with zero and negative values: hidden, mapped to NaN, range from the positive ones", () => {
    const s = computeScale([0, -1, 0.1, 1, NaN], { log: true, pad: 0 });
    assert.equal(s.log, true);
    assert.equal(s.hidden, 2);
    close(s.min, 0.1);
    close(s.max, 1);
    assert.ok(Number.isNaN(s.map(0)));
    assert.ok(Number.isNaN(s.map(-1)));
    assert.ok(s.ticks().every((t) => t > 0 && Number.isFinite(t)));
  });

  test("log10 with no positive value falls back to linear and says so", () => {
    const s = computeScale([0, -2, -1], { log: true, pad: 0 });
    assert.equal(s.log, false);
    assert.equal(s.logUnavailable, true);
    assert.equal(s.hidden, 3);
    close(s.map(-2), 0);
    close(s.map(0), 1);
  });

  test("log10 within less than a decade still has ticks", () => {
    const s = computeScale([0.2, 0.3, 0.5], { log: true });
    const ticks = s.ticks(4);
    assert.ok(ticks.length >= 1);
    assert.ok(ticks.every((t) => t > 0));
  });
});

describe("niceTicks", () => {
  test("steps of 1, 2, 2.5 or 5 times a power of ten", () => {
    assert.deepEqual(niceTicks(0, 20, 4), [0, 5, 10, 15, 20]);
    assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
    assert.deepEqual(niceTicks(3, 3), [3]);
    assert.deepEqual(niceTicks(NaN, 1), []);
  });
});

describe("downsample", () => {
  test("short series come back unchanged", () => {
    assert.deepEqual(downsample([1, 2, 3], [5, NaN, 7], 0, 3, 100), [[1, 5], [2, NaN], [3, 7]]);
  });

  test("10k points: few points, global min and max kept, in order, input untouched, fast", () => {
    const n = 10000;
    const xs = Array.from({ length: n }, (_, i) => i + 1);
    const ys = xs.map((x) => 1 + Math.sin(x / 50) * 0.1 + (x % 97 === 0 ? 0.5 : 0));
    ys[4321] = 5; // a spike
    ys[7777] = -3; // a dip
    const copy = ys.slice();
    const started = performance.now();
    const out = downsample(xs, ys, 0, n, 400);
    const elapsed = performance.now() - started;
    assert.ok(out.length <= 2 * 400, `${out.length} points`);
    assert.ok(out.length >= 400);
    assert.ok(out.some(([x, y]) => x === 4322 && y === 5), "the spike survives");
    assert.ok(out.some(([x, y]) => x === 7778 && y === -3), "the dip survives");
    for (let i = 1; i < out.length; i++) assert.ok(out[i][0] > out[i - 1][0], "x ascending");
    assert.deepEqual(ys, copy, "the stored data is not changed");
    assert.ok(elapsed < 200, `took ${elapsed} ms`);
  });

  test("every bucket keeps its own min and max", () => {
    const xs = Array.from({ length: 1000 }, (_, i) => i);
    const ys = xs.map((x) => (x % 10) * (x % 2 ? 1 : -1));
    const out = downsample(xs, ys, 0, 1000, 10);
    assert.ok(out.length <= 20);
    for (let b = 0; b < 10; b++) {
      const inBucket = out.filter(([x]) => x >= b * 100 && x < (b + 1) * 100).map(([, y]) => y);
      const expected = ys.slice(b * 100, (b + 1) * 100);
      assert.equal(Math.min(...inBucket), Math.min(...expected));
      assert.equal(Math.max(...inBucket), Math.max(...expected));
    }
  });

  test("a non-finite value in a bucket leaves a gap point", () => {
    const xs = Array.from({ length: 100 }, (_, i) => i);
    const ys = xs.map(() => 1);
    ys[55] = NaN;
    ys[56] = Infinity;
    const out = downsample(xs, ys, 0, 100, 10);
    const gaps = out.filter(([, y]) => Number.isNaN(y));
    assert.equal(gaps.length, 1);
    assert.equal(gaps[0][0], 55);
  });
});

describe("ETA", () => {
  test("formatted like the progress text", () => {
    assert.equal(formatEta(0), "0:00");
    assert.equal(formatEta(5), "0:05");
    assert.equal(formatEta(65.4), "1:05");
    assert.equal(formatEta(3599), "59:59");
    assert.equal(formatEta(3600), "1:00:00");
    assert.equal(formatEta(3725), "1:02:05");
    assert.equal(formatEta(100 * 3600), "100:00:00");
  });

  test("unknown ETA", () => {
    assert.equal(formatEta(NaN), "–");
    assert.equal(formatEta(Infinity), "–");
    assert.equal(formatEta(-1), "–");
    assert.equal(formatEta(undefined), "–");
  });

  test("estimated from the steps seen", () => {
    close(estimateEta({ step: 10, t: 100 }, { step: 20, t: 110 }, 50), 30);
    assert.ok(Number.isNaN(estimateEta({ step: 10, t: 100 }, { step: 10, t: 100 }, 50)));
    assert.ok(Number.isNaN(estimateEta(null, { step: 10, t: 1 }, 50)));
    assert.equal(estimateEta({ step: 1, t: 0 }, { step: 60, t: 5 }, 50), 0);
  });
});

describe("markers", () => {
  const xOf = stepScale(0, 100, 0, 100); // one pixel per step

  test("placed at their step, sorted, out-of-range dropped", () => {
    const out = placeMarkers([{ step: 50, kind: "save" }, { step: 10, kind: "sample" }, { step: 200, kind: "save" },
                              { step: -5, kind: "save" }, { step: NaN, kind: "save" }], xOf, 0, 100);
    assert.deepEqual(out.map((m) => [m.kind, m.step, m.x]), [["sample", 10, 10], ["save", 50, 50]]);
  });

  test("close markers of one kind merge, other kinds stay apart", () => {
    const out = placeMarkers([{ step: 20, kind: "save" }, { step: 21, kind: "save" }, { step: 22, kind: "save" },
                              { step: 30, kind: "save" }, { step: 21, kind: "sample" }], xOf, 0, 100, 4);
    const saves = out.filter((m) => m.kind === "save");
    assert.deepEqual(saves.map((m) => [m.step, m.count, m.steps]), [[20, 3, [20, 21, 22]], [30, 1, [30]]]);
    assert.equal(out.filter((m) => m.kind === "sample").length, 1);
  });

  test("the step scale puts the first and last step at the edges", () => {
    const s = stepScale(0, 20, 40, 440);
    close(s(0), 40);
    close(s(20), 440);
    close(s(10), 240);
    close(stepScale(5, 5, 0, 10)(5), 0); // a one-step range does not divide by zero
  });
});

describe("summary and parsing", () => {
  test("last and min skip non-finite losses", () => {
    const stats = summarize([{ step: 1, loss: 0.5 }, { step: 2, loss: 0.2 }, { step: 3, loss: NaN }, { step: 4, loss: 0.3 }]);
    assert.deepEqual(stats, { last: 0.3, lastStep: 4, min: 0.2, minStep: 2, count: 4, nonFinite: 1 });
    const empty = summarize([]);
    assert.ok(Number.isNaN(empty.last) && Number.isNaN(empty.min));
    assert.equal(formatLoss(0.123456), "0.1235");
    assert.equal(formatLoss(NaN), "–");
    assert.ok(Number.isNaN(toLoss(null)) && Number.isNaN(toLoss("1")) && toLoss(0) === 0);
  });

  test("JSON with bare NaN/Infinity (Python's json.dumps) parses; strings are left alone", () => {
    const parsed = parseLenientJson('{"a": NaN, "b": [Infinity, -Infinity, 1], "f": "NaN_Infinity\\"x.png"}');
    assert.deepEqual(parsed, { a: null, b: [null, null, 1], f: 'NaN_Infinity"x.png' });
    assert.deepEqual(parseLenientJson("null"), null);
  });
});

describe("chart state from events", () => {
  const step = (run, n, extra = {}) => ({ type: "step", run, node: "5", total: 3, step: n, epoch: 0, loss: 1 / n,
                                          lr: 1e-3, sigma: 0.5, saved: false, text: `step ${n}`, ...extra });

  test("a run seen from its start needs no fetch; steps, saves, samples and the end are kept", () => {
    let { state, refetch } = applyEvent(null, { type: "start", run: 1, node: "5", total: 3, step: 0 });
    assert.equal(refetch, false);
    ({ state } = applyEvent(state, { type: "samples", run: 1, node: "5", total: 3, step: 0, images: [{ filename: "a.png" }] }));
    for (const n of [1, 2, 3]) ({ state, refetch } = applyEvent(state, step(1, n, { saved: n === 2 }), n));
    assert.equal(refetch, false);
    ({ state } = applyEvent(state, { type: "end", run: 1, node: "5", total: 3, step: 3, status: "success" }));
    assert.deepEqual(state.steps.map((s) => s.step), [1, 2, 3]);
    assert.deepEqual(state.saves, [2]);
    assert.deepEqual(state.samples.map((s) => s.step), [0]);
    assert.equal(state.status, "success");
    assert.equal(state.text, "step 3");
  });

  test("events of a run not seen from its start ask for the history; a new run replaces the old", () => {
    let { state, refetch } = applyEvent(null, step(7, 2));
    assert.equal(refetch, true);
    ({ state, refetch } = applyEvent(state, step(7, 3)));
    assert.equal(refetch, false);
    ({ state, refetch } = applyEvent(state, { type: "start", run: 8, node: "5", total: 3 }));
    assert.equal(refetch, false);
    assert.equal(state.run, 8);
    assert.equal(state.steps.length, 0);
  });

  test("a NaN loss in an event is stored as NaN, not dropped", () => {
    const { state } = applyEvent(null, step(1, 1, { loss: null }));
    assert.equal(state.steps.length, 1);
    assert.ok(Number.isNaN(state.steps[0].loss));
  });

  test("a fetched history merges with the events that arrived meanwhile", () => {
    let { state } = applyEvent(null, step(4, 3));
    state = applyFetched(state, { run: 4, node: "5", total: 3, steps: [step(4, 1), step(4, 2)], saves: [2],
                                  samples: [{ step: 0, images: [] }], status: "running" });
    assert.deepEqual(state.steps.map((s) => s.step), [1, 2, 3]);
    assert.deepEqual(state.saves, [2]);
    assert.equal(state.status, "running");
    // an older run fetched late does not replace a newer one
    assert.equal(applyFetched(state, { run: 3, steps: [] }).run, 4);
    // null (no run for that node) keeps the state
    assert.equal(applyFetched(state, null), state);
    assert.equal(applyFetched(null, null), null);
  });

  test("a fetched run that ended says where it stopped", () => {
    const state = applyFetched(null, { run: 2, node: "5", total: 10, steps: [step(2, 1), step(2, 2)], saves: [],
                                       samples: [], status: "interrupted" });
    assert.equal(state.status, "interrupted");
    assert.equal(state.endStep, 2);
  });

  test("a repeated step replaces the earlier entry", () => {
    assert.deepEqual(mergeSteps([{ step: 1, loss: 1 }, { step: 2, loss: 2 }], [{ step: 2, loss: 3 }]),
                     [{ step: 1, loss: 1 }, { step: 2, loss: 3 }]);
  });
});

describe("sample strip", () => {
  test("viewQuery builds ComfyUI's /view query from an image entry", () => {
    assert.equal(viewQuery({ filename: "loralab/x_step000010_00001_.png", subfolder: "", type: "temp" }),
                 "filename=loralab%2Fx_step000010_00001_.png&subfolder=&type=temp");
    assert.equal(viewQuery({ filename: "a b&c.png", subfolder: "loralab" }), "filename=a+b%26c.png&subfolder=loralab&type=temp");
    assert.equal(viewQuery({ filename: "o.png", subfolder: "s", type: "output" }), "filename=o.png&subfolder=s&type=output");
    assert.equal(viewQuery({ subfolder: "s" }), null);
    assert.equal(viewQuery(null), null);
    const params = new URLSearchParams(viewQuery({ filename: "é/ü?.png", subfolder: "x/y" }));
    assert.equal(params.get("filename"), "é/ü?.png");
    assert.equal(params.get("subfolder"), "x/y");
  });

  test("one group per step, newest first, labelled with the step", () => {
    const img = (f) => ({ filename: f, subfolder: "", type: "temp" });
    const { groups, key } = sampleGroups([
      { step: 0, images: [img("a.png"), img("b.png")] },
      { step: 20, images: [img("e.png")] },
      { step: 10, images: [img("c.png"), { subfolder: "" }] },
      { step: 10, images: [img("late.png")] }, // a repeated step: the first entry stays
      { step: NaN, images: [img("x.png")] },
      null,
    ]);
    assert.deepEqual(groups.map((g) => g.step), [20, 10, 0]);
    assert.deepEqual(groups.map((g) => g.label), ["step 20", "step 10", "step 0"]);
    assert.deepEqual(groups.map((g) => g.images.length), [1, 1, 2]);
    assert.equal(groups[1].images[0], "filename=c.png&subfolder=&type=temp");
    assert.equal(key, sampleGroups([{ step: 10, images: [img("c.png")] }, { step: 0, images: [img("a.png"), img("b.png")] },
                                     { step: 20, images: [img("e.png")] }]).key);
    assert.notEqual(key, sampleGroups([{ step: 0, images: [img("a.png")] }]).key);
    assert.deepEqual(sampleGroups(undefined), { groups: [], key: "" });
    assert.deepEqual(sampleGroups([{ step: 3 }]).groups, [{ step: 3, label: "step 3", images: [] }]);
  });
});
