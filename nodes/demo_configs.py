"""Sizes of the tiny random-weight models the Demo Model node builds (plain data, no ComfyUI).

Each family keeps the real architecture's layer kinds (attention, MLP, conv, down/up-sampling,
text encoders, VAE) at widths small enough for seconds-long CPU runs. ComfyUI's file-based model
detection only recognises the full sizes, so these models are built in memory, never loaded.
"""

# VAE: ComfyUI's AutoencoderKL with 3 down-samplings (8x, like the real ones); GroupNorm needs
# channel counts divisible by 32.
def vae_config(latent_channels: int) -> dict:
    return {
        "params": {
            "embed_dim": latent_channels,
            "ddconfig": {
                "double_z": True, "z_channels": latent_channels, "resolution": 256,
                "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 1, 1],
                "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
            },
        }
    }


# 3 layers: SDXL reads the penultimate layer (layer_idx -2 must be inside the stack).
CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
          "num_hidden_layers": 3, "projection_dim": 32}
CLIP_G = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
          "num_hidden_layers": 3, "projection_dim": 32}
T5XXL = {"d_model": 64, "d_ff": 128, "d_kv": 32, "num_heads": 2, "num_layers": 1}

# Flux: only the size keys. The rest of the config (patch size, rope theta, qkv bias, and any
# field a newer ComfyUI adds) comes from ComfyUI's own detection of a checkpoint of these sizes.
FLUX_UNET = {
    "in_channels": 16, "vec_in_dim": CLIP_L["hidden_size"], "context_in_dim": T5XXL["d_model"],
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [16, 24, 24], "guidance_embed": True,
}

_UNET_COMMON = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "use_spatial_transformer": True, "legacy": False, "model_channels": 32,
    "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SD15_UNET = {**_UNET_COMMON, "adm_in_channels": None, "use_linear_in_transformer": False,
             "context_dim": CLIP_L["hidden_size"], "num_heads": 8, "num_head_channels": -1}
# SDXL's adm vector: CLIP-G's projected pooled output + 6 size/crop embeddings of 256.
SDXL_UNET = {**_UNET_COMMON, "adm_in_channels": CLIP_G["projection_dim"] + 6 * 256,
             "num_classes": "sequential", "use_linear_in_transformer": True,
             "context_dim": CLIP_L["hidden_size"] + CLIP_G["hidden_size"], "num_head_channels": 16}

WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2", "fp8_scaled")  # appended only

# Qwen-Image: the language model of Qwen2.5-VL (its vision tower is never built for the demo).
# head_dim is fixed at 128 by ComfyUI's config class; the vocabulary stays full (the tokenizer's
# ids reach 151655), so the embedding is most of the encoder's ~2.5M parameters.
QWEN25_VL = {"vocab_size": 152064, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 1, "num_key_value_heads": 1}
QWEN_IMAGE_UNET = {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1,
                   "attention_head_dim": 32, "num_attention_heads": 2,
                   "joint_attention_dim": QWEN25_VL["hidden_size"], "axes_dims_rope": (8, 12, 12)}
QWEN_IMAGE_VAE_DIM = 8  # Wan 2.1 VAE base width (96 at full size; 0.3.64 reads no width from the file)

# Qwen3 text encoders (Z-Image, Flux.2 Klein): LLM layers with Qwen3's fixed head width (128).
# Z-Image reads the second-to-last layer (3 layers: ComfyUI asserts abs(layer_idx) < layers); Klein stacks layers 9, 18 and 27 (28 layers).
# The vocabulary stays full: the Qwen tokenizer's template tokens are ids above 151k.
QWEN3_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
              "num_attention_heads": 1, "num_key_value_heads": 1}
QWEN3_KLEIN = {**QWEN3_TINY, "num_hidden_layers": 28}

# Z-Image: NextDiT at 256 wide (its modulation reads min(dim, 256) features: narrower breaks it),
# one head of 128 = its rope axes 32+48+48, one layer and one refiner of each kind.
Z_IMAGE_UNET = {"dim": 256, "n_heads": 2, "n_kv_heads": 2, "n_layers": 1, "n_refiner_layers": 1,
                "cap_feat_dim": QWEN3_TINY["hidden_size"], "in_channels": 16}

# Flux.2: heads of 128 (its four rope axes of 32); 128 latent channels at patch size 1; Klein's
# conditioning is three Qwen3 layers side by side.
FLUX2_KLEIN_UNET = {"in_channels": 128, "hidden_size": 128, "num_heads": 1, "depth": 1,
                    "depth_single_blocks": 1, "context_in_dim": 3 * QWEN3_KLEIN["hidden_size"],
                    "guidance_embed": False}
# The Flux.2 VAE's decoder width (its encoder's width is fixed by ComfyUI's detection).
FLUX2_VAE = {"double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3, "out_ch": 3,
             "ch": 32, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
             "dropout": 0.0, "batch_norm_latent": True}
# Full Flux.2 (dev): Mistral 3 stacks the inputs of layers 10 and 20 and the output (layer 30):
# 30 layers, without the final norm, as ComfyUI's pruned file; head width fixed at 128. The
# vocabulary is the demo's synthetic tekken one (20 special tokens + 256 bytes + a few merges).
MISTRAL3_TINY = {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 30,
                 "num_attention_heads": 1, "num_key_value_heads": 1, "final_norm": False}
FLUX2_UNET = {**FLUX2_KLEIN_UNET, "context_in_dim": 3 * MISTRAL3_TINY["hidden_size"], "guidance_embed": True}

# Chroma: Flux's blocks without per-block modulation; ComfyUI's detection sets the patchified
# in/out channels (64) and the distilled guidance layer's in_dim (64); its out_dim must equal the
# width, hidden_dim and n_layers are the approximator's own sizes.
CHROMA_LATENT_CHANNELS = 16
CHROMA_UNET = {
    "in_channels": 4 * CHROMA_LATENT_CHANNELS, "context_in_dim": T5XXL["d_model"], "hidden_size": 128,
    "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 24, 24],
    "out_dim": 128, "hidden_dim": 32, "n_layers": 1,
}
# SD3 / 3.5 (MMDiT): width 64 x depth (head size 64), so depth 2 = two JointBlocks of width 128,
# the second one's context block pre-only; QK RMS-norm and attn2 in block 0, as in 3.5 medium.
# The context is CLIP-L+G padded to T5-XXL's 4096 by ComfyUI; pooled = CLIP-L hidden + CLIP-G projection.
SD3_UNET = {
    "depth": 2, "patch_size": 2, "in_channels": 16, "pos_embed_max_size": 16, "context_in_dim": 4096,
    "adm_in_channels": CLIP_L["hidden_size"] + CLIP_G["projection_dim"], "qk_norm": True,
    "x_block_self_attn_layers": [0],
}
