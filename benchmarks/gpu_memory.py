"""Peak memory and step time of LoRA Lab training, and of ComfyUI 0.33's TrainLoraNode, on
full-size architectures with random weights (Flux.1-dev, Flux.2 Klein 4B, Z-Image, Qwen-Image), per
weight type, resolution, memory mode and ComfyUI dynamic VRAM on/off; one JSON line per run, each
run in its own process.

    python benchmarks/gpu_memory.py --tiny                                  # CPU, demo widths (CI)
    python benchmarks/gpu_memory.py --weights fp8_e4m3fn --sizes 512,1024 --usable-vram-gb 16 \\
        --jsonl gpu_bench.jsonl --markdown gpu_bench.md                     # a GPU

Each architecture is its Demo Model recipe (ComfyUI's own detection and classes) at the real sizes
(ARCHS below), built directly on the GPU (4-20 B parameters: random weights drawn there, in the
chosen storage type), then moved to ComfyUI's offload device (the CPU), where a loader leaves it;
ComfyUI's model management then loads it for training as it would a checkpoint. The conditioning is
random at the real widths. Rank 16, batch 1, AdamW, per-block gradient checkpointing, compute in
bf16 on a GPU (fp32 on a CPU).

Runs (`--runs`, `impl:mode`):
- `ours:auto|full|offload`: LoRA Lab's TrainingModel in that memory mode (nodes/host/training_model.py);
- `native:FLAGS`: ComfyUI's TrainLoraNode with FLAGS joined by `+` from `offload` (its
  `offloading`), `bypass` (`bypass_mode`) and `qbwd` (`quantized_backward`), or `default` (none of
  them); its other inputs at their defaults except rank, steps, optimizer, bf16 training and
  checkpointing (a ComfyUI whose node lacks an input gives an `unsupported` row).

`--dynamic-vram off,on`: each run once per setting. `on` switches ComfyUI 0.33's dynamic VRAM
(comfy-aimdo) on the way its main.py does, so the model is a ModelPatcherDynamic as its loader makes
it (ours trains it through its non-dynamic delegate, as the Train node does); CPUs and ComfyUI
versions without it give an `unsupported` row.

`--usable-vram-gb N` sets ComfyUI's reserved VRAM (its --reserve-vram,
comfy.model_management.EXTRA_RESERVED_VRAM) to the card's total minus N GiB, so that a large card
behaves like an N GiB one; `--reserve-vram-gb` sets it directly.

Reported per run: peak torch.cuda.max_memory_allocated and max_memory_reserved (MB) from the start
of training, the median step time after WARMUP steps, the memory state ComfyUI loaded the model in,
the last loss, and whether the peak reserved memory stayed within the usable VRAM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Arch:
    """A full-size architecture: the Demo Model recipe it is built with, the demo size dict
    (nodes/demo_configs.py) widened to `sizes`, and its conditioning: `tokens` text tokens of the
    width under `text_width` in that dict, a pooled vector of `pooled_width`'s width (Flux.1), and
    an all-ones attention mask where the family's encoder gives one."""
    demo: str
    config: str
    sizes: dict
    text_width: str
    tokens: int
    pooled_width: str | None = None
    mask: bool = False


