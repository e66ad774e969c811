#!/usr/bin/env python3
"""Every example workflow (example_workflows/*.json), built in one place as API-format graphs and
written as UI workflows against a running ComfyUI's node definitions, so that widget values sit
where the frontend expects them:

    python scripts/example_workflows.py --url http://127.0.0.1:8188

Each builder returns (prompt, note); the model file names are the usual public ones, so users
only pick their own files. tests/comfyui/test_example_workflows.py checks the committed files
against this module, validates them against the live node definitions and runs scaled-down
copies end to end.
"""

from __future__ import annotations

import argparse
import json
import sys

from train_headless import PACK, WORKFLOW_NOTE, _http, example_prompt, parse_args, to_ui_workflow

EXAMPLES = PACK / "example_workflows"


class Graph(dict):
    """An API prompt whose nodes get ids 1, 2, ... in the order added (the UI keeps that order)."""

    def add(self, class_type: str, **inputs) -> str:
        key = str(len(self) + 1)
        self[key] = {"class_type": class_type, "inputs": inputs}
        return key


# --- nodes with the widgets these recipes leave at their defaults ---------------------------

def load_dataset(g: Graph, folder: str, resolution: int, min_side: int = 256, max_side: int = 1024) -> str:
    return g.add("LoRALabLoadDataset", folder=folder, custom_path="", caption_extension=".txt",
                 resolution=resolution, min_side=min_side, max_side=max_side, bucket_step=64, no_upscale=False,
                 flip=False, max_image_side=3072, on_bad_file="skip")


def caption_template(g: Graph, dataset: list, template: str, mode: str = "tags", trigger: str = "",
                     prune_defining: float = 0.0, shuffle: bool = False, keep_tokens: int = 1) -> str:
    return g.add("LoRALabCaptionTemplate", dataset=dataset, template=template, trigger=trigger, mode=mode, prefix="",
                 suffix="", remove_tags="", implications="", prune_defining=prune_defining, shuffle=shuffle,
                 keep_tokens=keep_tokens, keep_separator="|||", tag_dropout=0.0, caption_dropout=0.0, dedupe=True)


def network(g: Graph, algorithm: str, rank: int, alpha: float, conv_rank: int = 0, conv_alpha: float = 1.0,
            target_preset: str = "attention+mlp", **continue_from_path) -> str:
    return g.add("LoRALabNetwork", algorithm=algorithm, rank=rank, alpha=alpha, conv_rank=conv_rank,
                 conv_alpha=conv_alpha, dropout=0.0, target_preset=target_preset, continue_from="none",
                 **continue_from_path)


def optimizer(g: Graph, name: str, batch_size: int, optimizer_args: str = "", gradient_accumulation: int = 1,
              text_encoder_lr: float = 0.0) -> str:
    return g.add("LoRALabOptimizer", optimizer=name, optimizer_args=optimizer_args, scheduler="cosine",
                 warmup_steps=0, num_cycles=1, batch_size=batch_size, gradient_accumulation=gradient_accumulation,
                 max_grad_norm=1.0, scale_weight_norms=0.0, gradient_checkpointing=True,
                 text_encoder_lr=text_encoder_lr, memory_mode="auto", keep_activations_blocks=0)


def save(g: Graph, every_n_epochs: int, precision: str = "bf16") -> str:
    return g.add("LoRALabSave", every_n_steps=0, every_n_epochs=every_n_epochs, keep_last=0, precision=precision,
                 subfolder="loralab", overwrite=False, save_training_state=True, resume_from="none")


def samples(g: Graph, prompts: list[str], negative: str, sampler: str, scheduler: str, steps: int, cfg: float,
            width: int, height: int) -> str:
    return g.add("LoRALabSamples", prompts="\n".join(prompts), negative=negative, sampler=sampler,
                 scheduler=scheduler, steps=steps, cfg=cfg, guidance=3.5, seed=42, width=width, height=height,
                 every_n_steps=0, sample_at_start=True)


