"""The seed recipes exactly as the guides write them, through the real nodes over HTTP: 1to2 captions
keep both characters' tags, kohya optimizer lines paste as they are, files say how they were
trained, settings that cannot take effect say so, and the small things a new user meets."""

import json
import uuid

import pytest
from PIL import Image
from safetensors import safe_open

from labtest.server import execution_error
from labtest.workflows import (NETWORK_DEFAULTS, OBJECTIVE_DEFAULTS, OPTIMIZER_DEFAULTS, SAMPLES_DEFAULTS,
                               load_dataset_node, training_prompt)

CAPTIONS = {"template": "{caption}", "trigger": "", "mode": "tags", "prefix": "", "suffix": "", "remove_tags": "",
            "implications": "", "prune_defining": 0.0, "shuffle": False, "keep_tokens": 1, "keep_separator": "|||",
            "tag_dropout": 0.0, "caption_dropout": 0.0, "dedupe": True}
# Seed 001's GUI field with the guide's quotes; seed 000's AdamW8bit as a TOML config writes its
# args; the Adafactor line of kohya's configs.
PRODIGY_LINE = '"decouple=True weight_decay=0.1 betas=0.9,0.99"'
ADAMW8BIT_LINE = 'optimizer_args = [ "weight_decay=0.1", "betas=0.9,0.99",]'
ADAFACTOR_LINE = "scale_parameter=False relative_step=False warmup_init=False"


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def lora_file(server, name):
    return server.base / "models" / "loras" / "loralab" / f"{name}.safetensors"


def test_1to2_stage_two_captions_keep_every_tag_of_both_characters(server):
    """Load Dataset -> Caption Template {concept}, {caption} -> Composite Pairs -> Caption Template
    {caption}: two characters sharing '1girl' keep it on both sides (seed 000's format)."""
    name = unique("seed000")
    for concept, tags, colour in (("1_cleo", "1girl, ponytail", (200, 60, 40)),
                                  ("1_anna", "1girl, hat, standing", (40, 60, 200))):
        folder = server.base / "input" / name / concept
        folder.mkdir(parents=True)
        Image.new("RGB", (64, 96), colour).save(folder / "0.png")
        (folder / "0.txt").write_text(tags, encoding="utf-8")
    prompt = {
        "2": load_dataset_node(name, min_side=64),
        "3": {"class_type": "LoRALabCaptionTemplate", "inputs": {**CAPTIONS, "dataset": ["2", 0],
                                                                 "template": "{concept}, {caption}"}},
        "4": {"class_type": "LoRALabCompositePairs", "inputs": {
            "dataset": ["3", 0], "pairs_per_combination": 1, "all_combinations_up_to": 0, "seed": 0, "height": 96,
            "crop_to_subject": False, "margin": 8, "gap": 0,
            "caption_template": "{left}/{right}/COMPOSITE, {tags_left}, {tags_right}", "bucket_resolution": 256}},
        "5": {"class_type": "LoRALabCaptionTemplate", "inputs": {**CAPTIONS, "dataset": ["4", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}},
        "7": {"class_type": "LoRALabCaptionTemplate", "inputs": {**CAPTIONS, "dataset": ["2", 0], "dedupe": False,
                                                                 "template": "{caption}, 1girl"}},
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["7", 1]}},
    }
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    stage2 = entry["outputs"]["5"]["text"][0]
    assert "'cleo/anna/COMPOSITE, 1girl, ponytail, 1girl, hat, standing'" in stage2, stage2
    assert "'anna/cleo/COMPOSITE, 1girl, hat, standing, 1girl, ponytail'" in stage2, stage2
    # de-duplication can be turned off: the captions keep every tag as written
    assert "'1girl, ponytail, 1girl'" in entry["outputs"]["7"]["text"][0]


@pytest.mark.parametrize("optimizer, line, learning_rate, expected", [
    ("Prodigy", PRODIGY_LINE, 1.0, "prodigyopt.prodigy.Prodigy(decouple=True,weight_decay=0.1,betas=(0.9, 0.99))"),
    ("AdamW8bit", ADAMW8BIT_LINE, 5e-4, "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))"),
    ("Adafactor", ADAFACTOR_LINE, 1e-3, "transformers.optimization.Adafactor(scale_parameter=False,"
                                        "relative_step=False,warmup_init=False)"),
])
def test_seed_optimizer_lines_paste_verbatim_train_and_are_recorded(server, optimizer, line, learning_rate, expected):
    name = unique(f"seedopt_{optimizer}")
    settings = {**OPTIMIZER_DEFAULTS, "optimizer": optimizer, "optimizer_args": line, "scheduler": "cosine",
                "warmup_steps": 1}
    objective = {**OBJECTIVE_DEFAULTS, "min_snr_gamma": 5.0, "debiased_estimation": True, "noise_offset": 0.05}
    prompt = training_prompt("SD1.5", name, steps=3, optimizer=settings, objective=objective)
    prompt["5"]["inputs"]["learning_rate"] = learning_rate
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    meta = metadata(lora_file(server, name))
    assert meta["ss_optimizer"] == expected
    # every setting a user needs to reproduce the run, in kohya's names, as the run was set up
    assert {k: meta[k] for k in ("ss_lr_scheduler", "ss_lr_warmup_steps", "ss_min_snr_gamma", "ss_debiased_estimation",
                                 "ss_noise_offset", "ss_max_train_steps", "ss_learning_rate", "ss_max_grad_norm",
                                 "ss_loss_type", "ss_masked_loss")} == {
        "ss_lr_scheduler": "cosine", "ss_lr_warmup_steps": "1", "ss_min_snr_gamma": "5.0",
        "ss_debiased_estimation": "True", "ss_noise_offset": "0.05", "ss_max_train_steps": "3",
        "ss_learning_rate": str(learning_rate), "ss_max_grad_norm": "1.0", "ss_loss_type": "l2",
        "ss_masked_loss": "True"}