ARCHS = {
    "flux1-dev": Arch("Flux", "FLUX_UNET", {"hidden_size": 3072, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
                                            "context_in_dim": 4096, "vec_in_dim": 768, "axes_dim": [16, 56, 56]},
                      "context_in_dim", 256, pooled_width="vec_in_dim"),
    # FLUX.2 [klein] 4B: 5 double and 20 single blocks of width 3072 (heads of 128), conditioning
    # three Qwen3-4B layers side by side, padded to 512 tokens.
    "flux2-klein": Arch("Flux.2 Klein", "FLUX2_KLEIN_UNET", {"hidden_size": 3072, "num_heads": 24, "depth": 5,
                                                              "depth_single_blocks": 20, "context_in_dim": 7680},
                        "context_in_dim", 512, mask=True),
    # Z-Image (Turbo/Base), 6 B: NextDiT of width 3840, 30 layers, 2 refiners of each kind, Qwen3-4B text.
    "z-image": Arch("Z-Image", "Z_IMAGE_UNET", {"dim": 3840, "n_heads": 30, "n_kv_heads": 30, "n_layers": 30,
                                                "n_refiner_layers": 2, "cap_feat_dim": 2560},
                    "cap_feat_dim", 256, mask=True),
    # Qwen-Image, 20 B: 60 MMDiT blocks of width 3072, Qwen2.5-VL-7B text.
    "qwen-image": Arch("Qwen-Image", "QWEN_IMAGE_UNET", {"num_layers": 60, "attention_head_dim": 128,
                                                         "num_attention_heads": 24, "joint_attention_dim": 3584,
                                                         "axes_dims_rope": (16, 56, 56)},
                       "joint_attention_dim", 256),
}
RANK = 16
WARMUP = 2
SEED = 0
LEARNING_RATE = 1e-4
RESULT_PREFIX = "GPU_MEMORY_RESULT "
RUNS = ("ours:auto", "ours:offload", "native:offload", "native:default")
OURS_MODES = ("auto", "full", "offload")
# TrainLoraNode's inputs behind each native flag.
NATIVE_FLAGS = {"offload": "offloading", "bypass": "bypass_mode", "qbwd": "quantized_backward"}
TINY_PX = 64  # --tiny trains 64x64-pixel images whatever --sizes says


def _import_host(cpu: bool):
    sys.path.insert(0, str(REPO / "tests"))
    from labtest import find_comfyui, register_pack
    from labtest.inprocess import import_comfyui

    comfy_dir = find_comfyui()
    if comfy_dir is None:
        raise SystemExit("no ComfyUI source tree found: set COMFYUI_PATH")
    import_comfyui(comfy_dir, cpu=cpu)
    register_pack()
    from comfyui_lora_lab.nodes import host

    return host


def _randomize_on(module, seed: int) -> None:
    """randomize_module's distribution (N(0, 1/fan_in) weights, small biases, unit scales), drawn
    on each tensor's own device: 12 B parameters are drawn in seconds on a GPU."""
    import torch

    generators = {}
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            if tensor.device not in generators:
                generators[tensor.device] = torch.Generator(tensor.device).manual_seed(seed)
            gen = generators[tensor.device]
            if tensor.ndim >= 2:
                values = torch.randn(tensor.shape, generator=gen, device=tensor.device) / tensor[0].numel() ** 0.5
            elif name.endswith("bias"):
                values = torch.randn(tensor.shape, generator=gen, device=tensor.device) * 0.02
            else:
                values = torch.ones(tensor.shape, device=tensor.device)
            tensor.copy_(values.to(tensor.dtype))
            del values


def build_unet(host, sizes: dict, weights: str, build_device, arch: str = "flux1-dev", patcher_class=None):
    """A ModelPatcher (or `patcher_class`, e.g. ComfyUI's CoreModelPatcher) of the architecture's
    Demo Model recipe at `sizes`, built and randomised on `build_device`, then moved to ComfyUI's
    offload device as a loader leaves a model. `fp8_scaled` is drawn in bf16, stored the way a
    `*_fp8_scaled` checkpoint stores it, and loaded through ComfyUI's own route for such files
    (0.33: its quantized layers), as the Demo Model does."""
    import torch
    from unittest import mock

    import comfy.model_management as mm
    import comfy.model_patcher
    from comfyui_lora_lab.nodes import demo_configs
    from comfyui_lora_lab.nodes.host import demo

    spec = ARCHS[arch]

    def model_config():
        with mock.patch.dict(getattr(demo_configs, spec.config), sizes):
            return host.demos()[spec.demo].model_config()

    load_device = mm.get_torch_device()
    config = model_config()
    dtype = torch.bfloat16 if weights == demo.SCALED_FP8 else demo._TORCH_DTYPES[weights]
    config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, config.supported_inference_dtypes))
    model = config.get_model({}, "", device=build_device)
    _randomize_on(model.diffusion_model, SEED)
    if weights == demo.SCALED_FP8:
        state = demo.scaled_fp8_state_dict(model.diffusion_model)
        del model
        model = demo.load_scaled_fp8(model_config(), state).model
        del state
    model = model.to(mm.unet_offload_device())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    patcher_class = patcher_class or comfy.model_patcher.ModelPatcher
    return patcher_class(model, load_device=load_device, offload_device=mm.unet_offload_device())


