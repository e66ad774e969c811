"""Training-step time and peak memory: LoRA Lab's trainer, ComfyUI's built-in TrainLoraNode, and a
bare forward + backward of the same model.

    python benchmarks/train_step.py --markdown

Each (case, implementation) runs in a fresh process: this script re-invokes itself with
`--case NAME --impl ours|native|bare`, the child prints one result line, and the parent prints one
JSON line per case (and, with --markdown, a table). See docs/benchmarks.md for what is measured.

Shared by every run of a case:
- the model: a ComfyUI-built Flux (bf16 weights, random but seeded) made by LoRA Lab's host
  adapter, under torch.inference_mode() the way a loader node runs in the executor; "tiny" is the
  Demo Model node's Flux, "wide" the same build with a wider FLUX_UNET, "wide_z_image" the Z-Image
  demo (0.33 only) widened the same way (Z_IMAGE_UNET);
- compute in bf16: the model's compute dtype set to bf16 (ModelPatcher.set_model_compute_dtype)
  and its forward under torch.autocast(bf16), which is exactly what TrainLoraNode does itself;
- per-block gradient checkpointing;
- 256 text tokens (the demo T5 tokenizer pads to 256), one 16x32x32 latent, batch 1;
- rank 8 and torch AdamW, its step included (ours, native);
- one thread; the first WARMUP steps of each process are dropped, and the median of the other
  steps of all its processes (--repeats, run in rotating order) is reported.

ComfyUI is found through $COMFYUI_PATH or ~/comfy/ComfyUI (as the test suite finds it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPLS = ("ours", "native", "native_bypass", "bare")
# native_bypass: TrainLoraNode with bypass_mode on (forward hooks, like ours); ComfyUI 0.33 has it,
# 0.3.64 does not (its row then says n/a).
WARMUP = 3
RANK = 8
LATENT_SHAPE = (16, 32, 32)  # Flux latent channels, 256x256 pixels
CAPTION = "a photo"
LEARNING_RATE = 5e-4
SEED = 0
RESULT_PREFIX = "TRAIN_STEP_RESULT "
BUSY_LOAD = 1.5  # a 1-thread run alone keeps the load average near 1

# Per case: changes to the demo FLUX_UNET (None: the Demo Model node's tiny Flux) and the number of
# steps per run (WARMUP of them dropped). The text/pooled widths stay those of the demo CLIP.
CASES = {
    "tiny": {"flux": None, "steps": 23},
    "wide": {"flux": {"hidden_size": 1024, "num_heads": 8, "depth": 2, "depth_single_blocks": 2,
                      "axes_dim": [16, 56, 56], "context_in_dim": 64, "vec_in_dim": 32},
             "steps": 18},
    # Z-Image's architecture (NextDiT, ComfyUI 0.33 only) at the wide Flux's width: two main layers
    # and one noise and one caption refiner, heads of 128; the demo Qwen3 text encoder.
    "wide_z_image": {"demo": "Z-Image", "config": "Z_IMAGE_UNET",
                     "flux": {"dim": 1024, "n_heads": 8, "n_kv_heads": 8, "n_layers": 2, "n_refiner_layers": 1},
                     "steps": 18},
}


# --- child: one implementation on one case --------------------------------------------------

def _import_host():
    """ComfyUI imported in-process on the CPU, then the pack as `comfyui_lora_lab`."""
    sys.path.insert(0, str(REPO / "tests"))
    from labtest import find_comfyui, register_pack
    from labtest.inprocess import import_comfyui

    comfy_dir = find_comfyui()
    if comfy_dir is None:
        raise SystemExit("no ComfyUI source tree found: set COMFYUI_PATH (or put one at ~/comfy/ComfyUI)")
    import_comfyui(comfy_dir)
    register_pack()
    from comfyui_lora_lab.nodes import host

    return host


def _build_model(host, case: str):
    """The demo model the way a loader node makes it: inside inference mode. The wide cases are the
    same build (host.build_demo_model, ComfyUI's supported_models class, host.randomize_module)
    with the case's demo config (FLUX_UNET unless it names another) widened for the call."""
    import torch
    from unittest import mock

    from comfyui_lora_lab.nodes import demo_configs

    spec = CASES[case]
    sizes = getattr(demo_configs, spec.get("config", "FLUX_UNET"))
    with torch.inference_mode(), mock.patch.dict(sizes, spec["flux"] or {}):
        return host.build_demo_model(spec.get("demo", "Flux"), "bf16", SEED)


def _now() -> tuple[float, float]:
    """(wall, process CPU) seconds: CPU time is the cross-check when other processes share the
    cores (a preempted step gains wall time, not CPU time)."""
    return time.perf_counter(), time.process_time()


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class _Autocast:
    """A predictor running the wrapped one's forward under bf16 autocast (TrainSampler does the
    same around ComfyUI's forward), so all three implementations compute alike."""

    def __init__(self, inner):
        self.inner = inner
        self.family, self.sigma_table, self.device = inner.family, inner.sigma_table, inner.device

    def predict(self, noisy, sigma, conds):
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.inner.predict(noisy, sigma, conds)


def _bf16_compute(model):
    """A clone computing in bf16, as TrainLoraNode sets up its own clone."""
    import torch

    clone = model.clone()
    clone.set_model_compute_dtype(torch.bfloat16)
    return clone


def _run_ours(host, model, latent, cond, steps: int) -> list[tuple[float, float]]:
    import torch

    from comfyui_lora_lab.training.loop import LoopConfig, Sample, Trainer
    from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig
    from comfyui_lora_lab.training.optimizers import build_optimizer
    from comfyui_lora_lab.training.schedulers import build_scheduler

    ends: list[tuple[float, float]] = []
    with torch.inference_mode(False):  # as the Train node does inside the executor
        network = AdapterNetwork(host.target_modules(model, "all"), NetworkConfig("LoRA", RANK, float(RANK)),
                                 seed=SEED)
        with host.TrainingModel(_bf16_compute(model), network, checkpointing=True, guidance=1.0) as tm:
            params = list(network.parameters())
            optimizer = build_optimizer("AdamW", [{"params": params, "lr": LEARNING_RATE}], LEARNING_RATE)
            scheduler = build_scheduler("constant", optimizer, steps)
            trainer = Trainer(_Autocast(tm), params, [Sample(latent, None, cond)], LoopConfig(steps=steps, seed=SEED),
                              optimizer, scheduler, network)
            trainer.run(on_step=lambda record: ends.append(_now()))
    return ends


def _as_loaded_to_device(model) -> int:
    """What loading the model to a GPU does inside TrainLoraNode (which leaves inference mode
    first): the loader's inference-tensor weights become normal tensors on the device. On the CPU
    nothing moves, and the stock node then stops at the first Flux block with "Inference tensors
    cannot be saved for backward" (the RMSNorm scales of QKNorm are used as they are). This makes
    that copy, in place of the originals; returns how many tensors it replaced."""
    import torch

    replaced = 0
    with torch.inference_mode(False), torch.no_grad():
        for module in model.model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None and param.is_inference():
                    module._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=param.requires_grad)
                    replaced += 1
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()
                    replaced += 1
    return replaced


