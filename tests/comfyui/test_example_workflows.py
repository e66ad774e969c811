"""The example workflows (example_workflows/*.json): each is what scripts/example_workflows.py
generates against this ComfyUI's node definitions, loads and queues as written (every widget value
accepted, every link typed right), and runs end to end when scaled down onto the tiny demo model
of its family."""

import copy
import json
import shutil
import uuid

import pytest
from PIL import Image, ImageDraw

import example_workflows
from labtest import PACK_ROOT, families
from labtest.server import execution_error
from labtest.validate_workflow import comparable, validate_workflow

EXAMPLES = PACK_ROOT / "example_workflows"
NAMES = sorted(example_workflows.WORKFLOWS)
# Stock loaders' file inputs -> the models/ folder whose files their combos list.
MODEL_FOLDERS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "clip_name1": "text_encoders",
                 "clip_name2": "text_encoders", "vae_name": "vae", "clip_name": "text_encoders"}
# (loader, output slot) -> the Demo Model output (MODEL, CLIP, VAE) that stands in for it.
DEMO_SLOT = {("CheckpointLoaderSimple", 0): 0, ("CheckpointLoaderSimple", 1): 1, ("CheckpointLoaderSimple", 2): 2,
             ("UNETLoader", 0): 0, ("DualCLIPLoader", 0): 1, ("VAELoader", 0): 2, ("CLIPLoader", 0): 1}
FAMILY = {"flux": "Flux", "sd15": "SD1.5", "sdxl": "SDXL", "qwen": "Qwen-Image", "zimage": "Z-Image",
          "flux2": "Flux.2 Klein"}  # by the workflow name's first word
# A workflow of a family this ComfyUI lacks is not applicable here (its loaders' types are missing too).
CASES = families.params([(FAMILY[name.split("_")[0]], name) for name in NAMES])
# The datasets the workflows name, in input/: kohya concept folders (name -> tags, image count) or
# plain images with natural-language captions.
CONCEPTS = {"lora_lab/1to2_characters": {"1_alice": ("red hair, smile", 2), "1_bella": ("blue hair, dress", 2),
                                         "1_chloe": ("green hair, hat", 2)},
            "lora_lab/multi_concept": {"1_alice": ("red hair, smile", 3), "1_bella": ("blue hair, dress", 2)}}
PERSON = ("a woman with short brown hair by a window", "a woman in a grey coat on a street",
          "a close-up of a woman laughing")
SMALL = {"LoRALabTrain": {"steps": 2}, "LoRALabLoadDataset": {"resolution": 256, "min_side": 64, "max_side": 512},
         "LoRALabCompositePairs": {"height": 128, "bucket_resolution": 256, "pairs_per_combination": 1},
         "LoRALabSamples": {"width": 64, "height": 64, "steps": 1}}


def synthetic_image(path, colour, size):
    image = Image.new("RGB", size, (235, 235, 225))
    ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 8, 3 * size[0] // 4, 7 * size[1] // 8), fill=colour)
    image.save(path)


@pytest.fixture(scope="module")
def object_info(server):
    """This server's node definitions once every file the workflows name exists (ComfyUI lists
    folders again on each request): empty placeholder model files, never loaded, and the datasets."""
    for build in example_workflows.WORKFLOWS.values():
        for node in build()[0].values():
            for name, value in node["inputs"].items():
                if name in MODEL_FOLDERS:
                    (server.base / "models" / MODEL_FOLDERS[name]).mkdir(parents=True, exist_ok=True)
                    (server.base / "models" / MODEL_FOLDERS[name] / value).touch()
    inputs = server.base / "input"
    shutil.copy(EXAMPLES / "lora_lab_sample_subject.png", inputs)
    for folder, concepts in CONCEPTS.items():
        for c, (concept, (tags, count)) in enumerate(concepts.items()):
            (inputs / folder / concept).mkdir(parents=True)
            for i in range(count):
                colour, size = (200 - 80 * c, 60, 40 + 80 * c), (96 + 32 * i, 128)
                synthetic_image(inputs / folder / concept / f"{i}.png", colour, size)
                (inputs / folder / concept / f"{i}.txt").write_text(f"1girl, solo, {tags}, pose {i}")
    (inputs / "lora_lab" / "person").mkdir()
    for i, caption in enumerate(PERSON):
        synthetic_image(inputs / "lora_lab" / "person" / f"{i}.png", (150, 110 + 30 * i, 90), (128, 96 + 32 * i))
        (inputs / "lora_lab" / "person" / f"{i}.txt").write_text(caption)
    return server.get("/object_info")


@pytest.fixture(scope="module")
def generated(object_info):
    return example_workflows.ui_workflows(object_info)


def test_every_committed_example_has_a_builder():
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(NAMES)


