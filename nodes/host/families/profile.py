"""What LoRA Lab knows about one model family, beyond what ComfyUI already knows: the exact model
classes it admits, the blocks it adapts and checkpoints, what each target preset adapts, the key
style and metadata names its LoRA files use, which text encoders train, and how its tiny demo
model is built. Everything else (prediction space, σ schedule, conditioning, latent format) is
read from the loaded model by the generic path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# (block class name, the layer's path inside the block) -> adapt it?
LayerFilter = Callable[[str, str], bool]


def everything(block: str, path: str) -> bool:
    return True


@dataclass(frozen=True)
class Demo:
    """The Demo Model node's tiny model of the family. `label` is the node's combo entry (kept
    forever: saved workflows store it); the callables import ComfyUI lazily."""
    label: str
    model_config: Callable[[], object]  # -> a supported_models config, sizes set
    clip: Callable[[int], object]  # seed -> comfy.sd.CLIP
    vae: Callable[[int], object]  # seed -> comfy.sd.VAE
    available: Callable[[], bool] = lambda: True  # does this ComfyUI have the family's class?


@dataclass(frozen=True)
class FamilyProfile:
    name: str  # LoRA Lab's name of the family (progress text, logs)
    classes: tuple[str, ...]  # exact comfy.supported_models class names (subclasses are not admitted)
    blocks: tuple[str, ...]  # classes of the blocks searched for layers to adapt
    presets: dict[str, LayerFilter]  # "attention", "attention+mlp", "all"
    base_model_version: str  # ss_base_model_version, as the trainers people use write it
    architecture: str  # modelspec.architecture
    implementation: str = "https://github.com/Stability-AI/generative-models"  # modelspec.implementation
    key_style: str = "module"  # "module": lora_unet_<ComfyUI module path>; "diffusers": diffusers block names
    text_encoders: dict[str, str] = field(default_factory=dict)  # CLIP encoder attr -> kohya file prefix
    text_encoder_note: str = ""  # why a text encoder of this family cannot train (LLM/T5 encoders)
    has_convolutions: bool = False  # do its blocks hold Conv2d layers (LoCon's conv rank)?
    copies_without_checkpointing: bool = True  # blocks add into saved tensors in place
    guidance: Callable[[object], bool] = lambda diffusion_model: False  # takes a guidance embedding?
    flow_default: str = "shift"  # 'auto' timestep sampling: "shift" (by the model's own shift) or "sigmoid"
    demos: tuple[Demo, ...] = ()
    checkpointed: tuple[str, ...] | None = None  # block classes checkpointed one by one (None: `blocks`)
    # (ss_base_model_version, modelspec.architecture) from the model's unet_config, for families
    # whose trainers name each variant (SD3 medium / 3.5 medium / 3.5 large); None: the fixed pair
    variant_names: Callable[[dict], tuple[str, str]] | None = None

    @property
    def checkpoint_blocks(self) -> tuple[str, ...]:
        return self.blocks if self.checkpointed is None else self.checkpointed

    def names(self, model) -> tuple[str, str]:
        """(ss_base_model_version, modelspec.architecture) of a MODEL of this family."""
        if self.variant_names is None:
            return self.base_model_version, self.architecture
        return self.variant_names(model.model.model_config.unet_config)

    def preset(self, name: str) -> LayerFilter:
        if name not in self.presets:
            raise ValueError(f"target preset must be one of {', '.join(self.presets)}, not {name!r}")
        return self.presets[name]