def train(g: Graph, model: list, clip: list, vae: list, dataset: list, steps: int, learning_rate: float,
          output_name: str, **configs: str) -> str:
    """A Train node, its samples and loss chart saved under output/loralab/<output_name>_*."""
    node = g.add("LoRALabTrain", model=model, clip=clip, vae=vae, dataset=dataset, steps=steps,
                 learning_rate=learning_rate, seed=0, output_name=output_name,
                 **{name: [key, 0] for name, key in configs.items()})
    chart = g.add("LoRALabLossChart", loss_history=[node, 2], width=768, height=384, log_scale=False)
    g.add("SaveImage", images=[node, 3], filename_prefix=f"loralab/{output_name}_samples")
    g.add("SaveImage", images=[chart, 0], filename_prefix=f"loralab/{output_name}_loss")
    return node


ANIME_NEGATIVE = "lowres, bad anatomy, bad hands, worst quality, low quality"


# --- the recipes ---------------------------------------------------------------------------------

def flux_single_image_masked_lora():
    """Seed 003, character case: the graph scripts/train_headless.py runs, with real model files."""
    return example_prompt(parse_args(["--unet", "flux1-dev.safetensors", "--write-workflow", "-"])), WORKFLOW_NOTE


def flux_style_lora_single_image():
    """Seed 003, style case: the masked single-image graph without a trigger word."""
    args = parse_args(["--unet", "flux1-dev.safetensors", "--trigger", "", "--rank", "16", "--steps", "1000",
                       "--save-every", "250", "--name", "my_flux_style_lora", "--write-workflow", "-",
                       "--caption", "a small figure wearing a yellow hat, a red sweater and blue trousers, standing "
                                    "with its arms at its sides, seen from the front"])
    g = Graph(example_prompt(args))
    node = {n["class_type"]: key for key, n in g.items()}
    g[node["LoRALabSamples"]]["inputs"]["prompts"] = \
        "a bird sitting on a branch\na lighthouse on a cliff at sunset\na woman reading in a cafe"
    # Natural mode keeps the sentence whole; a template without {trigger} trains the caption alone.
    captions = caption_template(g, [node["LoRALabDatasetFromImages"], 0], "{caption}", mode="natural", keep_tokens=0)
    g[node["LoRALabTrain"]]["inputs"]["dataset"] = [captions, 0]
    note = (
        "Single-image masked Flux style LoRA (LoRA Lab, seed 003's style case).\n"
        "One image teaches a style: no trigger word (the Caption Template's template is just {caption}), and "
        "the caption describes everything in the image but the style, so what stays unexplained (line, colour, "
        "shading) is what the LoRA learns. The transparent background is left out of the loss, so no background "
        "is baked into the style. Samples without a trigger draw subjects the image never showed, to see the "
        "style carry over. Change: the image, the caption, the model files. Rank 16 and 1000 steps at 512 px; "
        "saves and samples every 250 steps: the seed's style run overfit by 2000 steps, so pick the last "
        "checkpoint before textures, fuzzy edges or ghosting appear.")
    return g, note


