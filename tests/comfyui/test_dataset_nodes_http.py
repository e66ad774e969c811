"""The dataset nodes in a real ComfyUI over HTTP: a kohya folder with two concepts of different
sizes loads, gets captions and balanced repeats, shows its summary and preview, and trains."""

import uuid

import numpy as np
from PIL import Image

from labtest.server import execution_error, refusal
from labtest.workflows import OPTIMIZER_DEFAULTS, load_dataset_node


def make_folder(base, name):
    root = base / "input" / name
    alpha, beta = root / "2_alpha", root / "1_beta"
    alpha.mkdir(parents=True)
    beta.mkdir(parents=True)
    for i in range(3):  # square RGBA: the transparent border is left out of the loss
        pixels = np.zeros((64, 64, 4), np.uint8)
        pixels[16:48, 16:48] = (200, 40 * i, 40, 255)
        Image.fromarray(pixels, "RGBA").save(alpha / f"a{i}.png")
        (alpha / f"a{i}.txt").write_text("red square, simple background", encoding="utf-8")
    for i in range(2):  # wide RGB with a sidecar mask
        Image.new("RGB", (96, 64), (30, 90 + 40 * i, 200)).save(beta / f"b{i}.jpg")
        mask = np.zeros((64, 96), np.uint8)
        mask[:, 20:70] = 255
        Image.fromarray(mask).save(beta / f"b{i}_mask.png")
        (beta / f"b{i}.txt").write_text("\ufeffblue banner,\r\nwide", encoding="utf-8")
    return root


def test_folder_dataset_trains_with_two_buckets(server):
    name = f"ds_{uuid.uuid4().hex[:8]}"
    make_folder(server.base, name)
    prompt = {
        "1": {"class_type": "LoRALabDemoModel", "inputs": {"family": "SD1.5", "weight_dtype": "fp32", "seed": 0}},
        "2": load_dataset_node(name, flip=True),
        "3": {"class_type": "LoRALabCaptionTemplate", "inputs": {
            "dataset": ["2", 0], "template": "{trigger}, {caption}", "trigger": "sks", "mode": "tags", "prefix": "",
            "suffix": "", "remove_tags": "simple background", "implications": "", "prune_defining": 0.0,
            "shuffle": True, "keep_tokens": 1, "keep_separator": "|||", "tag_dropout": 0.1, "caption_dropout": 0.0}},
        "4": {"class_type": "LoRALabBalanceConcepts", "inputs": {"dataset": ["3", 0], "weights": ""}},
        "5": {"class_type": "LoRALabTrain", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["4", 0], "steps": 6,
            "learning_rate": 1e-3, "seed": 0, "output_name": name, "optimizer": ["6", 0]}},
        "6": {"class_type": "LoRALabOptimizer", "inputs": {**OPTIMIZER_DEFAULTS, "batch_size": 2}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}},
    }
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    summary = entry["outputs"]["2"]["text"][0]
    assert "alpha" in summary and "beta" in summary
    buckets = summary.split("buckets:")[1]
    assert "256x256: 3" in buckets and buckets.count("x") == 2  # the wide images got a bucket of their own
    balance = entry["outputs"]["4"]["text"][0]
    assert "beta" in balance and "alpha" in balance
    preview = entry["outputs"]["7"]["images"]
    assert len(preview) == 1
    caption_preview = entry["outputs"]["3"]["text"][0]
    assert "sks, red square" in caption_preview and "simple background" not in caption_preview.split("\n")[1]
    lora = server.base / "models" / "loras" / "loralab" / f"{name}.safetensors"
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as f:
        frequency = f.metadata()["ss_tag_frequency"]
    assert "blue banner" in frequency and "red square" in frequency


def run_error(server, node):
    entry = server.run({"1": node, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 2]}}})
    error = execution_error(entry)
    assert error is not None and server.alive()
    return error["exception_message"]


def test_folder_outside_the_allowed_roots_is_refused(server, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.new("RGB", (64, 64)).save(outside / "x.png")
    message = run_error(server, load_dataset_node(custom_path=str(outside), flip=True))
    assert "custom_path" in message and "not inside an allowed dataset root" in message


def test_empty_and_missing_folders_are_named(server):
    empty = f"empty_{uuid.uuid4().hex[:8]}"
    (server.base / "input" / empty).mkdir()
    assert "no images found" in run_error(server, load_dataset_node(empty, flip=True))
    # a folder that is not in the list: 0.33 refuses the value up front, 0.3.64 leaves it to the node
    message = refusal(server, {"1": load_dataset_node("does_not_exist", flip=True),
                               "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 2]}}})
    assert "does_not_exist does not exist or is not a folder" in message or (
        '"value_not_in_list"' in message and "folder: 'does_not_exist' not in" in message), message
    assert server.alive()