def _native_node():
    from comfy_extras.nodes_train import TrainLoraNode

    return TrainLoraNode


def native_has_bypass() -> bool:
    """Feature detection: does this ComfyUI's TrainLoraNode offer bypass_mode?"""
    node = _native_node()
    if not hasattr(node, "define_schema"):
        return False
    return any(getattr(i, "id", None) == "bypass_mode" for i in node.define_schema().inputs)


def _register_loader(model, case: str) -> None:
    """0.33's TrainLoraNode trains on `clone(force_deepcopy=True)`, which rebuilds the model through
    the loader's `cached_patcher_init`; a model built without a loader registers the same build."""
    host = sys.modules["comfyui_lora_lab.nodes.host"]

    def rebuild(disable_dynamic=False):
        rebuilt = _build_model(host, case).model
        _as_loaded_to_device(rebuilt)  # what loading to a GPU makes of the loader's weights
        return rebuilt

    model.cached_patcher_init = (rebuild, ())


def _run_native(host, model, latent, cond, steps: int, lora_dtype: str = "fp32", bypass: bool = False,
                case: str = "tiny") -> list[tuple[float, float]]:
    """ComfyUI's TrainLoraNode called as the executor calls it (inside inference mode; the node
    leaves it itself): `train(...)` on 0.3.64, the V3 `execute` with list inputs on 0.33. Step ends
    come from a global optimizer-step hook: ComfyUI's code runs unchanged."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    node = _native_node()
    _as_loaded_to_device(model)
    common = dict(batch_size=1, steps=steps, grad_accumulation_steps=1, learning_rate=LEARNING_RATE, rank=RANK,
                  optimizer="AdamW", loss_function="MSE", seed=SEED, training_dtype="bf16", lora_dtype=lora_dtype,
                  algorithm="LoRA", gradient_checkpointing=True, existing_lora="[None]")
    ends: list[tuple[float, float]] = []
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: ends.append(_now()))
    try:
        with torch.inference_mode():
            if hasattr(node, "train"):  # ComfyUI 0.3.64
                node().train(model=model, latents={"samples": latent.unsqueeze(0)}, positive=[cond], **common)
            else:  # ComfyUI 0.33: V3, every input a list; its defaults for the rest, bypass as asked
                _register_loader(model, case)
                defaults = {i.id: getattr(i, "default", None) for i in node.define_schema().inputs}
                values = {**defaults, **common, "bypass_mode": bypass}
                values.update(model=model, latents={"samples": latent.unsqueeze(0)}, positive=[cond])
                node.execute(**{name: [value] for name, value in values.items()})
    finally:
        hook.remove()
    return ends


def _cond_with_grad(cond):
    """The caption's conditioning as a tensor that asks for its gradient (a normal copy of the
    encoder's inference tensor). Z-Image refines the caption in blocks the image never enters: a
    backward to the latent alone would skip them, while training runs their backward too."""
    import torch

    tensor, extras = cond
    return [tensor.clone().requires_grad_(True), extras]


def _run_bare(host, model, latent, cond, steps: int) -> list[tuple[float, float]]:
    """The same forward as ours (TrainingModel without adapters: frozen-weight wrappers, block
    wrappers with checkpointing), the loss, and a backward to the inputs (the noisy latent and the
    caption's conditioning), so every block runs its backward; no optimizer."""
    import torch

    from comfyui_lora_lab.training.masked_loss import per_sample_loss
    from comfyui_lora_lab.training.objective import FlowTimesteps, sample_flow_sigmas

    ends: list[tuple[float, float]] = []
    with torch.inference_mode(False):
        cond = _cond_with_grad(cond)
        with host.TrainingModel(_bf16_compute(model), None, checkpointing=True, guidance=1.0) as tm:
            predictor, family = _Autocast(tm), tm.family
            x0 = latent.unsqueeze(0).float()
            for step in range(steps):
                g = torch.Generator().manual_seed(SEED * 1_000_003 + step + 7)
                noise = torch.randn(x0.shape, generator=g)
                sigma = sample_flow_sigmas(FlowTimesteps(sampling="sigmoid"), 1, tuple(x0.shape[-2:]), g).float()
                noisy = family.noisy(x0, noise, sigma).requires_grad_(True)
                pred = predictor.predict(noisy, sigma, [cond])
                loss = per_sample_loss(pred, family.target(x0, noise, sigma)).mean()
                loss.backward()
                loss.item()
                ends.append(_now())
    return ends


def child(case: str, impl: str, steps: int, native_lora_dtype: str) -> None:
    import torch

    torch.set_num_threads(1)
    host = _import_host()
    demo = _build_model(host, case)
    with torch.inference_mode():  # the executor's conditions: encoder outputs and latents are inference tensors
        cond = host.encode_caption(demo.clip, CAPTION)
        latent = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(SEED))
    tokens = cond[0].shape[1]
    if impl == "native_bypass" and not native_has_bypass():
        print(RESULT_PREFIX + json.dumps({"case": case, "impl": impl, "unsupported": True}), flush=True)
        return
    setup_rss = _maxrss_mb()
    load_before = os.getloadavg()[0]
    if impl.startswith("native"):
        ends = _run_native(host, demo.model, latent, cond, steps, native_lora_dtype, bypass=impl == "native_bypass",
                           case=case)
    else:
        ends = {"ours": _run_ours, "bare": _run_bare}[impl](host, demo.model, latent, cond, steps)
    if len(ends) != steps:
        raise SystemExit(f"{impl}: expected {steps} step timestamps, got {len(ends)}")
    # ends[i] closes step i+1; the steps after the warm-up have a full interval each.
    wall = [(ends[i][0] - ends[i - 1][0]) * 1000 for i in range(WARMUP, steps)]
    cpu = [(ends[i][1] - ends[i - 1][1]) * 1000 for i in range(WARMUP, steps)]
    params = sum(p.numel() for p in demo.model.model.diffusion_model.parameters())
    print(RESULT_PREFIX + json.dumps({
        "case": case, "impl": impl, "step_ms": statistics.median(wall), "steps_ms": wall, "steps_cpu_ms": cpu,
        "peak_rss_mb": _maxrss_mb(), "setup_rss_mb": setup_rss, "text_tokens": tokens,
        "loadavg_1m": max(load_before, os.getloadavg()[0]),
        "model_params": params, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "comfyui": host.comfyui_version()}), flush=True)