def run_expecting_error(server, prompt):
    error = execution_error(server.run(prompt))
    assert error is not None, "the prompt should have failed"
    return error


@pytest.mark.parametrize("optimizer, line, message", [
    ("Prodigy", "betas=0.9", "Prodigy's betas is 2 numbers"),
    ("Prodigy", "decouple=yes", "decouple=yes: 'yes' is not a value"),
])
def test_a_bad_optimizer_argument_is_named_before_training(server, optimizer, line, message):
    settings = {**OPTIMIZER_DEFAULTS, "optimizer": optimizer, "optimizer_args": line}
    error = run_expecting_error(server, training_prompt("SD1.5", unique("badopt"), steps=2, optimizer=settings))
    assert error["node_type"] == "LoRALabOptimizer" and message in error["exception_message"]
    assert "optimizer_args" in error["exception_message"]


def test_continued_run_records_its_source_and_silent_no_ops_are_said(server):
    """A stage 2 names the file it continued from (not its server path); LoCon's conv rank with an
    attention preset is noted on the Network and Train nodes; samples every 2 steps of a 3-step run
    include the final step; a Merge Datasets share of 0 keeps that dataset's repeats."""
    first, second = unique("stage1"), unique("stage2")
    prompt = training_prompt("SD1.5", first, steps=2, network=NETWORK_DEFAULTS)
    prompt["4"]["inputs"]["repeats"] = 9
    stage2 = training_prompt("SD1.5", second, steps=3, network={**NETWORK_DEFAULTS, "algorithm": "LoCon",
                                                                "conv_rank": 4, "target_preset": "attention"},
                             samples={**SAMPLES_DEFAULTS, "prompts": "{trigger}", "every_n_steps": 2,
                                      "sample_at_start": False})
    for node_id in ("5", "7", "9"):
        prompt[f"2{node_id}"] = stage2[node_id]
    prompt["40"] = {"class_type": "LoRALabDatasetFromImages", "inputs": {
        "images": ["2", 0], "mask_meaning": "white = subject/train", "captions": "a duo", "trigger": "sks",
        "repeats": 1}}
    prompt["41"] = {"class_type": "LoRALabMergeDatasets", "inputs": {"dataset_1": ["4", 0], "share_1": 0.0,
                                                                     "dataset_2": ["40", 0], "share_2": 0.2}}
    prompt["42"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 2]}}  # Dataset From Images' preview
    prompt["25"]["inputs"].update(model=["1", 0], vae=["1", 2], clip=["1", 1], dataset=["41", 0], network=["27", 0],
                                  samples=["29", 0])
    prompt["27"]["inputs"]["continue_from_path"] = ["5", 1]
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)

    meta = metadata(lora_file(server, second))
    assert meta["loralab_continued_from"] == f"{first}.safetensors"
    assert "loralab_continued_from" not in metadata(lora_file(server, first))
    assert str(server.base) not in json.dumps(meta)

    assert "conv_rank 4 has no effect" in entry["outputs"]["27"]["text"][0]
    assert "conv_rank 4 has no effect" in entry["outputs"]["25"]["text"][0]
    assert "no effect" not in entry["outputs"]["5"]["text"][0]

    run = server.get("/loralab/runs/25")
    assert [s["step"] for s in run["samples"]] == [2, 3]

    merged = entry["outputs"]["41"]["text"][0]
    assert "part 1: 9 -> 9 samples per epoch (repeats x1)" in merged, merged
    assert entry["outputs"]["42"]["images"]


def test_load_dataset_summarises_missing_captions_per_concept_by_folder_name(server):
    name = unique("nocaptions")
    folder = server.base / "input" / name / "2_cleo"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (64, 64), (10 * i, 80, 120)).save(folder / f"{i}.png")
    prompt = {"2": load_dataset_node(name, min_side=64),
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}}
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    summary = entry["outputs"]["2"]["text"][0]
    assert summary.count("no caption") == 1, summary
    assert "no caption for 5 images of 'cleo' (using 'cleo'): 2_cleo/0.png, 2_cleo/1.png, 2_cleo/2.png and 2 more" \
        in summary
    assert str(server.base) not in summary
