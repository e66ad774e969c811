"""The canvas in a real browser: ComfyUI's own frontend, served by a real ComfyUI with only this
pack, in headless Debian Chromium driven by Playwright (offline: no browser download). A graph is
built and queued through `window.app`; the assertions read the page: the loss chart got every
step, the progress text and the sample preview reached the node, the sample strip shows every
checkpoint's samples labelled with their step, a reload re-fetches the history and the samples,
two Train nodes keep separate charts, and an empty or NaN-laden chart draws without errors.

Screenshots go to test-artifacts/ (git-ignored). Skipped, with the reason, when Chromium or the
`playwright` Python package is missing (.ci/run installs both where apt-get is available)."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from labtest import PACK_ROOT

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None


def _chromium() -> str | None:
    for candidate in (os.environ.get("LORALAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="the Python package `playwright` is not installed "
                                                       "(pip install -r requirements-dev.txt)"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (/usr/bin/chromium, $LORALAB_CHROMIUM): "
                                                "apt-get install -y chromium"),
]

ARTIFACTS = PACK_ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
# Every page load logs one of these from a settings handler, with no custom node loaded at all:
# frontend 1.27.10 (WEB.md), and 1.49.6 / 1.58.1 (checked against a ComfyUI 0.33 without packs).
KNOWN_CONSOLE_ERRORS = ("Cannot read properties of undefined (reading 'id')",
                        "ComfyApp graph accessed before initialization")
# Loads the frontend tries on every start that fail on a fresh, offline server; they are logged as
# console errors ("Failed to load resource") too. Requests off the test server are aborted.
OPTIONAL_RESOURCES = ("/api/userdata", "/user.css", "/favicon.ico")
APP_READY = "() => !!(window.app && window.app.graph && window.app.extensionManager)"

# Page-side helpers, installed once per page load.
HELPERS = r"""
() => {
  const app = window.app;
  const ext = () => app.extensions.find((e) => e.name === "LoRALab.LossChart");
  const widget = (node, name) => node.widgets.find((w) => w.name === name);
  const set = (node, values) => {
    for (const [name, value] of Object.entries(values)) {
      const w = widget(node, name);
      if (!w) throw new Error(`${node.type} has no widget ${name}`);
      w.value = value;
    }
  };
  const add = (type, pos, values = {}, size = null) => {
    const node = LiteGraph.createNode(type);
    if (!node) throw new Error(`unknown node type ${type}`);
    node.pos = pos;
    app.graph.add(node);
    set(node, values);
    if (size) node.setSize(size);
    return node;
  };
  const chart = (id) => {
    const node = app.graph.getNodeById(id);
    const view = node && node.loralabChart;
    const state = ext().chartState(id);
    const text = node && widget(node, "$$node-text-preview");
    return {
      hasView: !!view,
      steps: state ? state.steps.map((s) => s.step) : null,
      losses: state ? state.steps.map((s) => s.loss) : null,
      run: state ? state.run : null,
      status: state ? state.status : null,
      saves: state ? state.saves : null,
      samples: state ? state.samples.map((s) => s.step) : null,
      summary: view ? view.summary.textContent : null,
      lastDraw: view ? view.lastDraw : null,
      drawErrors: view ? view.errors : null,
      progressText: text ? String(text.value) : null,
      imgs: node && node.imgs ? node.imgs.length : 0,
      outputImages: (app.nodeOutputs?.[String(id)]?.images ?? []).length,
      // the sample strip under the chart: one group per checkpoint, newest first
      strip: view ? [...view.strip.querySelectorAll(".loralab-sample-group")].map((g) => ({
        label: g.querySelector(".loralab-sample-label").textContent,
        images: [...g.querySelectorAll("img")].map((img) => ({ src: img.getAttribute("src"), complete: img.complete,
                                                               width: img.naturalWidth, shown: img.offsetHeight })),
      })) : null,
      stripShown: view ? view.strip.offsetHeight > 0 : null,
    };
  };
  // Puts a node at the top left of the canvas at scale 1, for a screenshot; returns its box on
  // the page (title bar included).
  const frame = (id, margin = 12) => {
    const node = app.graph.getNodeById(id);
    const ds = app.canvas.ds;
    ds.scale = 1;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const rect = app.canvas.canvas.getBoundingClientRect();
    ds.offset = [-node.pos[0] + 70, -node.pos[1] + title + 60];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    return { x: rect.left + 70 - margin, y: rect.top + 60 - margin,
             width: node.size[0] + 2 * margin, height: node.size[1] + title + 2 * margin };
  };
  // Columns of nodes left to right, each column stacked top down, without overlaps.
  const arrange = (columns, gap = 40) => {
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    let x = 20;
    for (const column of columns) {
      let y = 40;
      for (const node of column) {
        node.pos = [x, y];
        y += node.size[1] + title + gap;
      }
      x += Math.max(...column.map((n) => n.size[0])) + gap;
    }
  };
  window.__lab = { ext, widget, set, add, chart, frame, arrange };
}
"""


def _training_graph(page, name: str, steps: int = 20) -> dict:
    """Demo Model (SD1.5) -> Dataset From Images <- EmptyImage; Samples (2 steps, 64 px, every 10
    steps and at the start) and Save (every 5 steps) -> Train. Returns the node ids."""
    return page.evaluate("""([name, steps]) => {
      const { add, arrange } = window.__lab;
      app.graph.clear();
      const model = add("LoRALabDemoModel", [20, 40], { family: "SD1.5", weight_dtype: "fp32", seed: 0 });
      const image = add("EmptyImage", [20, 260], { width: 64, height: 64, batch_size: 1, color: 0x8040C0 });
      const data = add("LoRALabDatasetFromImages", [20, 470], { captions: "a photo", trigger: "sks", repeats: 1 });
      const samples = add("LoRALabSamples", [330, 40], { steps: 2, width: 64, height: 64, every_n_steps: 10,
                                                          sample_at_start: true, prompts: "{trigger}" });
      const save = add("LoRALabSave", [330, 520], { every_n_steps: 5, precision: "fp32" });
      const train = add("LoRALabTrain", [660, 40], { steps, learning_rate: 1e-3, seed: 0, output_name: name });
      image.connect(0, data, "images");
      model.connect(0, train, "model");
      model.connect(1, train, "clip");
      model.connect(2, train, "vae");
      data.connect(0, train, "dataset");
      samples.connect(0, train, "samples");
      save.connect(0, train, "save");
      train.setSize([480, Math.max(train.size[1], 560)]);
      arrange([[model, image, data], [samples, save], [train]]);
      app.canvas.setDirty(true, true);
      return { model: model.id, train: train.id };
    }""", [name, steps])


def _two_train_graph(page, name: str) -> dict:
    """Two Train nodes; the second trains on the first one's output MODEL, so they run one after
    the other in one prompt."""
    return page.evaluate("""(name) => {
      const { add, arrange } = window.__lab;
      app.graph.clear();
      const model = add("LoRALabDemoModel", [20, 40], { family: "SD1.5", weight_dtype: "fp32", seed: 0 });
      const image = add("EmptyImage", [20, 260], { width: 64, height: 64, batch_size: 1, color: 0x4080C0 });
      const data = add("LoRALabDatasetFromImages", [20, 470], { captions: "a photo", trigger: "sks", repeats: 1 });
      const first = add("LoRALabTrain", [340, 40], { steps: 6, learning_rate: 1e-3, seed: 0, output_name: name + "_a" });
      const second = add("LoRALabTrain", [800, 40], { steps: 4, learning_rate: 1e-3, seed: 1, output_name: name + "_b" });
      image.connect(0, data, "images");
      model.connect(0, first, "model");
      model.connect(1, first, "clip");
      model.connect(2, first, "vae");
      data.connect(0, first, "dataset");
      first.connect(0, second, "model");
      model.connect(1, second, "clip");
      model.connect(2, second, "vae");
      data.connect(0, second, "dataset");
      arrange([[model, image, data], [first], [second]]);
      app.canvas.setDirty(true, true);
      return { first: first.id, second: second.id };
    }""", name)


class PageErrors:
    """Console errors and uncaught page errors, less the one known frontend error."""

    def __init__(self, page, origin: str):
        self.origin = origin
        self.errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self._console(msg))
        page.on("pageerror", self._pageerror)

    def _pageerror(self, error):
        stack = error.stack or ""
        if any(known in str(error) for known in KNOWN_CONSOLE_ERRORS) and "loss_chart" not in stack:
            return
        self.errors.append(f"pageerror: {error}\n{stack}")

    def _console(self, msg):
        url = msg.location.get("url", "") if msg.location else ""
        if msg.text.startswith("Failed to load resource"):
            local = url.startswith(self.origin)
            if not local or any(url[len(self.origin):].startswith(p) for p in OPTIONAL_RESOURCES):
                return
        if not any(known in msg.text for known in KNOWN_CONSOLE_ERRORS):
            self.errors.append(f"console: {msg.text} ({url})")

    def check(self):
        assert not self.errors, "errors in the page:\n" + "\n".join(self.errors)


@pytest.fixture(scope="module")
def browser():
    started = time.monotonic()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        print(f"\nbrowser up in {time.monotonic() - started:.1f} s")
        yield chromium
        chromium.close()


def _frontends() -> list[tuple[str, str | None]]:
    """The frontend ComfyUI pins, plus any listed in $LORALAB_FRONTENDS as `version=static folder`
    entries (os.pathsep-separated; .ci/run adds the newest frontend package on the registry)."""
    extra = [entry.split("=", 1) for entry in os.environ.get("LORALAB_FRONTENDS", "").split(os.pathsep) if entry]
    return [("pinned", None)] + [(version, root) for version, root in extra]


@pytest.fixture(scope="module", params=_frontends(), ids=lambda f: f"frontend-{f[0]}")
def canvas_server(request, server, comfy_dir, tmp_path_factory):
    """The session's server for the pinned frontend; a server of its own for another frontend."""
    version, root = request.param
    if root is None:
        yield server
        return
    from labtest.server import ComfyServer

    other = ComfyServer(comfy_dir, tmp_path_factory.mktemp(f"comfyui-frontend-{version}"),
                        extra_args=("--front-end-root", root)).start()
    other.frontend = version
    yield other
    other.stop()


