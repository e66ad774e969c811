"""The host adapter: the only module of the pack that imports ComfyUI (`comfy.*`, `folder_paths`,
`server`). Everything else talks to ComfyUI through the small functions here, so a change in
ComfyUI's internals is mended in one place. ComfyUI modules are imported inside the functions:
importing this file costs nothing at ComfyUI start-up.

Tested against ComfyUI 0.3.64.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from . import demo_configs

log = logging.getLogger("LoRALab")

TESTED_COMFYUI_VERSIONS = ("0.3.64",)


def comfyui_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "unknown"


def check_host() -> list[str]:
    """Feature checks for what the pack relies on. Returns problems (empty when all is there)."""
    problems = []
    try:
        from comfy.model_patcher import ModelPatcher
    except ImportError as e:
        return [f"ComfyUI's comfy.model_patcher cannot be imported ({e})"]
    for method in ("clone", "add_patches", "add_weight_wrapper", "set_model_patch"):
        if not hasattr(ModelPatcher, method):
            problems.append(f"ModelPatcher.{method} is missing")
    version = comfyui_version()
    if version not in TESTED_COMFYUI_VERSIONS:
        log.info("LoRA Lab was tested with ComfyUI %s; this is %s",
                 ", ".join(TESTED_COMFYUI_VERSIONS), version)
    return problems


# --- Demo models -----------------------------------------------------------------------------

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DemoModel:
    model: object  # comfy.model_patcher.ModelPatcher
    clip: object  # comfy.sd.CLIP
    vae: object  # comfy.sd.VAE


def randomize_module(module: torch.nn.Module, seed: int) -> None:
    """Fills every parameter and buffer deterministically (ComfyUI builds modules without
    initialising them). Weights ~ N(0, 1/fan_in) keep activations bounded through the tiny
    depth; 1-D scales (norm weights) are 1 and biases small, so no layer starts as a no-op."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            if tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                values = torch.randn(tensor.shape, generator=gen) / fan_in ** 0.5
            elif name.endswith("bias"):
                values = torch.randn(tensor.shape, generator=gen) * 0.02
            else:
                values = torch.ones(tensor.shape)
            tensor.copy_(values.to(tensor.dtype))


def _clip_target(family: str):
    from comfy import sd1_clip, sdxl_clip
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import flux

    if family == "Flux":
        return ClipTarget(flux.FluxTokenizer, flux.flux_clip())
    if family == "SDXL":
        return ClipTarget(sdxl_clip.SDXLTokenizer, sdxl_clip.SDXLClipModel)
    return ClipTarget(sd1_clip.SD1Tokenizer, sd1_clip.SD1ClipModel)


def _build_clip(family: str, seed: int):
    import comfy.sd

    options = {
        "dtype": torch.float32,  # ComfyUI's CPU default for text encoders is fp16
        "clip_l_model_config": dict(demo_configs.CLIP_L),
        "clip_g_model_config": dict(demo_configs.CLIP_G),
        "t5xxl_model_config": dict(demo_configs.T5XXL),
    }
    clip = comfy.sd.CLIP(target=_clip_target(family), model_options=options)
    randomize_module(clip.cond_stage_model, seed)
    return clip


def _build_vae(latent_channels: int, seed: int):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = demo_configs.vae_config(latent_channels)
    template = AutoencoderKL(**config["params"])
    randomize_module(template, seed)
    vae = comfy.sd.VAE(sd=template.state_dict(), config=config)
    vae.latent_channels = latent_channels  # the config route leaves ComfyUI's default of 4
    return vae


def _build_unet(family: str, weight_dtype: str, seed: int):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    config_class, unet_config = {
        "Flux": (sm.Flux, demo_configs.FLUX_UNET),
        "SD1.5": (sm.SD15, demo_configs.SD15_UNET),
        "SDXL": (sm.SDXL, demo_configs.SDXL_UNET),
    }[family]
    model_config = config_class(unet_config)
    model_config.unet_config.update(unet_config)  # the family's class forces full-size head counts
    dtype = _TORCH_DTYPES[weight_dtype]
    load_device = mm.get_torch_device()
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model({}, "")
    randomize_module(model.diffusion_model, seed)
    model = model.to(mm.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                            offload_device=mm.unet_offload_device())


