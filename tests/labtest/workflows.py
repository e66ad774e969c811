"""API-format prompts built in tests (node id -> {class_type, inputs})."""


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
