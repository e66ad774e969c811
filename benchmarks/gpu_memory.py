"""Peak memory and step time of LoRA Lab training on full-size architectures with random weights
(Flux.1-dev here), per weight type, resolution and memory mode; one JSON line per run.

    python benchmarks/gpu_memory.py --tiny                       # CPU, demo widths (CI)
    python benchmarks/gpu_memory.py --weights fp8_e4m3fn --sizes 512,1024 --reserve-vram-gb 123

The model is the Demo Model's Flux built through ComfyUI's own detection and classes at the
architecture's real sizes (FLUX1_DEV below), weights random, stored in the chosen type; the
conditioning is random at the real widths (256 T5 tokens, CLIP-L pooled). Rank 16, batch 1, AdamW,
per-block checkpointing, compute in bf16 on a GPU (fp32 on a CPU). `--reserve-vram-gb` sets
ComfyUI's reserved VRAM (its --reserve-vram) so that a large card behaves like a smaller one and
`auto` loads partially. Reported: peak torch.cuda.max_memory_allocated and reserved (MB), the
median step time after WARMUP steps, and the memory state the run reported.

Not yet here (see docs/benchmarks.md): ComfyUI 0.33's TrainLoraNode for comparison, and the
Flux.2 Klein, Z-Image and Qwen-Image architectures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLUX1_DEV = {"hidden_size": 3072, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
             "context_in_dim": 4096, "vec_in_dim": 768, "axes_dim": [16, 56, 56]}
TOKENS = 256
RANK = 16
WARMUP = 2


def _import_host():
    sys.path.insert(0, str(REPO / "tests"))
    from labtest import find_comfyui, register_pack
    from labtest.inprocess import import_comfyui

    comfy_dir = find_comfyui()
    if comfy_dir is None:
        raise SystemExit("no ComfyUI source tree found: set COMFYUI_PATH")
    import_comfyui(comfy_dir)
    register_pack()
    from comfyui_lora_lab.nodes import host

    return host


def run(host, weights: str, size: int, mode: str, steps: int, tiny: bool) -> dict:
    import torch
    from unittest import mock

    import comfy.model_management as mm
    from comfyui_lora_lab.nodes import demo_configs
    from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig

    sizes = {} if tiny else FLUX1_DEV
    with torch.inference_mode(), mock.patch.dict(demo_configs.FLUX_UNET, sizes):
        demo = host.build_demo_model("Flux", weights, 0)
    unet = demo_configs.FLUX_UNET | sizes
    model = demo.model
    device = model.load_device
    cuda = device.type == "cuda"
    if cuda:
        model = model.clone()
        model.set_model_compute_dtype(torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
    network = AdapterNetwork(host.target_modules(model, "attention+mlp"), NetworkConfig("LoRA", RANK, RANK), seed=0)
    latent_size = (64 if tiny else size) // 8
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 16, latent_size, latent_size, generator=g)
    cond = [torch.randn(1, TOKENS, unet["context_in_dim"], generator=g),
            {"pooled_output": torch.randn(1, unet["vec_in_dim"], generator=g)}]
    times = []
    with torch.inference_mode(False), host.TrainingModel(model, network, True, 1.0, memory_mode=mode,
                                                         latent_shape=tuple(x0.shape)) as tm:
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
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
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        memory = tm.memory
    result = {"arch": "flux1-dev" if not tiny else "flux-tiny", "weights": weights, "px": size, "rank": RANK,
              "impl": "ours", "memory_mode": mode, "memory": memory, "loss": float(loss),
              "step_s": statistics.median(times[WARMUP:] or times), "device": str(device),
              "reserved_vram_gb": mm.extra_reserved_memory() / 2**30 if cuda else None}
    if cuda:
        result["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="demo widths (runs on a CPU in seconds)")
    parser.add_argument("--weights", default="bf16,fp8_e4m3fn", help="comma-separated Demo Model weight types")
    parser.add_argument("--sizes", default="512,1024", help="comma-separated square pixel sizes")
    parser.add_argument("--modes", default="auto", help="comma-separated memory modes (auto, full, offload)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--reserve-vram-gb", type=float, help="ComfyUI's --reserve-vram (GB left to others)")
    args = parser.parse_args()
    host = _import_host()
    if args.reserve_vram_gb is not None:
        import comfy.model_management as mm

        mm.EXTRA_RESERVED_VRAM = int(args.reserve_vram_gb * 2**30)
    for weights in args.weights.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for mode in args.modes.split(","):
                try:
                    row = run(host, weights, size, mode, args.steps, args.tiny)
                except Exception as error:  # out of memory and the like: a row that says so
                    row = {"weights": weights, "px": size, "memory_mode": mode, "error": f"{type(error).__name__}: {error}"[:300]}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