def _inputs(host, patcher, arch: str, unet: dict, px: int):
    """A latent of the model's own latent format at `px` pixels (Flux.2: 128 channels at 16x;
    Qwen-Image: 5-D) and random conditioning at the architecture's widths."""
    import torch

    spec = ARCHS[arch]
    latent_format = patcher.get_model_object("latent_format")
    side = px // host.latent_downscale(patcher)
    frames = (1,) * (getattr(latent_format, "latent_dimensions", 2) - 2)
    g = torch.Generator().manual_seed(SEED)
    x0 = torch.randn(1, latent_format.latent_channels, *frames, side, side, generator=g)
    extras = {"pooled_output": torch.randn(1, unet[spec.pooled_width], generator=g) if spec.pooled_width else None}
    if spec.mask:
        extras["attention_mask"] = torch.ones(1, spec.tokens, dtype=torch.long)
    return x0, [torch.randn(1, spec.tokens, unet[spec.text_width], generator=g), extras], g


def _loaded_state(module) -> str:
    """The memory state of the loaded patcher (any clone) that holds `module`."""
    import comfy.model_management as mm

    from comfyui_lora_lab.nodes.host.training_model import memory_state

    for loaded in mm.current_loaded_models:
        if loaded.model is not None and loaded.model.model is module:
            return memory_state(loaded.model)
    return "unknown"


def _run_ours(host, patcher, arch: str, unet: dict, px: int, mode: str, steps: int, cuda: bool):
    import torch

    from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig

    model = host.training_base(patcher).clone()  # as the Train node: a dynamic MODEL trains through its delegate
    if cuda:
        model.set_model_compute_dtype(torch.bfloat16)
    x0, cond, g = _inputs(host, model, arch, unet, px)
    network = AdapterNetwork(host.target_modules(model, "attention+mlp"), NetworkConfig("LoRA", RANK, RANK), seed=SEED)
    device = model.load_device
    times, loss = [], None
    with torch.inference_mode(False), host.TrainingModel(model, network, True, 1.0, memory_mode=mode,
                                                         latent_shape=tuple(x0.shape)) as tm:
        optimizer = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE)
        x0, noise = x0.to(device), torch.randn(x0.shape, generator=g).to(device)
        for _ in range(steps):
            start = time.perf_counter()
            sigma = torch.rand(1, generator=g).clamp(0.05, 0.95).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                pred = tm.predict(tm.family.noisy(x0, noise, sigma), sigma, [cond])
            loss = torch.nn.functional.mse_loss(pred.float(), tm.family.target(x0, noise, sigma).float())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = float(loss.detach())
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        memory = tm.memory
    return times, loss, memory


def native_flags(mode: str) -> set[str]:
    return set() if mode == "default" else set(mode.split("+"))


def native_missing(flags: set[str]) -> str | None:
    """Why this ComfyUI's TrainLoraNode cannot run with `flags` (None: it can)."""
    from comfy_extras.nodes_train import TrainLoraNode

    if not hasattr(TrainLoraNode, "define_schema"):
        return "this ComfyUI's TrainLoraNode has no V3 schema"
    ids = {getattr(i, "id", None) for i in TrainLoraNode.define_schema().inputs}
    missing = sorted(NATIVE_FLAGS[f] for f in flags if NATIVE_FLAGS[f] not in ids)
    return f"this ComfyUI's TrainLoraNode has no {', '.join(missing)} input" if missing else None