def build_demo_model(family: str, weight_dtype: str = "fp32", seed: int = 0) -> DemoModel:
    """A tiny random-weight model of `family` built from ComfyUI's own classes, with its text
    encoder(s) and VAE: the same code paths as a real checkpoint, at a size CPU tests afford."""
    if family not in demo_configs.FAMILIES:
        raise ValueError(f"family must be one of {', '.join(demo_configs.FAMILIES)}, not {family!r}")
    if weight_dtype not in _TORCH_DTYPES:
        raise ValueError(f"weight_dtype must be one of {', '.join(_TORCH_DTYPES)}, not {weight_dtype!r}")
    latent_channels = demo_configs.FLUX_UNET["in_channels"] if family == "Flux" else 4
    return DemoModel(
        model=_build_unet(family, weight_dtype, seed),
        clip=_build_clip(family, seed + 1),
        vae=_build_vae(latent_channels, seed + 2),
    )


# --- Training on a ComfyUI MODEL --------------------------------------------------------------

# model_config class name -> base family (file names, metadata, target presets)
_BASE_FAMILIES = {"Flux": "flux", "FluxSchnell": "flux", "SDXL": "sdxl", "SD15": "sd15"}

# Which layers a preset adapts: per base, the block classes searched and, per preset, a filter on
# (block class, the layer's path inside the block) over the block's Linear/Conv2d layers.
_BLOCKS = {
    "flux": ("DoubleStreamBlock", "SingleStreamBlock"),
    "sdxl": ("SpatialTransformer", "ResBlock", "Downsample", "Upsample"),
    "sd15": ("SpatialTransformer", "ResBlock", "Downsample", "Upsample"),
}
_FLUX_ATTENTION = ("attn.qkv", "attn.proj", "linear1", "linear2")
_PRESETS = {
    "flux": {
        "attention": lambda block, path: path.endswith(_FLUX_ATTENTION),
        "attention+mlp": lambda block, path: path.endswith(_FLUX_ATTENTION) or "_mlp." in path,
        "all": lambda block, path: True,
    },
    "unet": {
        "attention": lambda block, path: block == "SpatialTransformer" and (".attn1." in f".{path}" or ".attn2." in f".{path}"),
        "attention+mlp": lambda block, path: block == "SpatialTransformer",
        "all": lambda block, path: True,
    },
}


def base_family(patcher) -> str:
    name = type(patcher.model.model_config).__name__
    if name not in _BASE_FAMILIES:
        raise ValueError(f"unsupported model family {name}: LoRA Lab trains Flux, SDXL and SD1.5 models")
    return _BASE_FAMILIES[name]


def prediction_family(patcher):
    from comfy.model_base import ModelType

    from ..training.objective import FAMILIES

    kind = {ModelType.FLUX: "flow", ModelType.EPS: "eps", ModelType.V_PREDICTION: "v"}.get(patcher.model.model_type)
    if kind is None:
        raise ValueError(f"unsupported prediction type {patcher.model.model_type.name}: LoRA Lab trains eps, "
                         "v-prediction and flow (Flux) models")
    return FAMILIES[kind]


def _lora_names(patcher, base: str) -> dict[str, str]:
    """Weight key -> the kohya-format name the stock LoraLoader maps back to it. SD1.5 files
    use diffusers block names; Flux and SDXL files use ComfyUI's module paths."""
    import comfy.lora

    names: dict[str, list[str]] = {}
    for lora_key, target in comfy.lora.model_lora_keys_unet(patcher.model, {}).items():
        if isinstance(target, str) and lora_key.startswith("lora_unet_"):
            names.setdefault(target, []).append(lora_key)
    chosen = {}
    for weight_key, candidates in names.items():
        path_style = "lora_unet_" + weight_key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        diffusers = [c for c in candidates if c != path_style]
        chosen[weight_key] = diffusers[0] if base == "sd15" and diffusers else path_style
    return chosen


