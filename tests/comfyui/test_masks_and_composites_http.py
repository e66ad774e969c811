"""Masks and composites in a real ComfyUI over HTTP: background removal through rembg's real code
path (a tiny ONNX model planted in models/rembg), masks for a folder dataset, 1to2 composites
merged with the singles, all the way to training; clear errors for bad models and images."""

import uuid

import numpy as np
from PIL import Image

from labtest import PACK_ROOT
from labtest.onnx_models import REMBG_INPUT_SIZES, write_tiny_rembg_model
from labtest.server import execution_error
from labtest.workflows import OPTIMIZER_DEFAULTS, load_dataset_node

SUBJECT = PACK_ROOT / "example_workflows" / "lora_lab_sample_subject.png"


def plant_model(server, model="u2netp"):
    path = server.base / "models" / "rembg" / f"{model}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tiny_rembg_model(path, REMBG_INPUT_SIZES[model])
    return path


def subject_on_ground(path, size=128):
    with Image.open(SUBJECT) as cut:
        cut = cut.convert("RGBA").resize((size, size))
        ground = Image.new("RGBA", cut.size, (12, 12, 16, 255))  # the tiny model calls bright pixels subject
        Image.alpha_composite(ground, cut).convert("RGB").save(path)


def base_model():
    return {"class_type": "LoRALabDemoModel", "inputs": {"family": "SD1.5", "weight_dtype": "fp32", "seed": 0}}


def train_node(dataset, name, steps=3, batch_size=1):
    return {"class_type": "LoRALabTrain", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": dataset, "steps": steps,
        "learning_rate": 1e-3, "seed": 0, "output_name": name, "optimizer": ["99", 0]}}


def optimizer(batch_size=1):
    return {"class_type": "LoRALabOptimizer", "inputs": {**OPTIMIZER_DEFAULTS, "batch_size": batch_size}}


def test_load_image_remove_background_dataset_train(server):
    plant_model(server)
    name = f"rb_{uuid.uuid4().hex[:8]}"
    subject_on_ground(server.base / "input" / f"{name}.png")
    prompt = {
        "1": base_model(),
        "2": {"class_type": "LoadImage", "inputs": {"image": f"{name}.png"}},
        "3": {"class_type": "LoRALabRemoveBackground", "inputs": {"image": ["2", 0], "model": "u2netp",
                                                                   "background": "white"}},
        "4": {"class_type": "LoRALabDatasetFromImages", "inputs": {
            "images": ["2", 0], "mask": ["3", 1], "mask_meaning": "white = subject/train", "captions": "a figure",
            "trigger": "sks", "repeats": 1}},
        "5": train_node(["4", 0], name),
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "99": optimizer(),
    }
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    assert (server.base / "models" / "loras" / "loralab" / f"{name}.safetensors").is_file()
    preview = entry["outputs"]["6"]["images"][0]
    cut = np.asarray(Image.open(server.base / "temp" / preview["subfolder"] / preview["filename"]))
    assert cut.shape == (128, 128, 3) and (cut > 230).all(axis=-1).mean() > 0.2  # the dark ground became white


def make_concepts(base, name):
    root = base / "input" / name
    for concept, colour, count in (("1_ann", (200, 40, 40), 3), ("1_bob", (40, 40, 200), 2)):
        folder = root / concept
        folder.mkdir(parents=True)
        for i in range(count):
            subject_on_ground(folder / f"{concept}_{i}.png", size=96 + 32 * i)
            (folder / f"{concept}_{i}.txt").write_text(f"{concept[2:]}, figure, hat", encoding="utf-8")
    return root


