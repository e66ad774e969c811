"""GPU check: a MODEL loaded by ComfyUI 0.33's own loader is a ModelPatcherDynamic, and LoRA Lab
trains it (through training_clone's non-dynamic delegate) with a finite loss, adapters that learn,
and a saved file that ComfyUI's LoRA loader applies in full. Writes PASS or FAIL and the facts.

    python benchmarks/gpu/dynamic_check.py --out dynamic_check.txt

ComfyUI is imported in-process with its dynamic VRAM switched on the way its main.py does it
(comfy_aimdo.control.init before torch, init_devices, CoreModelPatcher = ModelPatcherDynamic).
The checkpoint is a tiny Flux.1-dev that 0.33's detection reads (width 128: one head of 128, as
detection derives heads from axes_dim [16, 56, 56]). On a CPU (`--allow-cpu`, a smoke test of
this script) ComfyUI never makes a dynamic patcher, so the check says FAIL there.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIZES = {"num_heads": 1, "axes_dim": [16, 56, 56]}
STEPS = 6


def _enable_dynamic_vram(args) -> str:
    """main.py's steps, feature-detected; returns what happened."""
    import comfy_aimdo.control

    try:
        comfy_aimdo.control.init(simple_vram_headroom=None, nvml_pressure=not getattr(args, "disable_nvml_pressure", False))
    except TypeError:
        try:
            comfy_aimdo.control.init(simple_vram_headroom=None)
        except TypeError:
            comfy_aimdo.control.init()
    return "control.init done"


def _init_devices(args) -> bool:
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy_aimdo.control

    devices = mm.get_all_torch_devices()
    try:
        ok = comfy_aimdo.control.init_devices((d.index, int(getattr(args, "vram_headroom", 0) * 1024 ** 3)) for d in devices)
    except TypeError:
        ok = comfy_aimdo.control.init_devices(d.index for d in devices)
    if ok:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    return bool(ok)


def check(allow_cpu: bool, facts: list[str]) -> bool:
    sys.path.insert(0, str(REPO / "tests"))
    from labtest import find_comfyui, register_pack

    comfy_dir = find_comfyui()
    if comfy_dir is None:
        raise SystemExit("no ComfyUI source tree found: set COMFYUI_PATH")
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = allow_cpu and not _cuda_present()
    facts.append(_enable_dynamic_vram(args) if not args.cpu else "CPU: dynamic VRAM not enabled")
    from labtest.inprocess import import_comfyui

    import_comfyui(comfy_dir, cpu=args.cpu)
    import torch

    if not args.cpu:
        facts.append(f"aimdo init_devices: {_init_devices(args)}")
    register_pack()
    from comfyui_lora_lab.nodes import demo_configs, host
    from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig

    import comfy.sd
    import comfy.utils

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_memory

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny_flux.safetensors"
        built = gpu_memory.build_unet(host, SIZES, "fp32", torch.device("cpu"))
        comfy.utils.save_torch_file({k: v.contiguous() for k, v in built.model.diffusion_model.state_dict().items()},
                                    str(path))
        del built
        with torch.inference_mode():  # as the executor runs UNETLoader
            model = comfy.sd.load_diffusion_model(str(path))
        facts.append(f"loaded MODEL: {type(model).__name__}, is_dynamic={model.is_dynamic()}, "
                     f"load_device={model.load_device}, class={type(model.model).__name__}")
        ok &= type(model).__name__ == "ModelPatcherDynamic" and model.is_dynamic()

        unet = {**demo_configs.FLUX_UNET, **SIZES}
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(1, 16, 8, 8, generator=g)
        cond = [torch.randn(1, 16, unet["context_in_dim"], generator=g),
                {"pooled_output": torch.randn(1, unet["vec_in_dim"], generator=g)}]
        # As the Train node builds it (nodes/train_run.py): adapters and training on the MODEL's
        # training base (a dynamic patcher's non-dynamic delegate, whose modules are kept).
        base = host.training_base(model)
        facts.append(f"training base: {type(base).__name__}, a new diffusion model: "
                     f"{base.model.diffusion_model is not model.model.diffusion_model}")
        network = AdapterNetwork(host.target_modules(base, "attention+mlp"), NetworkConfig("LoRA", 4, 4), seed=0)
        before = {k: v.detach().clone() for k, v in network.state_dict().items()}
        losses, grads = [], []
        with torch.inference_mode(False):
            with host.TrainingModel(base, network, True, 1.0) as tm:
                facts.append(f"training patcher: {type(tm.patcher).__name__}, is_dynamic={tm.patcher.is_dynamic()}, "
                             f"same diffusion model as the adapters': "
                             f"{tm.patcher.model.diffusion_model is base.model.diffusion_model}, memory: {tm.memory}")
                ok &= not tm.patcher.is_dynamic()
                device = tm.device
                optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
                x, noise = x0.to(device), torch.randn(x0.shape, generator=g).to(device)
                for _ in range(STEPS):
                    sigma = torch.rand(1, generator=g).clamp(0.05, 0.95).to(device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        pred = tm.predict(tm.family.noisy(x, noise, sigma), sigma, [cond])
                    loss = torch.nn.functional.mse_loss(pred.float(), tm.family.target(x, noise, sigma).float())
                    loss.backward()
                    grads.append(sum(float(p.grad.abs().sum()) for p in network.parameters() if p.grad is not None))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(float(loss.detach()))
        changed = sum(int(not torch.equal(before[k], v.detach().cpu().to(before[k].device)))
                      for k, v in network.state_dict().items())
        facts.append(f"losses: {[round(v, 5) for v in losses]}")
        facts.append(f"adapter gradient |sum| per step: {[f'{v:.3g}' for v in grads]}; adapter tensors changed: "
                     f"{changed} of {len(before)}")
        ok &= all(math.isfinite(v) for v in losses)
        if not any(v > 0 for v in grads) or changed == 0:
            facts.append("the adapters got no gradient: they are hooked on modules the training patcher does not run")
            ok = False

        from comfyui_lora_lab.training import lora_file

        saved = lora_file.write_atomic(Path(tmp) / "trained.safetensors", network.cpu().file_state_dict(torch.float32), {})
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        logging.getLogger().addHandler(handler)
        try:
            with torch.inference_mode():  # as LoraLoaderModelOnly runs
                loaded, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(saved), safe_load=True),
                                                          1.0, 0)
        finally:
            logging.getLogger().removeHandler(handler)
        missing = [r for r in records if "lora key not loaded" in r]
        facts.append(f"stock loader: {len(loaded.patches)} weights patched for {len(network.adapters)} adapters, "
                     f"{len(missing)} 'lora key not loaded' messages, loaded MODEL {type(loaded).__name__}")
        ok &= not missing and len(loaded.patches) == len(network.adapters)
    return ok


def _cuda_present() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import subprocess

    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write PASS/FAIL and the facts here too")
    parser.add_argument("--allow-cpu", action="store_true", help="run on a CPU (a smoke test: the check fails there)")
    args = parser.parse_args()
    facts: list[str] = []
    start = time.perf_counter()
    try:
        ok = check(args.allow_cpu, facts)
    except Exception:
        ok = False
        facts.append("error: " + traceback.format_exc()[-3000:])
    report = ("PASS" if ok else "FAIL") + f" ({time.perf_counter() - start:.1f} s)\n" + "".join(f"- {f}\n" for f in facts)
    print(report, flush=True)
    if args.out:
        args.out.write_text(report)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