def sd15_1to2_two_stage_loha():
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="animefull-final-pruned.safetensors")
    clip = g.add("CLIPSetLastLayer", clip=[ckpt, 1], stop_at_clip_layer=-2)
    data = load_dataset(g, "lora_lab/1to2_characters", 640)
    # keep_tokens 1 keeps the concept name (the trigger word) first while the other tags shuffle.
    singles = caption_template(g, [data, 0], "{concept}, {caption}", shuffle=True, keep_tokens=1)
    saves = save(g, every_n_epochs=1, precision="fp16")
    models = dict(model=[ckpt, 0], clip=[clip, 0], vae=[ckpt, 2])
    stage1 = train(
        g, **models, dataset=[singles, 0], steps=1000, learning_rate=5e-4, output_name="my_1to2_stage1",
        network=network(g, "LoHa", 8, 1.0, target_preset="all"),
        optimizer=optimizer(g, "AdamW8bit", batch_size=4, text_encoder_lr=5e-4), save=saves,
        samples=samples(g, ["alice, 1girl, solo, smile, looking at viewer", "bella, 1girl, solo, standing, outdoors",
                            "chloe, 1girl, solo, upper body"], ANIME_NEGATIVE, "euler_ancestral", "normal", 28, 7.0,
                        512, 768))
    pairs = g.add("LoRALabCompositePairs", dataset=[singles, 0], pairs_per_combination=16, all_combinations_up_to=0,
                  seed=0, height=768, crop_to_subject=False, margin=32, gap=0,
                  caption_template="{left}/{right}/COMPOSITE, {tags_left}, {tags_right}", bucket_resolution=768)
    g.add("PreviewImage", images=[pairs, 2])
    # Composite captions are final: shuffle them again, keeping "Left/Right/COMPOSITE" first. Its
    # de-duplication works within each side: a tag both characters share stays on both (seed 000).
    composites = caption_template(g, [pairs, 0], "{caption}", shuffle=True, keep_tokens=1)
    train(g, **models, dataset=[composites, 0], steps=2000, learning_rate=5e-4, output_name="my_1to2",
          network=network(g, "LoHa", 8, 1.0, target_preset="all", continue_from_path=[stage1, 1]),
          optimizer=optimizer(g, "AdamW8bit", batch_size=2, text_encoder_lr=5e-4), save=saves,
          samples=samples(g, ["alice/bella/COMPOSITE, 1girl, smile, standing, outdoors",
                              "bella/chloe/COMPOSITE, 1girl, waving, arms crossed",
                              "chloe, 1girl, solo, upper body"], ANIME_NEGATIVE, "euler_ancestral", "normal", 28,
                          7.0, 1024, 512))
    note = (
        "1to2: two characters in one image from single-character images only (LoRA Lab, seed 000).\n"
        "Stage 1 trains a LoHa (dim 8, alpha 1, no conv) on three kohya concept folders in "
        "input/lora_lab/1to2_characters (1_alice, 1_bella, 1_chloe: the folder names are the trigger words) at "
        "640 px, clip skip 2, AdamW8bit lr 5e-4 for UNet and text encoder, cosine, batch 4, keep_tokens 1 with "
        "shuffled tags. Composite Pairs then joins images of two different characters side by side, captioned "
        "'Left/Right/COMPOSITE, left tags, right tags' (every tag of each side kept, shared ones too); stage 2 continues stage 1's file (the Network node's "
        "continue_from_path takes stage 1's lora_path) on those composites at 768 px, batch 2, other settings "
        "identical. Change: the checkpoint, the dataset folder and the names in the sample prompts, and the "
        "steps: the seed trained 40 epochs per stage; steps = epochs x images per epoch / batch (the Load "
        "Dataset and Composite Pairs summaries show images per epoch). Both stages save and sample every epoch.")
    return g, note