# --- parent: every case and implementation, one process each ------------------------------

def run_child(case: str, impl: str, steps: int, native_lora_dtype: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", case, "--impl", impl, "--steps", str(steps),
           "--native-lora-dtype", native_lora_dtype]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"case {case}, impl {impl}: the child failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def summarize(case: str, runs: dict[str, list[dict]], native_lora_dtype: str) -> dict:
    """Per implementation: the median of every timed step of its runs, the largest peak RSS
    (None for an implementation this ComfyUI does not have)."""
    impls = [impl for impl in IMPLS if runs[impl] and not runs[impl][0].get("unsupported")]
    step = {impl: statistics.median([ms for run in runs[impl] for ms in run["steps_ms"]]) for impl in impls}
    cpu = {impl: statistics.median([ms for run in runs[impl] for ms in run["steps_cpu_ms"]]) for impl in impls}
    peak = {impl: max(run["peak_rss_mb"] for run in runs[impl]) for impl in impls}
    first = runs["ours"][0]

    def ratio(table, a, b):
        return round(table[a] / table[b], 3) if a in table and b in table else None

    row = {"case": case, "comfyui": first["comfyui"]}
    for impl in IMPLS:
        row[f"step_ms_{impl}"] = round(step[impl], 1) if impl in step else None
        row[f"cpu_ms_{impl}"] = round(cpu[impl], 1) if impl in cpu else None
        row[f"peak_rss_mb_{impl}"] = round(peak[impl]) if impl in peak else None
    for other in ("bare", "native", "native_bypass"):
        row[f"ours_over_{other}"] = ratio(step, "ours", other)
        row[f"cpu_ours_over_{other}"] = ratio(cpu, "ours", other)
    row.update({
        "setup_rss_mb": round(min(run["setup_rss_mb"] for impl in impls for run in runs[impl])),
        "model_params": first["model_params"],
        "text_tokens": first["text_tokens"],
        "steps_timed": sum(len(run["steps_ms"]) for run in runs["ours"]),
        "runs": len(runs["ours"]),
        "max_loadavg_1m": round(max(run["loadavg_1m"] for impl in impls for run in runs[impl]), 2),
        "native_lora_dtype": native_lora_dtype,
        "threads": first["threads"],
        "torch": first["torch"],
    })
    return row