@pytest.fixture(scope="module")
def shared_page(browser, canvas_server):
    server = canvas_server
    """One page for the module (each frontend load costs several seconds); every test starts
    from an empty graph and its own error list."""
    server.post("/api/settings", {"Comfy.TutorialCompleted": True})
    context = browser.new_context(service_workers="block", viewport={"width": 1600, "height": 1000})
    # offline: nothing but the test server (the frontend asks a release server for news)
    context.route(lambda url: not url.startswith(server.url), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.errors = PageErrors(page, server.url)
    page.frontend = getattr(server, "frontend", None)
    open_app(page, server.url)
    yield page
    context.close()


@pytest.fixture
def page(shared_page):
    shared_page.errors.errors.clear()
    shared_page.evaluate("() => { app.graph.clear(); app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0]; }")
    yield shared_page


def open_app(page, url: str | None = None):
    started = time.monotonic()
    if url is not None:
        page.goto(url)
    page.wait_for_function(APP_READY, timeout=60_000)
    page.wait_for_function("() => window.app.extensions.some((e) => e.name === 'LoRALab.LossChart')")
    page.evaluate(HELPERS)
    print(f"app ready in {time.monotonic() - started:.1f} s")


def chart(page, node_id) -> dict:
    return page.evaluate("(id) => window.__lab.chart(id)", node_id)


def screenshot(page, name: str, node_id=None) -> Path:
    """test-artifacts/<name> (the pinned frontend) or <name>-frontend-<version>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    version = getattr(page, "frontend", None)
    path = ARTIFACTS / (name if version is None else name.replace(".png", f"-frontend-{version}.png"))
    if node_id is None:
        page.screenshot(path=str(path))
    else:
        box = page.evaluate("(id) => window.__lab.frame(id)", node_id)
        page.wait_for_timeout(300)  # the DOM widgets follow the canvas on the next frame
        page.screenshot(path=str(path), clip=box)
    return path


def queue(page):
    page.evaluate("() => app.queuePrompt(0, 1)")


def wait_for_status(page, node_id, status: str = "success", timeout: float = 120_000):
    page.wait_for_function("([id, status]) => window.__lab.ext().chartState(id)?.status === status",
                           arg=[node_id, status], timeout=timeout)


STRIP_LOADED = """(id) => {
  const imgs = [...(app.graph.getNodeById(id)?.loralabChart?.strip.querySelectorAll("img") ?? [])];
  return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
}"""


def check_sample_strip(page, node_id, steps: list[int]) -> list[dict]:
    """The node's sample strip shows one group per sample step, newest first, labelled "step N",
    and every thumbnail loaded from ComfyUI's /view (a temp image)."""
    page.wait_for_function(STRIP_LOADED, arg=node_id, timeout=30_000)
    strip = chart(page, node_id)["strip"]
    assert [g["label"] for g in strip] == [f"step {n}" for n in sorted(steps, reverse=True)], strip
    for group in strip:
        assert group["images"], group
        for img in group["images"]:
            assert img["complete"] and img["width"] > 0 and img["shown"] >= 60, img
            assert "/view?filename=" in img["src"] and img["src"].endswith("&type=temp"), img
    assert chart(page, node_id)["stripShown"]
    return strip


def test_chart_follows_a_run_and_survives_a_reload(page, canvas_server):
    server = canvas_server
    started = time.monotonic()
    name = f"canvas_{uuid.uuid4().hex[:8]}"
    ids = _training_graph(page, name, steps=20)
    train = ids["train"]
    before = chart(page, train)
    assert before["hasView"] and before["steps"] is None and before["drawErrors"] == 0

    queue(page)
    page.wait_for_function("(id) => (window.__lab.ext().chartState(id)?.steps.length ?? 0) >= 8", arg=train,
                           timeout=120_000)
    screenshot(page, "canvas_running.png")
    # past the sample of step 10: bar, text, chart and the live sample preview together
    page.wait_for_function("(id) => (window.__lab.ext().chartState(id)?.steps.length ?? 0) >= 12 "
                           "&& window.__lab.chart(id).imgs > 0", arg=train, timeout=120_000)
    # the samples show in the strip as they are made, before the run ends
    page.wait_for_function(STRIP_LOADED, arg=train, timeout=30_000)
    assert [g["label"] for g in chart(page, train)["strip"]][-2:] == ["step 10", "step 0"]
    running = chart(page, train)
    assert running["progressText"] and "step " in running["progressText"], running["progressText"]
    screenshot(page, "canvas_running_node.png", node_id=train)
    wait_for_status(page, train)
    # the sample images of the finished run reach the node (ui.images of `executed`) and show on it
    page.wait_for_function("(id) => window.__lab.chart(id).outputImages === 3 && window.__lab.chart(id).imgs > 0",
                           arg=train, timeout=30_000)
    page.wait_for_timeout(200)
    done = chart(page, train)
    assert done["steps"] == list(range(1, 21)), done["steps"]
    assert all(isinstance(v, (int, float)) for v in done["losses"])
    assert done["saves"] == [5, 10, 15, 20]
    assert done["samples"] == [0, 10, 20]
    # frontends up to 1.49 keep the last progress text on the node; 1.58 removes it at the end
    assert done["progressText"] is None or "step 20/20" in done["progressText"], done["progressText"]
    assert done["imgs"] > 0 and done["outputImages"] == 3  # one prompt, at steps 0, 10 and 20
    draw = done["lastDraw"]
    assert draw["points"] == 20 and draw["raw"] == 20 and draw["smooth"] == 20, draw
    assert {m["kind"] for m in draw["markers"]} == {"save", "sample"}
    assert done["summary"].startswith("last ") and "20/20" in done["summary"] and "done" in done["summary"]
    assert done["drawErrors"] == 0
    strip = check_sample_strip(page, train, [0, 10, 20])
    server_run = server.get(f"/loralab/runs/{train}")
    assert server_run["run"] == done["run"] and len(server_run["steps"]) == 20
    screenshot(page, "canvas_done.png")
    screenshot(page, "canvas_train_node.png", node_id=train)

    # the log toggle redraws on a log axis
    page.evaluate("(id) => { app.graph.getNodeById(id).loralabChart.logScale = true }", train)
    page.wait_for_function("(id) => app.graph.getNodeById(id).loralabChart.lastDraw?.log === true", arg=train)
    screenshot(page, "canvas_train_node_log.png", node_id=train)

    # the chart's data is not part of the workflow (the server keeps it): the saved node holds its
    # own widget values and the log switch, no loss history
    saved_graph = page.evaluate("() => app.graph.serialize()")
    saved_train = next(n for n in saved_graph["nodes"] if str(n["id"]) == str(train))  # live ids are strings on newer frontends
    assert saved_train["widgets_values"][:4] == [20, 0.001, 0, name]
    assert saved_train["properties"].get("loralab_log_scale") is True
    saved_text = json.dumps(saved_train)
    assert not any(repr(loss) in saved_text for loss in done["losses"])

    # a reload loses the page's memory: the chart comes back from GET /loralab/runs/{id}
    page.evaluate("() => app.extensionManager.workflow.activeWorkflow?.changeTracker?.checkState()")
    page.reload()
    open_app(page)
    restored = page.evaluate("(id) => app.graph.getNodeById(id)?.type ?? null", train)
    log_kept = page.evaluate("(id) => app.graph.getNodeById(id)?.properties?.loralab_log_scale ?? null", train)
    if restored != "LoRALabTrain" or log_kept is not True:
        # the frontend did not persist the latest workflow (newer frontends save it later): load
        # the saved graph, as opening a saved workflow file does
        page.evaluate("(graph) => app.loadGraphData(graph)", saved_graph)
    page.wait_for_function("(id) => (window.__lab.ext().chartState(id)?.steps.length ?? 0) === 20", arg=train,
                           timeout=30_000)
    page.wait_for_function("(id) => app.graph.getNodeById(id).loralabChart.lastDraw?.points === 20", arg=train)
    again = chart(page, train)
    assert again["steps"] == done["steps"] and again["losses"] == done["losses"]
    assert again["saves"] == done["saves"] and again["samples"] == done["samples"]
    assert again["run"] == done["run"] and again["status"] == "success"
    assert again["summary"] == done["summary"]
    assert again["lastDraw"]["log"] is True  # the log switch came back with the workflow
    # the samples come back with the run: same groups, same images (ComfyUI's preview does not)
    assert check_sample_strip(page, train, [0, 10, 20]) == strip
    screenshot(page, "canvas_after_reload.png", node_id=train)
    page.errors.check()
    print(f"chart test: {time.monotonic() - started:.1f} s (workflow restored by the frontend: "
          f"{restored == 'LoRALabTrain'})")


def test_two_train_nodes_keep_their_own_runs(page):
    ids = _two_train_graph(page, f"canvas2_{uuid.uuid4().hex[:8]}")
    queue(page)
    wait_for_status(page, ids["first"])
    wait_for_status(page, ids["second"])
    first, second = chart(page, ids["first"]), chart(page, ids["second"])
    assert first["steps"] == [1, 2, 3, 4, 5, 6]
    assert second["steps"] == [1, 2, 3, 4]
    assert first["run"] != second["run"]
    assert first["lastDraw"]["points"] == 6 and second["lastDraw"]["points"] == 4
    assert "6/6" in first["summary"] and "4/4" in second["summary"]
    screenshot(page, "canvas_two_nodes.png")
    page.errors.check()


def test_empty_and_non_finite_charts_draw_without_errors(page):
    """A Train node with no run draws an empty chart; a run whose losses include NaN/inf (sent
    through the page's own event dispatch, as the socket would) draws with gaps and an
    interrupted marker."""
    node = page.evaluate("""() => {
      app.graph.clear();
      const n = window.__lab.add("LoRALabTrain", [40, 40], { steps: 8, output_name: "x" });
      return n.id;
    }""")
    page.wait_for_function("(id) => app.graph.getNodeById(id).loralabChart.lastDraw !== null", arg=node)
    empty = chart(page, node)
    assert empty["steps"] is None and empty["drawErrors"] == 0
    assert empty["lastDraw"]["points"] == 0 and empty["lastDraw"]["width"] > 100
    assert empty["summary"] == "loss chart: no run yet"

    run = 10**9  # far beyond the server's run ids
    page.evaluate("""([id, run]) => {
      const send = (detail) => window.comfyAPI.api.api.dispatchCustomEvent("loralab.progress",
                                                                           { run, node: String(id), total: 8, ...detail });
      send({ type: "start", step: 0 });
      const losses = [0.5, 0.4, NaN, Infinity, 0.3, -Infinity, 0.25];
      losses.forEach((loss, i) => send({ type: "step", step: i + 1, epoch: 0, loss, lr: 1e-3, sigma: 0.5,
                                         saved: i === 1, text: "" }));
      send({ type: "end", step: 7, status: "interrupted" });
    }""", [node, run])
    page.wait_for_function("(id) => app.graph.getNodeById(id).loralabChart.lastDraw?.points === 7", arg=node)
    nan = chart(page, node)
    assert nan["status"] == "interrupted" and nan["drawErrors"] == 0
    assert nan["lastDraw"]["raw"] == 4  # the finite losses; NaN/inf left gaps
    assert {m["kind"] for m in nan["lastDraw"]["markers"]} == {"save", "stop"}
    assert "interrupted at 7" in nan["summary"] and "min 0.25" in nan["summary"]
    page.evaluate("(id) => { app.graph.getNodeById(id).loralabChart.logScale = true }", node)
    page.wait_for_function("(id) => app.graph.getNodeById(id).loralabChart.lastDraw?.log === true", arg=node)
    assert chart(page, node)["drawErrors"] == 0
    screenshot(page, "canvas_nan_interrupted.png", node_id=node)

    # a long run stays cheap to draw: 10,000 steps through the same event path
    timing = page.evaluate("""([id, run]) => {
      const api = window.comfyAPI.api.api;
      const send = (detail) => api.dispatchCustomEvent("loralab.progress", { run, node: String(id), total: 10000, ...detail });
      send({ type: "start", step: 0 });
      for (let i = 1; i <= 10000; i++) {
        send({ type: "step", step: i, epoch: 0, loss: 0.2 + 0.1 * Math.sin(i / 300) + 0.05 * Math.random(),
               lr: 1e-4, sigma: 0.5, saved: i % 1000 === 0, text: "" });
      }
      send({ type: "end", step: 10000, status: "success" });
      const view = app.graph.getNodeById(id).loralabChart;
      const started = performance.now();
      view.draw();
      return { ms: performance.now() - started, draw: view.lastDraw };
    }""", [node, run + 1])
    assert timing["draw"]["points"] == 10000
    assert timing["draw"]["raw"] <= 3 * timing["draw"]["width"]  # drawn per pixel column, not per step
    assert timing["ms"] < 250, timing
    print(f"10,000-step chart drawn in {timing['ms']:.1f} ms ({timing['draw']['raw']} raw points drawn)")
    screenshot(page, "canvas_10k_steps.png", node_id=node)
    page.errors.check()