def sdxl_multi_concept_locon_prodigy():
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="illustriousXL_v01.safetensors")
    clip = g.add("CLIPSetLastLayer", clip=[ckpt, 1], stop_at_clip_layer=-2)
    data = load_dataset(g, "lora_lab/multi_concept", 1024, min_side=512, max_side=2048)
    captions = caption_template(g, [data, 0], "{concept}, {caption}", prune_defining=0.8, shuffle=True,
                                keep_tokens=1)
    balanced = g.add("LoRALabBalanceConcepts", dataset=[captions, 0], weights="")
    train(g, model=[ckpt, 0], clip=[clip, 0], vae=[ckpt, 2], dataset=[balanced, 0], steps=3000,
          learning_rate=1.0, output_name="my_multi_concept_locon",
          network=network(g, "LoCon", 16, 8.0, conv_rank=8, conv_alpha=4.0, target_preset="all"),
          optimizer=optimizer(g, "Prodigy", batch_size=1, optimizer_args=(
              "decouple=True weight_decay=0.1 betas=0.9,0.99 d_coef=2 use_bias_correction=True "
              "safeguard_warmup=True")),
          objective=g.add("LoRALabObjective", loss="mse", huber_delta=1.0, mask_reduction="normalized",
                          unmasked_weight=0.0, min_snr_gamma=5.0, debiased_estimation=True, noise_offset=0.0,
                          timestep_sampling="sigmoid", sigmoid_scale=1.0, shift=3.1582, training_guidance=1.0),
          save=save(g, every_n_epochs=5),
          samples=samples(g, ["alice, 1girl, solo, smile, outdoors, masterpiece, best quality",
                              "bella, 1girl, solo, sitting, indoors, masterpiece, best quality",
                              "alice, 1girl, solo, wearing a black suit, masterpiece, best quality"], ANIME_NEGATIVE,
                          "euler_ancestral", "normal", 28, 6.0, 832, 1216))
    note = (
        "Multi-concept Illustrious/SDXL LoCon with Prodigy (LoRA Lab, seeds 001 and 004).\n"
        "Load Dataset reads kohya concept folders in input/lora_lab/multi_concept (1_alice, 1_bella: the "
        "folder names are the trigger words) at 1024 px. Caption Template puts the concept name first, keeps "
        "it there (keep_tokens 1) while shuffling the rest, and prunes tags found in 80% or more of a "
        "concept's images, so the name carries the character's defining traits (seed 004). Balance Concepts "
        "gives every concept the same share of an epoch (seed 001's repeats arithmetic). LoCon dim 16 with "
        "alpha 8 (half, seed 004), conv 8/4; Prodigy at learning rate 1.0 with decouple, weight decay 0.1, "
        "d_coef 2 (alpha below dim needs a higher rate), cosine against Prodigy's high late rates; clip skip 2; "
        "min-SNR gamma 5 and debiased estimation; batch 1 so concepts do not blend (seed 001). Change: the "
        "checkpoint, the folder, the names in the sample prompts, and the steps (epochs x balanced images per "
        "epoch, shown in the Balance Concepts summary). Saves and samples every 5 epochs.")
    return g, note


def sdxl_person_lora_lion(text_encoder_lr: float = 0.0):
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="sd_xl_base_1.0.safetensors")
    data = load_dataset(g, "lora_lab/person", 1024, min_side=512, max_side=2048)
    captions = caption_template(g, [data, 0], "{trigger}, {caption}", mode="natural", trigger="Jane Doe",
                                keep_tokens=0)
    train(g, model=[ckpt, 0], clip=[ckpt, 1], vae=[ckpt, 2], dataset=[captions, 0], steps=40, learning_rate=4e-4,
          output_name="my_person_sdxl_te" if text_encoder_lr else "my_person_sdxl",
          network=network(g, "LoRA", 8, 4.0),
          optimizer=optimizer(g, "Lion", batch_size=4, gradient_accumulation=16, text_encoder_lr=text_encoder_lr),
          save=save(g, every_n_epochs=2),
          samples=samples(g, ["a photo of {trigger} smiling at a cafe table, natural light",
                              "{trigger} in a red evening dress on a city street at night",
                              "a photo of a man reading a newspaper on a bench"], "", "dpmpp_2m", "karras", 25, 6.0,
                          1024, 1024))
    note = (
        "SDXL person LoRA, rank 8, Lion, effective batch 64 (LoRA Lab, seed 002).\n"
        "Dim 8 is enough for a real person on SDXL. Load Dataset reads input/lora_lab/person: about 200 photos "
        "with natural-language captions (a VLM's) in .txt files beside them; Caption Template (natural mode) "
        "puts the person's name first: the trigger is the real name, never a token like 'ohwx', and a person "
        "the base model knows needs no extra trigger at all. Batch 4 x gradient accumulation 16 = 64 images per "
        "step is what lets Lion run the rather high UNet learning rate of 4e-4; 200 images x 12 epochs / 64 = "
        "about 40 steps. Alpha 4 (half of dim) and the cosine schedule are choices the seed leaves open. "
        "Change: the folder, the trigger name, the steps for your image count. The third sample prompt "
        "watches other people for bleeding.\n")
    if text_encoder_lr:
        note += (
            "This variant also trains both CLIP text encoders at 1e-5, 40x below the UNet: the seed's update found "
            "text-encoder training necessary for people the base model does not know, to keep the look across "
            "other checkpoints; Lion moves every weight by about the learning rate each step whatever the "
            "gradient's size, so a rate near the UNet's would quickly overwrite what the text encoders know.")
    else:
        note += ("The text encoders are not trained (seed 002); sdxl_person_lora_lion_with_te also trains them, "
                 "for people the base model does not know.")
    return g, note


