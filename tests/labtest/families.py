"""Model families in the ComfyUI tier. A family exists only in the ComfyUI versions that have its
model class: on the others its cases are "not applicable on this ComfyUI" — left out of the run and
named in the tier's summary (tests/conftest.py), never counted as skipped.

    @pytest.mark.parametrize("family", families.params(["Chroma", "Z-Image"]))
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from . import find_comfyui

_available: list[str] | None = None


def available() -> list[str]:
    """The Demo Model families of the ComfyUI under test (its own feature detection)."""
    global _available
    if _available is None:
        comfy = find_comfyui()
        if comfy is None:
            _available = []
        else:
            from .inprocess import import_comfyui

            import_comfyui(comfy)
            from comfyui_lora_lab.nodes import host

            _available = host.demo_families()
    return _available


def params(cases: list) -> list:
    """pytest params: each case (a family label, or a tuple whose first item is one), marked not
    applicable where this ComfyUI lacks that family (no ComfyUI at all: the whole tier is skipped
    anyway)."""
    have = available()
    out = []
    for case in cases:
        family = case[0] if isinstance(case, tuple) else case
        values = case if isinstance(case, tuple) else (case,)
        out.append(pytest.param(*values, marks=pytest.mark.not_applicable(family)) if have and family not in have
                   else case)
    return out


# What each family's files and latents must look like, independent of the code under test: the
# latent format ComfyUI uses for it, its process_in scaling, one LoRA key of the key style the
# community's files use, kohya's base-model name, and the file prefix of a trainable text
# encoder (None: text-encoder training is refused). Adding a family adds an entry here.
@dataclass(frozen=True)
class Expect:
    latent_format: str
    latent_channels: int
    scaling: tuple[float, float] | None  # x -> (x - shift) * scale; None: per-channel (checked otherwise)
    lora_key: str
    base_model_version: str
    te_prefix: str | None
    flow: bool


EXPECT: dict[str, Expect] = {
    "Flux": Expect("Flux", 16, (0.1159, 0.3611), "lora_unet_double_blocks_0_img_attn_qkv", "flux1",
                   "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", True),
    "Flux.1 schnell": Expect("Flux", 16, (0.1159, 0.3611), "lora_unet_single_blocks_0_linear1", "flux1",
                             "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", True),
    "SD1.5": Expect("SD15", 4, (0.0, 0.18215), "lora_unet_down_blocks_0_attentions_0_proj_in", "sd_v1",
                    "lora_te_text_model_encoder_layers_0_self_attn_q_proj", False),
    "SDXL": Expect("SDXL", 4, (0.0, 0.13025), "lora_unet_input_blocks_1_1_proj_in", "sdxl_base_v1-0",
                   "lora_te2_text_model_encoder_layers_0_self_attn_q_proj", False),
    "Qwen-Image": Expect("Wan21", 16, None, "lora_unet_transformer_blocks_0_attn_to_q", "qwen_image", None, True),
    "Chroma": Expect("Flux", 16, (0.1159, 0.3611), "lora_unet_double_blocks_0_img_attn_qkv", "chroma", None, True),
    "SD3.5": Expect("SD3", 16, (0.0609, 1.5305), "lora_unet_joint_blocks_0_x_block_attn2_qkv", "5-medium",
                    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj", True),
    "Z-Image": Expect("Flux", 16, (0.1159, 0.3611), "lora_unet_layers_0_attention_qkv", "z_image", None, True),
    "Flux.2 Klein": Expect("Flux2", 128, (0.0, 1.0), "lora_unet_double_blocks_0_img_attn_qkv", "flux2", None, True),
    "Flux.2": Expect("Flux2", 128, (0.0, 1.0), "lora_unet_double_blocks_0_img_attn_qkv", "flux2", None, True),
}
ALL = list(EXPECT)