def test_folder_masks_composites_merge_and_train(server):
    plant_model(server)
    name = f"cp_{uuid.uuid4().hex[:8]}"
    make_concepts(server.base, name)
    prompt = {
        "1": base_model(),
        "2": load_dataset_node(name),
        "3": {"class_type": "LoRALabDatasetMasks", "inputs": {
            "dataset": ["2", 0], "source": "background removal", "model": "u2netp", "replace_existing": False,
            "threshold": 0.5, "grow": 2, "feather": 2, "fill_holes": True, "invert": False,
            "masked_pixels": "colour", "fill_colour": "#808080"}},
        "4": {"class_type": "LoRALabCompositePairs", "inputs": {
            "dataset": ["3", 0], "pairs_per_combination": 2, "all_combinations_up_to": 0, "seed": 0, "height": 128,
            "crop_to_subject": True, "margin": 8, "gap": 8,
            "caption_template": "{left}/{right}/COMPOSITE, {tags_left}, {tags_right}", "bucket_resolution": 384}},
        "5": {"class_type": "LoRALabMergeDatasets", "inputs": {"dataset_1": ["3", 0], "share_1": 0.8,
                                                               "dataset_2": ["4", 0], "share_2": 0.2}},
        "6": train_node(["5", 0], name, steps=4, batch_size=2),
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["4", 2]}},
        "99": optimizer(batch_size=2),
    }
    entry = server.run(prompt)
    assert execution_error(entry) is None, (execution_error(entry) or {}).get("exception_message")
    masks = entry["outputs"]["3"]["text"][0]
    assert masks.count("mask covers") == 5
    composites = entry["outputs"]["4"]["text"][0]
    assert "ann/bob: 2" in composites and "bob/ann: 2" in composites
    merged = entry["outputs"]["5"]["text"][0]
    assert "ann/bob" in merged
    assert entry["outputs"]["7"]["images"] and entry["outputs"]["8"]["images"]
    assert (server.base / "models" / "loras" / "loralab" / f"{name}.safetensors").is_file()


def remove_background_error(server, model, size=64):
    name = f"err_{uuid.uuid4().hex[:8]}.png"
    Image.new("RGB", (size, size), (120, 30, 30)).save(server.base / "input" / name)
    entry = server.run({
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "LoRALabRemoveBackground", "inputs": {"image": ["1", 0], "model": model,
                                                                   "background": "original"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    })
    error = execution_error(entry)
    assert error is not None and server.alive()
    return error["exception_message"]


def test_missing_and_corrupt_weights_and_tiny_images_are_named(server):
    message = remove_background_error(server, "silueta")
    assert "silueta.onnx" in message and "rembg" in message
    corrupt = server.base / "models" / "rembg" / "isnet-anime.onnx"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(b"not an onnx model" * 100)
    message = remove_background_error(server, "isnet-anime")
    assert "isnet-anime.onnx" in message
    plant_model(server)
    assert "too small" in remove_background_error(server, "u2netp", size=1)


def pairing_error(server, loader, gap):
    """Load Dataset -> Composite Pairs (one pair per combination): the error the pairing raises."""
    entry = server.run({
        "1": loader,
        "2": {"class_type": "LoRALabCompositePairs", "inputs": {
            "dataset": ["1", 0], "pairs_per_combination": 1, "all_combinations_up_to": 0, "seed": 0, "height": 128,
            "crop_to_subject": False, "margin": 0, "gap": gap, "bucket_resolution": 0,
            "caption_template": "{left}/{right}/COMPOSITE, {tags_left}, {tags_right}"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}},
    })
    return execution_error(entry)


def test_composites_wider_than_the_buckets_allow_are_refused(server):
    name = f"wide_{uuid.uuid4().hex[:8]}"
    make_concepts(server.base, name)
    loader = load_dataset_node(name)
    loader["inputs"].update(resolution=256, min_side=128, max_side=256)  # buckets at most 2:1
    error = pairing_error(server, loader, gap=256)
    assert error is not None and server.alive()
    assert "do not fit the buckets" in error["exception_message"] and "crop" in error["exception_message"]


def test_pairing_needs_two_concepts(server):
    name = f"one_{uuid.uuid4().hex[:8]}"
    folder = server.base / "input" / name / "1_solo"
    folder.mkdir(parents=True)
    subject_on_ground(folder / "a.png")
    error = pairing_error(server, load_dataset_node(name), gap=0)
    assert error is not None and "at least two concepts" in error["exception_message"]