def target_modules(patcher, preset: str) -> dict[str, torch.nn.Module]:
    """{file name prefix: layer} for the preset, every name loadable by the stock LoraLoader."""
    base = base_family(patcher)
    presets = _PRESETS["flux" if base == "flux" else "unet"]
    if preset not in presets:
        raise ValueError(f"target preset must be one of {', '.join(presets)}, not {preset!r}")
    wanted = presets[preset]
    names = _lora_names(patcher, base)
    targets = {}
    for block_path, block in patcher.model.diffusion_model.named_modules():
        block_class = type(block).__name__
        if block_class not in _BLOCKS[base]:
            continue
        for path, layer in block.named_modules():
            if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or not wanted(block_class, path):
                continue
            key = f"diffusion_model.{block_path}.{path}.weight"
            if key not in names:
                raise RuntimeError(f"ComfyUI's LoRA key map has no name for {key}: this ComfyUI version "
                                   "is not supported for training")
            targets[names[key]] = layer
    return targets


def _raw_output_sampling(model_sampling):
    """A copy of the model's sampling object whose calculate_denoised returns the raw network
    output (ε, v or flow velocity) instead of x0, so the loss is taken in the model's own
    prediction space: x0-space MSE would reweight timesteps by σ²."""
    import copy

    class RawOutput(type(model_sampling)):
        def calculate_denoised(self, sigma, model_output, model_input):
            return model_output

    raw = copy.copy(model_sampling)
    raw.__class__ = RawOutput
    return raw


def _detached(weight):
    return weight.detach()


def _freeze_base_weights(patcher, root: str = "diffusion_model") -> None:
    """Frozen weights must be usable in backward without being trained: loader nodes make
    inference tensors (which autograd refuses to save), and ComfyUI parameters require grad.
    ComfyUI's cast layers get a weight wrapper that hands autograd a fresh detached copy; the few
    other parameters (norm scales) get patcher-scoped detached clones. Both are undone when the
    patcher is unloaded: the shared module itself is never changed."""
    from comfy.ops import CastWeightBiasOp

    top = patcher.model.get_submodule(root)
    for module_path, module in top.named_modules():
        for name, param in module.named_parameters(recurse=False):
            key = ".".join(part for part in (root, module_path, name) if part)
            if isinstance(module, CastWeightBiasOp) and name in ("weight", "bias"):
                patcher.add_weight_wrapper(key, _detached)
            else:
                patcher.add_object_patch(key, torch.nn.Parameter(param.detach().clone(), requires_grad=False))


def _attach_with(patcher, network) -> None:
    """Adapters attached while `patcher` is loaded (injected), detached when it is unloaded:
    scoped to this patcher, never to the shared module's other users."""
    from comfy.patcher_extension import PatcherInjection

    patcher.set_injections("loralab_adapters", [PatcherInjection(
        inject=lambda _: network.attach(), eject=lambda _: network.detach())])