def qwen_image_person_lora():
    g = Graph()
    unet = g.add("UNETLoader", unet_name="qwen_image_fp8_e4m3fn.safetensors", weight_dtype="default")
    clip = g.add("CLIPLoader", clip_name="qwen_2.5_vl_7b_fp8_scaled.safetensors", type="qwen_image", device="default")
    vae = g.add("VAELoader", vae_name="qwen_image_vae.safetensors")
    data = load_dataset(g, "lora_lab/person", 1024, min_side=512, max_side=2048)
    captions = caption_template(g, [data, 0], "{trigger}, {caption}", mode="natural", trigger="Jane Doe",
                                keep_tokens=0)
    opt = optimizer(g, "AdamW8bit", batch_size=1)
    # auto: the 20B model fully on the GPU when it fits, else partially loaded and streamed per layer.
    g[opt]["inputs"].update(memory_mode="auto", keep_activations_blocks=0)
    train(g, model=[unet, 0], clip=[clip, 0], vae=[vae, 0], dataset=[captions, 0], steps=1200, learning_rate=1e-4,
          output_name="my_person_qwen_image",
          network=network(g, "LoRA", 16, 16.0),
          optimizer=opt,
          save=save(g, every_n_epochs=2),
          samples=samples(g, ["a photo of {trigger} smiling at a cafe table, natural light",
                              "{trigger} in a red evening dress on a city street at night, a neon sign reads \"OPEN\"",
                              "a photo of a man reading a newspaper on a bench"], "", "euler", "simple", 20, 2.5,
                          1024, 1024))
    note = (
        "Qwen-Image person LoRA, rank 16, AdamW8bit (LoRA Lab).\n"
        "Loads the usual Qwen-Image files: the diffusion model with Load Diffusion Model, Qwen2.5-VL with Load CLIP "
        "(type qwen_image) and the Qwen-Image VAE (a Wan 2.1 VAE: its latents have a frame axis, handled "
        "throughout). Load Dataset reads input/lora_lab/person: photos with natural-language captions in .txt "
        "files beside them; Caption Template (natural mode) puts the person's name first, as Qwen-Image reads "
        "whole sentences. Only the diffusion model trains: the text encoder is an LLM and is never trained "
        "(keep the text-encoder learning rate at 0). Timesteps are shifted by the model's own sampling shift "
        "(1.15, or an upstream ModelSampling node's), written to the file's metadata. A Qwen-Image-Edit "
        "checkpoint loads as the same model and trains here as text-to-image (no reference images). "
        "Change: the folder, the trigger name, the steps for your image count (1200 steps at batch 1 is 6 "
        "epochs of 200 images); saves and samples every 2 epochs.")
    return g, note


