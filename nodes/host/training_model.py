"""The MODEL (and CLIP) prepared for training on a patcher clone, and encoding of images and
captions. Nothing here touches the input MODEL's patcher: adapters, weight wrappers and block
patches live on the clone and are undone when it is unloaded."""

from __future__ import annotations

import contextlib

import torch

from . import autograd
from .families import prediction_family, profile_of
from .version import training_flags


def training_base(model):
    """The MODEL training works on. ComfyUI 0.33's dynamic patcher (NVIDIA GPUs by default; CPUs
    never get one) is trained through its non-dynamic delegate, as ComfyUI's own samplers do when
    they need a regular patcher. The delegate's modules are built once and kept by the dynamic
    patcher, so the adapters (made from this MODEL's layers), training and samples all use the
    same modules."""
    is_dynamic = getattr(model, "is_dynamic", None)
    if is_dynamic is not None and is_dynamic() and hasattr(model, "get_non_dynamic_delegate"):
        return model.get_non_dynamic_delegate()
    return model


def training_clone(model):
    """A clone to train (or sample) with patcher-scoped changes."""
    return training_base(model).clone()


def attach_with(patcher, network) -> None:
    """Adapters attached while `patcher` is loaded (injected), detached when it is unloaded:
    scoped to this patcher, never to the shared module's other users."""
    from comfy.patcher_extension import PatcherInjection

    patcher.set_injections("loralab_adapters", [PatcherInjection(
        inject=lambda _: network.attach(), eject=lambda _: network.detach())])