def _copies_of_saved_tensors():
    """Autograd keeps its own copy of every tensor it saves, so ComfyUI blocks that add into
    their inputs in place (`x += …`) cannot invalidate them."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)


def _flux_block(block, args: dict) -> dict:
    common = dict(vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                  transformer_options=args.get("transformer_options"))
    if "txt" in args:
        img, txt = block(img=args["img"], txt=args["txt"], **common)
        return {"img": img, "txt": txt}
    return {"img": block(args["img"], **common)}


def _flux_block_patch(block, checkpoint: bool):
    """Runs a Flux block so autograd survives its in-place adds (`img += …`): with checkpointing,
    recomputed per block (use_reentrant=False) on cloned inputs; without, with every tensor
    autograd saves cloned. The block module is bound here: ComfyUI's `original_block` closure
    refers to a loop variable that has moved on by the time a checkpoint recomputes."""

    def patch(args, extra):
        keys = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        out_keys = ("img", "txt") if "txt" in args else ("img",)

        def run(*values):
            out = _flux_block(block, {**args, **{k: v.clone() for k, v in zip(keys, values)}})
            return tuple(out[k] for k in out_keys)

        values = [args[k] for k in keys]
        if checkpoint and torch.is_grad_enabled():
            outs = torch.utils.checkpoint.checkpoint(run, *values, use_reentrant=False)
        else:
            with _copies_of_saved_tensors():
                outs = run(*values)
        return dict(zip(out_keys, outs))

    return patch


# Text encoders trained with the diffusion model, and the file prefixes kohya-format files use
# for them (T5 training is out of scope).
_TEXT_ENCODER_PREFIXES = {"sd15": {"clip_l": "lora_te_"}, "sdxl": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
                          "flux": {"clip_l": "lora_te1_"}}


def text_encoder_targets(clip, base: str) -> dict[str, torch.nn.Module]:
    """{file name prefix: Linear} for the CLIP text encoder layers (attention and MLP)."""
    import comfy.lora

    prefixes = _TEXT_ENCODER_PREFIXES[base]
    names = {}
    for lora_key, target in comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}).items():
        encoder = target.split(".")[0] if isinstance(target, str) else None
        if encoder in prefixes and lora_key.startswith(prefixes[encoder]):
            names[target] = lora_key
    targets = {}
    for path, module in clip.cond_stage_model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".encoder.layers." in path and f"{path}.weight" in names:
            targets[names[f"{path}.weight"]] = module
    if not targets:
        raise RuntimeError("ComfyUI's LoRA key map names no text-encoder layer of this CLIP: text-encoder training "
                           "is not supported for it")
    return targets


class TrainingTextEncoder:
    """A CLIP clone that encodes captions with gradients, its adapters attached the same
    patcher-scoped way as the diffusion model's."""

    def __init__(self, clip, network):
        self.clip = clip.clone()
        self.network = network
        self.patcher = self.clip.patcher
        _attach_with(self.patcher, network)
        _freeze_base_weights(self.patcher, root="")

    def encode(self, caption: str):
        # ComfyUI's CLIP layers add into their inputs in place (`x += …`): autograd keeps a copy
        # of what it saves (a few activations of 77 tokens).
        with _copies_of_saved_tensors():
            return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(caption))[0]

    def close(self) -> None:
        self.network.detach()
        _unload(self.patcher)


_UNET_CHECKPOINTED = ("ResBlock", "SpatialTransformer")


def _checkpointed_forward(module):
    forward = type(module).forward.__get__(module)

    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def _unet_checkpointing(patcher):
    """Per-block checkpointing for UNets, as a patcher injection: the blocks' `forward` is
    replaced on the instances while this patcher is loaded and restored when it is unloaded
    (ComfyUI's own checkpoint helper in the UNet is a no-op)."""
    from comfy.patcher_extension import PatcherInjection

    layers = [m for m in patcher.model.diffusion_model.modules() if type(m).__name__ in _UNET_CHECKPOINTED]

    def inject(_):
        for layer in layers:
            layer.forward = _checkpointed_forward(layer)

    def eject(_):
        for layer in layers:
            layer.__dict__.pop("forward", None)

    patcher.set_injections("loralab_checkpointing", [PatcherInjection(inject=inject, eject=eject)])