def _single_image_masked(unet: str, clip: str, clip_type: str, vae: str, name: str, sample_steps: int, note: str):
    """Seed 003's single-image masked character recipe (the Flux example's graph: rank 4, 400 steps
    at 512 px, saves and samples every 100 steps and at step 0) on another family's files: its
    diffusion model, its one text encoder (Load CLIP of `clip_type`) and its VAE."""
    args = parse_args(["--unet", "x", "--name", name, "--write-workflow", "-"])
    args.sample_steps = sample_steps
    prompt = example_prompt(args)
    prompt.update({"1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
                   "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip, "type": clip_type,
                                                                "device": "default"}},
                   "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae}}})
    return prompt, note


def zimage_single_image_masked_lora():
    note = ("Z-Image Turbo single-image masked character LoRA (LoRA Lab), seed 003's recipe on Z-Image.\n"
            "LoadImage -> Dataset From Images (LoadImage alpha: the transparent background is left out of the "
            "loss) -> Train: rank 4, 400 steps at 512 px, saving and sampling every 100 steps and at step 0 -- pick "
            "the earliest checkpoint that has the character before the single pose sticks. Loads the usual Z-Image "
            "files: the diffusion model with Load Diffusion Model, Qwen3-4B with Load CLIP (type lumina2), the Flux "
            "VAE. Only the diffusion model trains (the text encoder is an LLM). Timesteps: sigmoid shifted by the "
            "model's own sampling shift (3.0), written to the file. Samples: 8 steps at cfg 1 (Turbo). Change: the "
            "image (a PNG with a transparent background), the trigger word and caption, the model files.")
    return _single_image_masked("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "lumina2", "ae.safetensors",
                                "my_zimage_lora", 8, note)


def flux2_klein_single_image_masked_lora():
    note = ("Flux.2 Klein single-image masked character LoRA (LoRA Lab), seed 003's recipe on Flux.2 Klein.\n"
            "LoadImage -> Dataset From Images (LoadImage alpha) -> Train: rank 4, 400 steps at 512 px, saving and "
            "sampling every 100 steps and at step 0. Loads the usual Klein files: the diffusion model with Load "
            "Diffusion Model, Qwen3-4B with Load CLIP (type flux2), the Flux.2 VAE (16x, 128 latent channels: image "
            "sides are cropped to multiples of 16). Only the diffusion model trains. Timesteps: sigmoid shifted by "
            "the model's own sampling shift (ComfyUI's 2.02 is a log-shift: e^2.02), written to the file. Samples: "
            "4 steps at cfg 1 (distilled). Change: the image, the trigger word and caption, the model files.")
    return _single_image_masked("flux-2-klein-4b.safetensors", "qwen_3_4b.safetensors", "flux2",
                                "flux2-vae.safetensors", "my_flux2_klein_lora", 4, note)


WORKFLOWS = {
    "flux_single_image_masked_lora": flux_single_image_masked_lora,
    "flux_style_lora_single_image": flux_style_lora_single_image,
    "sd15_1to2_two_stage_loha": sd15_1to2_two_stage_loha,
    "sdxl_multi_concept_locon_prodigy": sdxl_multi_concept_locon_prodigy,
    "sdxl_person_lora_lion": sdxl_person_lora_lion,
    "sdxl_person_lora_lion_with_te": lambda: sdxl_person_lora_lion(text_encoder_lr=1e-5),
    "zimage_single_image_masked_lora": zimage_single_image_masked_lora,
    "flux2_klein_single_image_masked_lora": flux2_klein_single_image_masked_lora,
    "qwen_image_person_lora": qwen_image_person_lora,
}


def ui_workflows(object_info: dict) -> dict[str, dict]:
    """name -> UI workflow, with widget values placed by these node definitions."""
    workflows = {}
    for name, build in WORKFLOWS.items():
        prompt, note = build()
        workflows[name] = to_ui_workflow(prompt, object_info, note)
    return workflows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="a running ComfyUI with this pack")
    args = p.parse_args(argv)
    for name, workflow in ui_workflows(_http(args.url.rstrip("/") + "/object_info")).items():
        path = EXAMPLES / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=1) + "\n")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