def _run_native(host, patcher, arch: str, unet: dict, px: int, mode: str, steps: int, cuda: bool):
    """TrainLoraNode called as the executor calls it (V3 `execute`, every input a list, inside
    inference mode; the node leaves it itself). Its `clone(force_deepcopy=True)` rebuilds the model
    through the loader's cached_patcher_init; here that returns the same (not yet loaded) module,
    which this process uses for nothing else. Step times come from a global optimizer-step hook."""
    import torch
    from comfy_extras.nodes_train import TrainLoraNode
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import comfy.model_patcher

    module = patcher.model
    load_device, offload_device = patcher.load_device, patcher.offload_device

    def rebuild(disable_dynamic=False):
        cls = comfy.model_patcher.ModelPatcher if disable_dynamic else type(patcher)
        return cls(module, load_device=load_device, offload_device=offload_device)

    patcher.cached_patcher_init = (rebuild, ())
    x0, cond, _ = _inputs(host, patcher, arch, unet, px)
    flags = native_flags(mode)
    values = {i.id: getattr(i, "default", None) for i in TrainLoraNode.define_schema().inputs}
    values.update(batch_size=1, steps=steps, grad_accumulation_steps=1, learning_rate=LEARNING_RATE, rank=RANK,
                  optimizer="AdamW", loss_function="MSE", seed=SEED, training_dtype="bf16",
                  gradient_checkpointing=True, existing_lora="[None]",
                  model=patcher, latents={"samples": x0}, positive=[cond])
    values.update({NATIVE_FLAGS[f]: f in flags for f in NATIVE_FLAGS if NATIVE_FLAGS[f] in values})
    ends: list[float] = []
    memory: list[str] = []
    hook = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: (
        torch.cuda.synchronize() if cuda else None, ends.append(time.perf_counter()),
        memory.append(_loaded_state(module)) if not memory else None))
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            out = TrainLoraNode.execute(**{name: [value] for name, value in values.items()})
    finally:
        hook.remove()
    times = [b - a for a, b in zip([start] + ends[:-1], ends)]
    loss = None
    try:
        losses = out.result[1]["loss"]
        loss = float(losses[-1]) if losses else None
    except Exception:  # an older output shape: the loss stays unknown
        pass
    return times, loss, memory[0] if memory else "unknown"