def unload(patcher) -> None:
    """Takes a patcher off the device and undoes its patches, injections and wrappers."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
    patcher.detach(unpatch_all=True)


def _loaded(patcher):
    import comfy.model_management as mm

    return next((m for m in mm.current_loaded_models if m.model is patcher), None)


def _load_with_budget(patcher, budget: int) -> None:
    """`patcher` loaded through ComfyUI's LoadedModel with `budget` bytes of weights on its
    device and the rest streamed per layer (ModelPatcher.load's lowvram_model_memory): the path
    load_models_gpu takes when a model does not fit, also on a CPU (which ComfyUI itself always
    loads fully). Other loaded clones of the same model are unloaded first, as ComfyUI does."""
    import comfy.model_management as mm

    if _loaded(patcher) is not None:
        return
    for other in list(mm.current_loaded_models):
        if other.model is not None and patcher.is_clone(other.model):
            mm.current_loaded_models.remove(other)
            other.model_unload()
    loaded = mm.LoadedModel(patcher)
    loaded.model_load(max(int(budget), 1))
    mm.current_loaded_models.insert(0, loaded)


def load_for_training(patchers: list, mode: str = "auto", budget: int | None = None, memory_required: int = 0) -> None:
    """Loads the patchers that training uses through ComfyUI's model management. `full`: fully
    on the device; `auto`: ComfyUI decides as for sampling (full when the weights fit beside
    `memory_required` bytes of training memory, partial otherwise); `offload`: partial on purpose,
    as ComfyUI's own trainer's offloading asks (at most ComfyUI's minimum weight share of free
    memory); `budget` (bytes, the diffusion model's only): exactly that much on the device."""
    import comfy.model_management as mm

    first, rest = patchers[0], patchers[1:]
    if budget is not None:
        _load_with_budget(first, budget)
        if rest:
            mm.load_models_gpu(rest)
    elif mode == "full":
        mm.load_models_gpu(patchers, force_full_load=True)
    elif mode == "offload":
        mm.load_models_gpu(patchers, memory_required=1e20)
    else:
        mm.load_models_gpu(patchers, memory_required=int(memory_required))


def memory_state(patcher) -> str:
    """`full`, or `partial: N of M MB on the device`, as ComfyUI loaded the patcher."""
    total = patcher.model_size()
    if not getattr(patcher.model, "model_lowvram", False):
        return "full"
    def mb(n):
        return f"{n / 2**20:.{0 if n >= 100 * 2**20 else 1}f}"

    return f"partial: {mb(patcher.loaded_size())} of {mb(total)} MB on the device"


def offload_from_device(*objects) -> None:
    """Takes CLIPs/VAEs (anything with a `.patcher`) off the device once their encodings are
    cached: the diffusion model trains without them resident."""
    import comfy.model_management as mm

    patchers = {id(getattr(o, "patcher", None)) for o in objects if o is not None}
    for loaded in list(mm.current_loaded_models):
        if id(loaded.model) in patchers:
            mm.current_loaded_models.remove(loaded)
            loaded.model_unload()


def training_memory_estimate(model, latent_shape) -> int:
    """Bytes of training memory beside the weights for one micro-batch of `latent_shape`: ComfyUI's
    own inference estimate for that input (BaseModel.memory_required), three times over for the
    forward, the recompute and the backward of a checkpointed block."""
    try:
        return 3 * int(model.model.memory_required(list(latent_shape)))
    except Exception:  # a model class without an estimate: ComfyUI's inference reserve only
        return 0


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


class TrainingTextEncoder:
    """A CLIP clone that encodes captions with gradients, its adapters attached the same
    patcher-scoped way as the diffusion model's."""

    def __init__(self, clip, network):
        self.clip = clip.clone()
        self.network = network
        self.patcher = self.clip.patcher
        attach_with(self.patcher, network)
        autograd.freeze_base_weights(self.patcher, root="")

    def encode(self, caption: str):
        # ComfyUI's CLIP layers add into their inputs in place (`x += …`): autograd keeps a copy
        # of what it saves (a few activations of 77 tokens).
        with autograd.copies_of_saved_tensors():
            return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(caption))[0]

    def close(self) -> None:
        self.network.detach()
        unload(self.patcher)


class TrainingModel:
    """The input MODEL prepared for training on a clone: adapters attached through a patcher
    injection, frozen weights wrapped, raw-output sampling, block patches, ComfyUI's training
    flags set. Nothing touches the input MODEL's patcher, and `close()` (or leaving the `with`
    block) undoes it all."""

    def __init__(self, model, network, checkpointing: bool, guidance: float | None, text_encoder=None,
                 memory_mode: str = "auto", memory_budget: int | None = None, keep_activations_blocks: int = 0,
                 latent_shape=None):
        self.profile = profile_of(model)
        self.base = self.profile.name
        self.family = prediction_family(model)
        self.patcher = training_clone(model)
        self.network = network
        unet = self.patcher.model.diffusion_model
        self.guidance = guidance if self.profile.guidance(unet) else None
        if network is not None:  # None: the model as it is (evaluation, comparisons)
            attach_with(self.patcher, network)
        sampling = model.get_model_object("model_sampling")
        self.patcher.add_object_patch("model_sampling", _raw_output_sampling(sampling))
        autograd.freeze_base_weights(self.patcher)
        if checkpointing or self.profile.copies_without_checkpointing:
            autograd.wrap_blocks(self.patcher, self.profile.checkpoint_blocks, checkpoint=checkpointing,
                                 keep_first=keep_activations_blocks)
        flow = type(self.family).__name__ == "Flow"
        self.sigma_table = None if flow else sampling.sigmas.detach().float().clone()
        self.downscale = latent_downscale(model)
        self.device = self.patcher.load_device
        self.text_encoder = text_encoder  # captions are then encoded every step, with gradients
        self._flags = contextlib.ExitStack()
        self.memory_mode, self.memory_budget = memory_mode, memory_budget
        self._memory_required = training_memory_estimate(model, latent_shape) if latent_shape is not None else 0
        self.memory = "not loaded"  # after loading: `full` or `partial: N of M MB on the device`

    @property
    def _patchers(self) -> list:
        return [self.patcher] + ([self.text_encoder.patcher] if self.text_encoder is not None else [])

    def _load(self) -> None:
        load_for_training(self._patchers, self.memory_mode, self.memory_budget, self._memory_required)
        self.memory = memory_state(self.patcher)

    def _ensure_loaded(self) -> None:
        """Loads (and so patches and injects) every patcher that training uses, unless they are
        all loaded already: loading another model (sampling, a text encoder) may evict one."""
        import comfy.model_management as mm

        loaded = {id(m.model) for m in mm.current_loaded_models}
        if any(id(p) not in loaded or (p.injections and not p.is_injected) for p in self._patchers):
            self._load()

    def __enter__(self):
        self._flags.enter_context(training_flags())
        try:
            if self.network is not None:
                self.network.to(self.device)
            if self.text_encoder is not None:
                self.text_encoder.network.to(self.text_encoder.patcher.load_device)
            self.reload()  # loaded, adapters attached (also on every re-injection; attach() is idempotent)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            if self.network is not None:
                self.network.detach()
            if self.text_encoder is not None:
                self.text_encoder.close()
            unload(self.patcher)
        finally:
            self._flags.close()

    def reload(self) -> None:
        """Back on the device after another patcher of the same model (sampling) was loaded."""
        self._load()
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
                      "width": noisy.shape[-1] * self.downscale, "height": noisy.shape[-2] * self.downscale, "prompt_type": "positive"}
            if self.guidance is not None:
                params["guidance"] = self.guidance
            per_sample.append(self.patcher.model.extra_conds(**params))
        out = {}
        for key, first in per_sample[0].items():
            value = first.concat([s[key] for s in per_sample[1:]]) if len(per_sample) > 1 else first.cond
            out[key] = value.to(self.device) if isinstance(value, torch.Tensor) else value
        return out


def sampling_shift(model) -> float:
    """The shift ComfyUI samples a flow model with (its sampling settings, or an upstream
    ModelSampling node's value): the default of the Objective's timestep shift. Read off the
    model's own schedule, σ(t) = s·t / (1 + (s − 1)·t), at t = ½ (s = σ / (1 − σ)): a `shift`
    attribute is that s for SD3-style sampling but a log-shift μ = ln s for Flux-style sampling
    (Chroma's 1.15 samples with s = e^1.15 ≈ 3.16)."""
    sampling = model.get_model_object("model_sampling")
    if not hasattr(sampling, "shift"):
        return 1.0
    sigma = float(sampling.percent_to_sigma(0.5))
    return round(sigma / (1.0 - sigma), 6)  # float32 schedules: 3.0, not 2.9999998


def latent_downscale(model) -> int:
    """Pixels per latent cell: 8 for SD/SDXL/Flux.1 VAEs, 16 for Flux.2's (latent format)."""
    return int(getattr(model.get_model_object("latent_format"), "spacial_downscale_ratio", 8))


def pixel_multiple(model) -> int:
    """Image sides the model trains on are multiples of this: whole latent cells that its patches
    tile (VAE downscale x patch size: Flux.1 and Z-Image 8x2, Flux.2 16x1), and at least 16."""
    patch = getattr(model.model.diffusion_model, "patch_size", 1)
    patch = patch if isinstance(patch, int) else max(patch[-2:])
    return max(16, latent_downscale(model) * patch)


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