def _cell(value, fmt: str = "{:.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def markdown(rows: list[dict]) -> str:
    head = ("| ComfyUI | case | params | ours ms | native ms | native bypass ms | bare ms | ours/bare | ours/native | "
            "ours/native bypass | peak RSS ours MB | peak RSS native MB | peak RSS native bypass MB | "
            "peak RSS bare MB | RSS before training MB |")
    out = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in rows:
        out.append(f"| {r['comfyui']} | {r['case']} | {r['model_params'] / 1e6:.1f} M | {_cell(r['step_ms_ours'])} | "
                   f"{_cell(r['step_ms_native'])} | {_cell(r['step_ms_native_bypass'])} | {_cell(r['step_ms_bare'])} | "
                   f"{_cell(r['ours_over_bare'], '{:.2f}')} | {_cell(r['ours_over_native'], '{:.2f}')} | "
                   f"{_cell(r['ours_over_native_bypass'], '{:.2f}')} | {_cell(r['peak_rss_mb_ours'], '{}')} | "
                   f"{_cell(r['peak_rss_mb_native'], '{}')} | {_cell(r['peak_rss_mb_native_bypass'], '{}')} | "
                   f"{_cell(r['peak_rss_mb_bare'], '{}')} | {r['setup_rss_mb']} |")
    head = ("| ComfyUI | case | ours CPU ms | native CPU ms | native bypass CPU ms | bare CPU ms | ours/bare (CPU) | "
            "ours/native (CPU) | ours/native bypass (CPU) | max load avg |")
    out += ["", "Process CPU time per step (the cross-check when other processes share the cores):", "",
            head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in rows:
        out.append(f"| {r['comfyui']} | {r['case']} | {_cell(r['cpu_ms_ours'])} | {_cell(r['cpu_ms_native'])} | "
                   f"{_cell(r['cpu_ms_native_bypass'])} | {_cell(r['cpu_ms_bare'])} | "
                   f"{_cell(r['cpu_ours_over_bare'], '{:.2f}')} | {_cell(r['cpu_ours_over_native'], '{:.2f}')} | "
                   f"{_cell(r['cpu_ours_over_native_bypass'], '{:.2f}')} | {r['max_loadavg_1m']:.2f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, help=f"steps per run, {WARMUP} of them warm-up (default: per case)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="processes per implementation and case, in rotating order (default 2)")
    parser.add_argument("--native-lora-dtype", choices=("fp32", "bf16"), default="fp32",
                        help="TrainLoraNode's lora_dtype (fp32, like our adapters, by default; the node's own "
                             "default is bf16)")
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps is not None and args.steps < WARMUP + 2:
        parser.error(f"--steps must be at least {WARMUP + 2}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.impl:
        child(args.case, args.impl, args.steps or CASES[args.case]["steps"], args.native_lora_dtype)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    rows = []
    for case in cases:
        steps = args.steps or CASES[case]["steps"]
        runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
        for repeat in range(args.repeats):  # rotated, so no implementation always runs first
            for impl in IMPLS[repeat % len(IMPLS):] + IMPLS[:repeat % len(IMPLS)]:
                if runs[impl] and runs[impl][0].get("unsupported"):
                    continue  # this ComfyUI has no such mode: asked once
                runs[impl].append(run_child(case, impl, steps, args.native_lora_dtype))
        rows.append(summarize(case, runs, args.native_lora_dtype))
        print(json.dumps(rows[-1]), flush=True)
        if rows[-1]["max_loadavg_1m"] > BUSY_LOAD:
            print(f"warning: the 1-minute load average reached {rows[-1]['max_loadavg_1m']} during case {case}: "
                  "other processes shared the CPU, so wall times are inflated (compare the CPU times)",
                  file=sys.stderr, flush=True)
    if args.markdown:
        print()
        print(markdown(rows))


if __name__ == "__main__":
    main()