def _cuda_present() -> bool:
    """Without importing torch in this process (dynamic VRAM must be set up before torch)."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def _dynamic_vram() -> str | None:
    """Switches ComfyUI 0.33's dynamic VRAM on as its main.py does (before torch is imported);
    None when it is on, else why not."""
    import importlib.util

    from labtest import find_comfyui

    sys.path.insert(0, str(find_comfyui()))

    if importlib.util.find_spec("comfy_aimdo") is None:
        return "no comfy-aimdo here (ComfyUI's dynamic VRAM)"
    sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
    import dynamic_check
    from comfy.cli_args import args

    dynamic_check._enable_dynamic_vram(args)
    return None


def child(arch: str, weights: str, px: int, impl: str, mode: str, dynamic: bool, steps: int, tiny: bool,
          usable_vram_gb: float | None, reserve_vram_gb: float | None) -> dict:
    started = time.perf_counter()
    sys.path.insert(0, str(REPO / "tests"))
    cuda = not tiny and _cuda_present()
    row = {"arch": arch, "tiny": tiny, "weights": weights, "px": TINY_PX if tiny else px, "rank": RANK, "impl": impl,
           "memory_mode": mode, "dynamic_vram": dynamic}
    if dynamic and not cuda:
        return {**row, "unsupported": "dynamic VRAM needs an NVIDIA GPU (ComfyUI gives a CPU a regular patcher)"}
    if dynamic:
        why = _dynamic_vram()
        if why:
            return {**row, "unsupported": why}
    import torch

    host = _import_host(cpu=not cuda)
    import comfy.model_management as mm
    import comfy.model_patcher

    patcher_class = None
    if dynamic:
        sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
        import dynamic_check
        from comfy.cli_args import args

        if not dynamic_check._init_devices(args):
            return {**row, "unsupported": "comfy-aimdo did not take this GPU"}
        patcher_class = comfy.model_patcher.CoreModelPatcher
    device = mm.get_torch_device()
    row.update(device=str(device), torch=torch.__version__, comfyui=host.comfyui_version())
    if ARCHS[arch].demo not in host.demos():
        return {**row, "unsupported": f"this ComfyUI has no {ARCHS[arch].demo} model"}
    if impl == "native":
        why = native_missing(native_flags(mode))
        if why:
            return {**row, "unsupported": why}
    if cuda:
        total = mm.get_total_memory(device)
        if usable_vram_gb is not None:
            mm.EXTRA_RESERVED_VRAM = max(0, int(total - usable_vram_gb * 2**30))
        elif reserve_vram_gb is not None:
            mm.EXTRA_RESERVED_VRAM = int(reserve_vram_gb * 2**30)
        row.update(gpu=torch.cuda.get_device_name(device), total_vram_gb=round(total / 2**30, 2),
                   reserved_vram_gb=round(mm.extra_reserved_memory() / 2**30, 2),
                   usable_vram_gb=round((total - mm.extra_reserved_memory()) / 2**30, 2))
    from comfyui_lora_lab.nodes import demo_configs

    sizes = {} if tiny else ARCHS[arch].sizes
    unet = {**getattr(demo_configs, ARCHS[arch].config), **sizes}
    build_start = time.perf_counter()
    # A loader node runs inside inference mode (ours trains on such weights); TrainLoraNode's
    # rebuild of the model runs outside it, so its weights are normal tensors.
    with torch.inference_mode(impl == "ours"):
        patcher = build_unet(host, sizes, weights, device, arch, patcher_class)
    row["build_s"] = round(time.perf_counter() - build_start, 1)
    row["params_b"] = round(sum(p.numel() for p in patcher.model.diffusion_model.parameters()) / 1e9, 3)
    row["patcher"] = type(patcher).__name__
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run = _run_ours if impl == "ours" else _run_native
    times, loss, memory = run(host, patcher, arch, unet, row["px"], mode, steps, cuda)
    row.update(memory=memory, loss=loss, steps=len(times), step_s=statistics.median(times[WARMUP:] or times),
               steps_s=[round(t, 3) for t in times])
    if cuda:
        row["peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        row["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20)
        row["within_usable_vram"] = row["peak_reserved_mb"] <= row["usable_vram_gb"] * 1024
    row["process_s"] = round(time.perf_counter() - started, 1)
    return row


# --- parent: one process per run ----------------------------------------------------------------

def run_child(args, arch: str, weights: str, px: int, run: str, dynamic: bool, timeout: float) -> dict:
    impl, mode = run.split(":")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
           f"{arch},{weights},{px},{impl},{mode},{'on' if dynamic else 'off'}", "--steps", str(args.steps)]
    if args.tiny:
        cmd.append("--tiny")
    if args.usable_vram_gb is not None:
        cmd += ["--usable-vram-gb", str(args.usable_vram_gb)]
    if args.reserve_vram_gb is not None:
        cmd += ["--reserve-vram-gb", str(args.reserve_vram_gb)]
    base = {"arch": arch, "tiny": args.tiny, "weights": weights, "px": TINY_PX if args.tiny else px, "impl": impl,
            "memory_mode": mode, "dynamic_vram": dynamic}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        tail = (error.stderr or b"")[-1500:]
        sys.stderr.write(tail.decode(errors="replace") if isinstance(tail, bytes) else tail)
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-6000:])
        last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        return {**base, "error": f"exit {proc.returncode}: {last[0]}"[:300]}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _cell(row: dict, key: str, fmt: str = "{}") -> str:
    value = row.get(key)
    return "" if value is None else fmt.format(value)


def markdown(rows: list[dict]) -> str:
    head = ("| arch | params B | weights | px | impl | memory mode | dynamic VRAM | peak allocated MB | peak reserved MB | "
            "within usable VRAM | step s (median) | memory state | loss | note |")
    out = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in rows:
        note = r.get("error") or r.get("unsupported") or r.get("skipped") or ""
        within = "" if "within_usable_vram" not in r else ("yes" if r["within_usable_vram"] else "no")
        arch = r.get("arch", "") + (" (tiny)" if r.get("tiny") else "")
        out.append(f"| {arch} | {_cell(r, 'params_b')} | {r.get('weights', '')} | {r.get('px', '')} | {r.get('impl', '')} | "
                   f"{r.get('memory_mode', '')} | {'on' if r.get('dynamic_vram') else 'off'} | "
                   f"{_cell(r, 'peak_allocated_mb')} | {_cell(r, 'peak_reserved_mb')} | {within} | "
                   f"{_cell(r, 'step_s', '{:.3f}')} | {r.get('memory', '')} | {_cell(r, 'loss', '{:.4g}')} | "
                   f"{note.replace('|', '/')} |")
    first = next((r for r in rows if "device" in r), {})
    if first:
        out.append("")
        out.append(f"{first.get('gpu', first['device'])}; usable VRAM {first.get('usable_vram_gb', 'n/a')} GB of "
                   f"{first.get('total_vram_gb', 'n/a')} (ComfyUI reserve {first.get('reserved_vram_gb', 'n/a')} GB); "
                   f"torch {first.get('torch')}; ComfyUI {first.get('comfyui')}; rank {RANK}, batch 1, "
                   f"{first.get('steps', '?')} steps, median of the steps after the first {WARMUP}.")
    return "\n".join(out) + "\n"


def _check_runs(parser, runs: list[str]) -> None:
    for run in runs:
        impl, _, mode = run.partition(":")
        ok = (impl == "ours" and mode in OURS_MODES) or (
            impl == "native" and (mode == "default" or (mode and native_flags(mode) <= set(NATIVE_FLAGS))))
        if not ok:
            parser.error(f"unknown run {run!r}: ours:{'|'.join(OURS_MODES)}, or native:default or native: with "
                         f"{', '.join(NATIVE_FLAGS)} joined by +")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="demo widths on the CPU (runs in seconds)")
    parser.add_argument("--archs", default="flux1-dev", help=f"comma-separated, from {', '.join(ARCHS)}")
    parser.add_argument("--weights", default="fp8_e4m3fn", help="comma-separated Demo Model weight types")
    parser.add_argument("--sizes", default="512,1024", help="comma-separated square pixel sizes")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated impl:mode (ours:auto|full|offload, "
                                                               "native:default or flags offload+bypass+qbwd)")
    parser.add_argument("--dynamic-vram", default="off", help="comma-separated: off, on (ComfyUI 0.33's dynamic VRAM)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--usable-vram-gb", type=float, help="ComfyUI's reserved VRAM set to leave this many GiB")
    parser.add_argument("--reserve-vram-gb", type=float, help="ComfyUI's --reserve-vram (GiB left to others)")
    parser.add_argument("--run-timeout", type=float, default=180, help="seconds per run (process)")
    parser.add_argument("--budget-s", type=float, help="start no run after this many seconds (a `skipped` row)")
    parser.add_argument("--jsonl", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--markdown", type=Path, help="write a Markdown table here (rewritten after each run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arch, weights, px, impl, mode, dynamic = args.child.split(",")
        row = child(arch, weights, int(px), impl, mode, dynamic == "on", args.steps, args.tiny, args.usable_vram_gb,
                    args.reserve_vram_gb)
        print(RESULT_PREFIX + json.dumps(row), flush=True)
        return
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    _check_runs(parser, runs)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if any(a not in ARCHS for a in archs):
        parser.error(f"--archs: from {', '.join(ARCHS)}")
    dynamics = [d.strip() for d in args.dynamic_vram.split(",") if d.strip()]
    if not dynamics or any(d not in ("off", "on") for d in dynamics):
        parser.error("--dynamic-vram: off, on or off,on")
    started, rows = time.monotonic(), []
    sizes = [int(s) for s in args.sizes.split(",")][:1 if args.tiny else None]  # --tiny trains one size
    # Sizes innermost: with a time budget, the last runs (native:default by default) are skipped first.
    for arch, weights, dynamic, run, px in itertools.product(archs, args.weights.split(","), dynamics, runs, sizes):
        elapsed = time.monotonic() - started
        if args.budget_s is not None and elapsed >= args.budget_s:
            impl, mode = run.split(":")
            row = {"arch": arch, "tiny": args.tiny, "weights": weights, "px": px, "impl": impl, "memory_mode": mode,
                   "dynamic_vram": dynamic == "on", "skipped": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            timeout = args.run_timeout if args.budget_s is None else \
                max(10.0, min(args.run_timeout, args.budget_s + args.run_timeout / 2 - elapsed))
            print(f"[{time.strftime('%H:%M:%S')} +{elapsed:.0f}s] {arch} {weights} {px} px {run} dynamic VRAM {dynamic}",
                  file=sys.stderr, flush=True)
            row = run_child(args, arch, weights, px, run, dynamic == "on", timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if args.markdown:
            args.markdown.write_text(markdown(rows))

if __name__ == "__main__":
    main()