class TrainingModel:
    """The input MODEL prepared for training on a clone: adapters attached through a patcher
    injection, frozen weights wrapped, raw-output sampling, Flux block patches. Nothing touches
    the input MODEL's patcher, and `close()` (or leaving the `with` block) undoes it all."""

    def __init__(self, model, network, checkpointing: bool, guidance: float | None, text_encoder=None):
        self.base = base_family(model)
        self.family = prediction_family(model)
        self.patcher = model.clone()
        self.network = network
        self.guidance = guidance if self.base == "flux" and self._has_guidance() else None
        if network is not None:  # None: the model as it is (evaluation, comparisons)
            _attach_with(self.patcher, network)
        self.patcher.add_object_patch("model_sampling", _raw_output_sampling(model.get_model_object("model_sampling")))
        _freeze_base_weights(self.patcher)
        if self.base == "flux":
            unet = self.patcher.model.diffusion_model
            for kind, blocks in (("double_block", unet.double_blocks), ("single_block", unet.single_blocks)):
                for i, block in enumerate(blocks):
                    self.patcher.set_model_patch_replace(_flux_block_patch(block, checkpointing), "dit", kind, i)
        elif checkpointing:
            _unet_checkpointing(self.patcher)
        sampling = model.get_model_object("model_sampling")
        self.sigma_table = None if self.base == "flux" else sampling.sigmas.detach().float().clone()
        self.device = self.patcher.load_device
        self.text_encoder = text_encoder  # captions are then encoded every step, with gradients

    def _has_guidance(self) -> bool:
        return bool(getattr(self.patcher.model.diffusion_model.params, "guidance_embed", False))

    @property
    def _patchers(self) -> list:
        return [self.patcher] + ([self.text_encoder.patcher] if self.text_encoder is not None else [])

    def _ensure_loaded(self) -> None:
        """Loads (and so patches and injects) every patcher that training uses, unless they are
        all loaded already: loading another model (sampling, a text encoder) may evict one."""
        import comfy.model_management as mm

        loaded = {id(m.model) for m in mm.current_loaded_models}
        if any(id(p) not in loaded or (p.injections and not p.is_injected) for p in self._patchers):
            mm.load_models_gpu(self._patchers, force_full_load=True)

    def __enter__(self):
        import comfy.model_management as mm

        mm.load_models_gpu(self._patchers, force_full_load=True)
        if self.network is not None:
            self.network.to(self.device)
        if self.text_encoder is not None:
            self.text_encoder.network.to(self.text_encoder.patcher.load_device)
        self.reload()  # adapters attached (also on every re-injection; attach() is idempotent)
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.network is not None:
            self.network.detach()
        if self.text_encoder is not None:
            self.text_encoder.close()
        _unload(self.patcher)

    def reload(self) -> None:
        """Back on the device after another patcher of the same model (sampling) was loaded."""
        import comfy.model_management as mm

        mm.load_models_gpu(self._patchers, force_full_load=True)
        for network in (self.network, self.text_encoder.network if self.text_encoder else None):
            if network is not None:
                network.attach()

    def predict(self, noisy, sigma, conds: list):
        """Raw model output for a batch; `conds` holds one CONDITIONING entry per sample, or its
        caption when the text encoder is trained."""
        self._ensure_loaded()
        if self.text_encoder is not None:
            conds = [self.text_encoder.encode(c) if isinstance(c, str) else c for c in conds]
        kwargs = self._model_kwargs(conds, noisy)
        return self.patcher.model.apply_model(noisy, sigma, transformer_options=self.patcher.model_options["transformer_options"],
                                              **kwargs)

    def _model_kwargs(self, conds: list, noisy) -> dict:
        per_sample = []
        for i, (cross_attn, extra) in enumerate(conds):
            params = {**extra, "cross_attn": cross_attn, "device": self.device, "noise": noisy[i:i + 1],
                      "width": noisy.shape[-1] * 8, "height": noisy.shape[-2] * 8, "prompt_type": "positive"}
            if self.guidance is not None:
                params["guidance"] = self.guidance
            per_sample.append(self.patcher.model.extra_conds(**params))
        out = {}
        for key, first in per_sample[0].items():
            value = first.concat([s[key] for s in per_sample[1:]]) if len(per_sample) > 1 else first.cond
            out[key] = value.to(self.device) if isinstance(value, torch.Tensor) else value
        return out


def _unload(patcher) -> None:
    """Takes a patcher off the device and undoes its patches, injections and wrappers."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
    patcher.detach(unpatch_all=True)


def encode_images(vae, model, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE (B,H,W,3) in [0,1] -> latents in the model's space (VAE output, then the model's
    process_latent_in: Flux (x−0.1159)·0.3611, SD1.5 ×0.18215, SDXL ×0.13025)."""
    with torch.no_grad():  # frozen encoders: no graph (their weights may be inference tensors)
        return model.model.process_latent_in(vae.encode(pixels[..., :3]))


def encode_caption(clip, text: str):
    """The CONDITIONING entry ([cond, {pooled_output, ...}]) of one caption."""
    with torch.no_grad():
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0]


def clip_skip(clip) -> int | None:
    """kohya's clip skip (1 = last layer) from an upstream CLIPSetLastLayer, or None."""
    layer = getattr(clip, "layer_idx", None)
    return -layer if layer is not None and layer < 0 else None