@pytest.mark.parametrize("family, name", CASES)
def test_committed_example_is_the_generated_one(generated, family, name):
    """Widget positions follow the live node definitions, and no example drifts from the code
    (run scripts/example_workflows.py --url ... to regenerate)."""
    path = EXAMPLES / f"{name}.json"
    assert path.is_file() and name in generated, f"{name}: a JSON file without a builder, or the reverse"
    assert comparable(json.loads(path.read_text())) == comparable(generated[name])


@pytest.mark.parametrize("family, name", CASES)
def test_example_is_valid_for_the_live_node_definitions(object_info, family, name):
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    assert validate_workflow(workflow, object_info) == []


def test_validator_reports_what_the_frontend_would_not_load(object_info, generated):
    workflow = copy.deepcopy(generated["sd15_1to2_two_stage_loha"])
    nodes = {node["type"]: node for node in workflow["nodes"]}  # the last of each type
    nodes["LoRALabNetwork"]["widgets_values"][0] = "IA3"  # not a combo option
    nodes["LoRALabOptimizer"]["widgets_values"][5] = 0  # batch_size below its min
    nodes["LoRALabSave"]["widgets_values"].pop()  # a widget value missing
    nodes["CLIPSetLastLayer"]["type"] = "CLIPSetLastLayerTypo"
    workflow["links"][-1][5] = "MASK"  # a link whose type does not match its ends
    errors = "\n".join(validate_workflow(workflow, object_info))
    for expected in ("'IA3' is not among the options", "batch_size: 0 outside [1, 256]",
                     "7 widget values for 8 widgets", "CLIPSetLastLayerTypo): no such node type", "link type MASK"):
        assert expected in errors


def scaled_down(prompt: dict, family: str, tag: str) -> dict:
    """The graph on the family's tiny demo model in place of the loaders, at sizes and step counts
    that run in seconds on a CPU, with output names of its own."""
    prompt = copy.deepcopy(dict(prompt))
    loaders = {key: prompt.pop(key)["class_type"] for key in list(prompt)
               if (prompt[key]["class_type"], 0) in DEMO_SLOT}
    prompt["demo"] = {"class_type": "LoRALabDemoModel", "inputs": {"family": family, "weight_dtype": "fp32", "seed": 0}}
    for node in prompt.values():
        inputs = node["inputs"]
        for name, value in inputs.items():
            if isinstance(value, list) and value[0] in loaders:
                inputs[name] = ["demo", DEMO_SLOT[loaders[value[0]], value[1]]]
        inputs.update(SMALL.get(node["class_type"], {}))
        if node["class_type"] == "LoRALabOptimizer":
            inputs.update(batch_size=min(inputs["batch_size"], 2),
                          gradient_accumulation=min(inputs["gradient_accumulation"], 2))
        if node["class_type"] == "LoRALabTrain":
            inputs["output_name"] += f"_{tag}"
    return prompt


@pytest.mark.parametrize("family, name", CASES)
def test_scaled_down_example_trains_end_to_end(server, object_info, family, name):
    prompt = scaled_down(example_workflows.WORKFLOWS[name]()[0], FAMILY[name.split("_")[0]], uuid.uuid4().hex[:8])
    entry = server.run(prompt)
    assert execution_error(entry) is None, (execution_error(entry) or {}).get("exception_message")
    trains = [key for key, node in prompt.items() if node["class_type"] == "LoRALabTrain"]
    assert len(trains) == (2 if "two_stage" in name else 1)
    for key in trains:  # both stages of the 1to2 workflow
        path = server.base / "models" / "loras" / "loralab" / f"{prompt[key]['inputs']['output_name']}.safetensors"
        assert path.is_file() and entry["outputs"][key]["lora_path"] == [str(path)]
    if "1to2" in name:
        check_1to2_stage_two(prompt, entry, server)


def check_1to2_stage_two(prompt, entry, server):
    """The characters share '1girl, solo' (CONCEPTS): stage 2's captions keep them on both sides
    (seed 000's 'Left/Right/COMPOSITE, TagsLeft, TagsRight'), and its file names what it continued from."""
    from safetensors import safe_open

    pairs = next(k for k, n in prompt.items() if n["class_type"] == "LoRALabCompositePairs")
    stage2 = next(k for k, n in prompt.items() if n["class_type"] == "LoRALabCaptionTemplate"
                  and n["inputs"]["dataset"] == [pairs, 0])
    captions = [line for line in entry["outputs"][stage2]["text"][0].splitlines() if "/COMPOSITE, " in line]
    assert captions and all(line.count("1girl") == 2 and line.count("solo") == 2 for line in captions), captions
    first, second = (prompt[k]["inputs"]["output_name"] for k, n in prompt.items() if n["class_type"] == "LoRALabTrain")
    with safe_open(str(server.base / "models" / "loras" / "loralab" / f"{second}.safetensors"), "pt") as f:
        assert f.metadata()["loralab_continued_from"] == f"{first}.safetensors"
