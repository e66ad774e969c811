"""API-format prompts built in tests (node id -> {class_type, inputs})."""

# Load Dataset's inputs in the tests: 256 px buckets from 128 to 512 px, no flips.
LOAD_DATASET_DEFAULTS = {"custom_path": "", "caption_extension": ".txt", "resolution": 256, "min_side": 128,
                         "max_side": 512, "bucket_step": 64, "no_upscale": False, "flip": False,
                         "max_image_side": 3072, "on_bad_file": "skip"}


def load_dataset_node(folder: str = "", **inputs) -> dict:
    """A Load Dataset node reading `folder` (or `custom_path`), other inputs as in LOAD_DATASET_DEFAULTS."""
    return {"class_type": "LoRALabLoadDataset", "inputs": {"folder": folder, **LOAD_DATASET_DEFAULTS, **inputs}}


def demo_sampling_prompt(family: str, weight_dtype: str = "fp32", size: int = 64, prefix: str = "demo") -> dict:
    """Demo Model -> text encode -> empty latent -> KSampler -> VAE decode -> SaveImage."""
    empty_latent = "EmptySD3LatentImage" if family == "Flux" else "EmptyLatentImage"  # 16 vs 4 channels
    return {
        "1": {"class_type": "LoRALabDemoModel", "inputs": {"family": family, "weight_dtype": weight_dtype, "seed": 3}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of sks"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": empty_latent, "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def training_prompt(family: str, output_name: str, steps: int = 10, save: dict | None = None,
                    network: dict | None = None, objective: dict | None = None, with_clip: bool = True,
                    captions: str = "a photo", size: int = 64, samples: dict | None = None,
                    optimizer: dict | None = None) -> dict:
    """Demo Model + a solid image with a square mask -> Dataset From Images -> LoRA Lab Train."""
    prompt = {
        "1": {"class_type": "LoRALabDemoModel", "inputs": {"family": family, "weight_dtype": "fp32", "seed": 0}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0x8040C0}},
        "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": size, "height": size}},
        "4": {"class_type": "LoRALabDatasetFromImages", "inputs": {
            "images": ["2", 0], "mask": ["3", 0], "mask_meaning": "white = subject/train", "captions": captions,
            "trigger": "sks", "repeats": 1}},
        "5": {"class_type": "LoRALabTrain", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "dataset": ["4", 0], "steps": steps,
            "learning_rate": 1e-3, "seed": 0, "output_name": output_name}},
    }
    if with_clip:
        prompt["5"]["inputs"]["clip"] = ["1", 1]
    for node_id, class_type, values, socket in (("6", "LoRALabSave", save, "save"),
                                                ("7", "LoRALabNetwork", network, "network"),
                                                ("8", "LoRALabObjective", objective, "objective"),
                                                ("9", "LoRALabSamples", samples, "samples"),
                                                ("20", "LoRALabOptimizer", optimizer, "optimizer")):
        if values is not None:
            prompt[node_id] = {"class_type": class_type, "inputs": dict(values)}  # callers may edit it
            prompt["5"]["inputs"][socket] = [node_id, 0]
    return prompt


SAVE_DEFAULTS = {"every_n_steps": 0, "every_n_epochs": 0, "keep_last": 0, "precision": "fp32",
                 "subfolder": "loralab", "overwrite": False, "save_training_state": True, "resume_from": "none"}
NETWORK_DEFAULTS = {"algorithm": "LoRA", "rank": 4, "alpha": 4.0, "conv_rank": 0, "conv_alpha": 1.0,
                    "dropout": 0.0, "target_preset": "attention+mlp", "continue_from": "none"}
OBJECTIVE_DEFAULTS = {"loss": "mse", "huber_delta": 1.0, "mask_reduction": "normalized", "unmasked_weight": 0.0,
                      "min_snr_gamma": 0.0, "debiased_estimation": False, "noise_offset": 0.0,
                      "timestep_sampling": "sigmoid", "sigmoid_scale": 1.0, "shift": 3.1582, "training_guidance": 1.0}
SAMPLES_DEFAULTS = {"prompts": "{trigger}\n{trigger} in a garden", "negative": "", "sampler": "euler",
                    "scheduler": "simple", "steps": 2, "cfg": 1.0, "guidance": 3.5, "seed": 42, "width": 64,
                    "height": 64, "every_n_steps": 0, "sample_at_start": True}
OPTIMIZER_DEFAULTS = {"optimizer": "AdamW", "optimizer_args": "", "scheduler": "constant", "warmup_steps": 0,
                      "num_cycles": 1, "batch_size": 1, "gradient_accumulation": 1, "max_grad_norm": 1.0,
                      "scale_weight_norms": 0.0, "gradient_checkpointing": True, "text_encoder_lr": 0.0}


def stock_lora_load_prompt(family: str, lora_name: str) -> dict:
    """Demo Model -> the stock LoraLoader with `lora_name` (relative to the loras folder) -> a
    2-step sample: ComfyUI logs "lora key not loaded" for every key of the file its map misses."""
    empty = "EmptySD3LatentImage" if family == "Flux" else "EmptyLatentImage"
    return {
        "1": {"class_type": "LoRALabDemoModel", "inputs": {"family": family, "weight_dtype": "fp32", "seed": 0}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora_name,
                                                      "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "sks"}},
        "4": {"class_type": empty, "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["3", 0],
                                                    "latent_image": ["4", 0], "seed": 1, "steps": 2, "cfg": 1.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    }