# --- Host services: folders, progress, cancel -------------------------------------------------

def loras_folder():
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def find_lora(name: str):
    """Full path of a LoRA by its name in ComfyUI's loras folders, or by a full path that lies
    inside one of them (a Train node's lora_path output); anything else is a clear error."""
    import folder_paths

    path = folder_paths.get_full_path("loras", name)
    if path is not None:
        return Path(path)
    candidate = Path(name).resolve()
    if candidate.is_file() and any(candidate.is_relative_to(Path(root).resolve())
                                   for root in folder_paths.get_folder_paths("loras")):
        return candidate
    raise FileNotFoundError(f"continue_from: LoRA {name!r} is not in ComfyUI's loras folders")


def lora_file_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("loras")


def state_file_names(suffix: str) -> list[str]:
    """Training-state files (relative names) in ComfyUI's loras folders."""
    import folder_paths

    names = set()
    for root in folder_paths.get_folder_paths("loras"):
        base = Path(root)
        if base.is_dir():
            names.update(p.relative_to(base).as_posix() for p in base.rglob(f"*{suffix}"))
    return sorted(names)


def find_state_file(name: str) -> Path:
    """A training-state file by its relative name; never a path outside the loras folders."""
    import folder_paths

    for root in folder_paths.get_folder_paths("loras"):
        base = Path(root).resolve()
        candidate = (base / name).resolve()
        if candidate.is_relative_to(base) and candidate.is_file():
            return candidate
    raise FileNotFoundError(f"resume_from: {name!r} is not a training state in ComfyUI's loras folders")


def interrupted() -> bool:
    import comfy.model_management as mm

    return mm.processing_interrupted()


def interrupt_exception():
    import comfy.model_management as mm

    return mm.InterruptProcessingException()


class Progress:
    """ComfyUI's progress bar (with an optional preview image) and progress text on a node."""

    def __init__(self, total: int, node_id: str | None):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.node_id = node_id

    def update(self, step: int, preview=None) -> None:
        self.bar.update_absolute(step, preview=("JPEG", preview, 512) if preview is not None else None)

    def text(self, text: str) -> None:
        from server import PromptServer

        if self.node_id is not None and getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)


def apply_lora(model, tensors: dict, strength: float = 1.0, clip=None):
    """The MODEL (and CLIP, when given) with a LoRA applied exactly as the stock LoraLoader
    applies a file."""
    import comfy.sd

    patched, patched_clip = comfy.sd.load_lora_for_models(model, clip, tensors, strength, strength if clip else 0)
    return patched if clip is None else (patched, patched_clip)


def sampler_names() -> tuple[list[str], list[str]]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def sample_images(model, network, clip, vae, prompts: list[str], settings) -> torch.Tensor:
    """Images (N,H,W,3) from `prompts` with the adapter attached the same patcher-scoped way as
    in training (a separate clone, so training's raw-output patch does not apply)."""
    import comfy.sample
    import node_helpers

    patcher = model.clone()
    if network is not None:
        _attach_with(patcher, network)
    channels = model.get_model_object("latent_format").latent_channels
    latent = torch.zeros(1, channels, settings.height // 8, settings.width // 8)
    negative = encode_caption(clip, settings.negative)
    images = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                positive = [encode_caption(clip, prompt)]
                if base_family(model) == "flux":
                    positive = node_helpers.conditioning_set_values(positive, {"guidance": settings.guidance})
                noise = comfy.sample.prepare_noise(latent, settings.seed)
                out = comfy.sample.sample(patcher, noise, settings.steps, settings.cfg, settings.sampler, settings.scheduler,
                                          positive, [negative], latent, seed=settings.seed, disable_pbar=True)
                images.append(vae.decode(out)[..., :3].float().cpu())
    finally:
        _unload(patcher)
        if network is not None:
            network.detach()
    return torch.cat(images)


# --- Dataset folders --------------------------------------------------------------------------

CONFIG_FILE_NAME = "loralab_config.json"


def input_folder() -> Path:
    import folder_paths

    return Path(folder_paths.get_input_directory()).resolve()


def input_subfolders(depth: int = 2) -> list[str]:
    """Folders inside ComfyUI's input folder (relative, up to `depth` levels), for a combo."""
    root = input_folder()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_dir() and len(path.relative_to(root).parts) <= depth and not path.name.startswith("."):
            found.append(path.relative_to(root).as_posix())
    return found


def config_path() -> Path:
    """The pack's config file: $LORALAB_CONFIG, else loralab_config.json in the pack folder."""
    import os

    return Path(os.environ.get("LORALAB_CONFIG") or Path(__file__).resolve().parents[1] / CONFIG_FILE_NAME)


def allowed_dataset_roots() -> list[Path]:
    """ComfyUI's input folder plus the roots the user listed under "dataset_roots" in the config
    file. A path typed into a node is only read when it lies under one of them: a server that
    listens on a network must not read arbitrary files for whoever reaches it."""
    import json

    roots = [input_folder()]
    path = config_path()
    if path.is_file():
        try:
            extra = json.loads(path.read_text(encoding="utf-8")).get("dataset_roots", [])
        except (OSError, ValueError, AttributeError) as error:
            raise ValueError(f"{path}: cannot read the LoRA Lab config ({error})") from None
        roots += [Path(p).expanduser().resolve() for p in extra]
    return roots


def resolve_dataset_folder(folder: str, custom_path: str) -> tuple[Path, Path]:
    """(root, folder) for a Load Dataset node: a folder of the input directory, or a typed path
    that must resolve inside an allowed root."""
    if custom_path.strip():
        target = Path(custom_path.strip()).expanduser().resolve()
        for root in allowed_dataset_roots():
            if target.is_relative_to(root):
                return root, target
        raise ValueError(f"custom_path: {target} is not inside an allowed dataset root; add its parent to "
                         f"\"dataset_roots\" in {config_path()} (allowed now: "
                         f"{', '.join(str(r) for r in allowed_dataset_roots())})")
    root = input_folder()
    target = (root / folder).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"folder: {folder!r} is outside ComfyUI's input folder")
    return root, target


# --- Background-removal weights ---------------------------------------------------------------

def rembg_model_folders() -> list[Path]:
    """ComfyUI's models/rembg folder(s), registered on first use so extra_model_paths.yaml can
    add more; background removal looks there before rembg's own homes."""
    import folder_paths

    if "rembg" not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path("rembg", str(Path(folder_paths.models_dir) / "rembg"), is_default=True)
    return [Path(p) for p in folder_paths.get_folder_paths("rembg")]


# --- Canvas: events and the run history route ---------------------------------------------------

_routes_registered = False


def register_routes() -> None:
    """GET /loralab/runs (the recent runs) and /loralab/runs/{node_id} (the latest run of a node,
    every step): the canvas chart re-fetches these after a reload or in a second tab."""
    global _routes_registered
    if _routes_registered:
        return
    from aiohttp import web
    from server import PromptServer

    from . import run_log

    if getattr(PromptServer, "instance", None) is None:
        return
    routes = PromptServer.instance.routes

    @routes.get("/loralab/runs")
    async def runs(request):
        return web.json_response(run_log.all_runs())

    @routes.get("/loralab/runs/{node_id}")
    async def run(request):
        log = run_log.latest(request.match_info["node_id"])
        return web.json_response(log.as_dict() if log else None)

    _routes_registered = True


def emit(payload: dict) -> None:
    """A `loralab.progress` event to every connected page (a second tab follows the run too)."""
    from server import PromptServer

    from .run_log import EVENT

    if getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.send_sync(EVENT, payload, None)


def save_temp_images(images: torch.Tensor, prefix: str) -> list[dict]:
    """PNG files in ComfyUI's temp folder, as the {filename, subfolder, type} entries the
    frontend shows on a node (they stay visible after the run)."""
    import numpy as np
    from PIL import Image

    import folder_paths

    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_temp_directory(),
                                                                           images.shape[2], images.shape[1])
    entries = []
    for image in images:
        filename = f"{name}_{counter:05}_.png"
        Image.fromarray((image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(Path(folder) / filename)
        entries.append({"filename": filename, "subfolder": subfolder, "type": "temp"})
        counter += 1
    return entries
