"""The train node end to end through the real server's HTTP API: it trains and saves, the file
loads in the stock LoraLoader, bad input gets a clear error, Cancel saves what it has."""

import time
import uuid

import pytest
from safetensors import safe_open

from labtest.server import execution_error
from labtest.workflows import (NETWORK_DEFAULTS, OBJECTIVE_DEFAULTS, SAVE_DEFAULTS, stock_lora_load_prompt,
                               training_prompt)


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


@pytest.mark.parametrize("family", ["Flux", "SD1.5", "SDXL"])
def test_train_then_load_with_stock_lora_loader(server, family):
    name = unique(f"e2e_{family.replace('.', '')}")
    save = {**SAVE_DEFAULTS, "every_n_steps": 4, "keep_last": 1}
    entry = server.run(training_prompt(family, name, steps=10, save=save, network=NETWORK_DEFAULTS))
    assert execution_error(entry) is None, execution_error(entry)
    folder = server.base / "models" / "loras" / "loralab"
    final = folder / f"{name}.safetensors"
    assert final.is_file()
    assert sorted(p.name for p in folder.glob(f"{name}-step*.safetensors")) == [f"{name}-step000008.safetensors"]
    meta = metadata(final)
    base = {"Flux": "flux1", "SD1.5": "sd_v1", "SDXL": "sdxl_base_v1-0"}[family]
    assert meta["ss_base_model_version"] == base and meta["ss_steps"] == "10" and meta["ss_network_dim"] == "4"
    assert not list(folder.glob(".*.tmp"))

    log_before = len(server.log_tail(100000).splitlines())
    sample = stock_lora_load_prompt(family, f"loralab/{name}.safetensors")
    entry = server.run(sample)
    assert execution_error(entry) is None, execution_error(entry)
    new_log = "\n".join(server.log_tail(100000).splitlines()[log_before:])
    assert "lora key not loaded" not in new_log, new_log[-2000:]


def run_expecting_error(server, prompt):
    entry = server.run(prompt)
    error = execution_error(entry)
    assert error is not None, "the prompt should have failed"
    assert server.alive()
    return error["exception_message"]


def test_bad_output_name_is_refused(server):
    message = run_expecting_error(server, training_prompt("SD1.5", "../escape", steps=2))
    assert "output name" in message and "'..'" in message
    assert not (server.base / "models" / "loras" / "escape.safetensors").exists()


def test_existing_file_is_not_overwritten(server):
    name = unique("exists")
    first = server.run(training_prompt("SD1.5", name, steps=2))
    assert execution_error(first) is None
    path = server.base / "models" / "loras" / "loralab" / f"{name}.safetensors"
    before = path.read_bytes()
    message = run_expecting_error(server, training_prompt("SD1.5", name, steps=3))
    assert "already exists" in message and "output_name" in message
    assert path.read_bytes() == before


def test_min_snr_on_flux_is_refused(server):
    objective = {**OBJECTIVE_DEFAULTS, "min_snr_gamma": 5.0}
    message = run_expecting_error(server, training_prompt("Flux", unique("snr"), steps=2, objective=objective))
    assert "min-SNR" in message and "Flux" in message


def test_rank_larger_than_a_layer_is_refused(server):
    network = {**NETWORK_DEFAULTS, "rank": 1000, "alpha": 1000.0}
    message = run_expecting_error(server, training_prompt("SD1.5", unique("rank"), steps=2, network=network))
    assert "rank 1000 is larger than layer" in message


def test_captions_without_clip_are_refused(server):
    message = run_expecting_error(server, training_prompt("SD1.5", unique("noclip"), steps=2, with_clip=False))
    assert "clip" in message and "captions" in message


def test_cancel_saves_the_last_completed_step(server):
    """Cancel over HTTP while training (ComfyUI 0.33 raises it inside a layer's forward; 0.3.64
    at the loop's poll): `<name>_interrupted_<last logged step>` with its training state, which
    the stock loader loads, and a resume from it ends bitwise equal to the uninterrupted run."""
    from safetensors.torch import load_file

    name, full = unique("cancel"), unique("full")
    folder = server.base / "models" / "loras" / "loralab"
    save = {**SAVE_DEFAULTS, "every_n_steps": 3}
    steps = 60  # about 8 s of training: the Cancel lands long before the end
    prompt_id = server.queue(training_prompt("SD1.5", name, steps=steps, save=save, network=NETWORK_DEFAULTS))
    deadline = time.monotonic() + 120
    while not list(folder.glob(f"{name}-step*.safetensors")):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    server.post("/interrupt", {})
    entry = server.wait(prompt_id, timeout=120)
    assert entry["status"]["status_str"] == "error"
    interrupted = list(folder.glob(f"{name}_interrupted_*.safetensors"))
    assert len(interrupted) == 1, server.log_tail()
    step = int(interrupted[0].stem.rsplit("_", 1)[-1])
    run = server.get("/loralab/runs/5")
    assert run["status"] == "interrupted" and run["steps"][-1]["step"] == step
    last_periodic = max(int(p.stem.rsplit("step", 1)[-1]) for p in folder.glob(f"{name}-step*.safetensors"))
    assert steps > step >= last_periodic >= 3
    assert metadata(interrupted[0])["ss_steps"] == str(step)
    assert interrupted[0].with_suffix(".trainstate").is_file()
    assert not (folder / f"{name}.safetensors").exists()
    assert server.alive()

    entry = server.run(training_prompt("SD1.5", full, steps=steps, save=SAVE_DEFAULTS, network=NETWORK_DEFAULTS))
    assert execution_error(entry) is None, execution_error(entry)
    resume = {**SAVE_DEFAULTS, "resume_from": f"loralab/{interrupted[0].stem}.trainstate"}
    entry = server.run(training_prompt("SD1.5", name, steps=steps, save=resume, network=NETWORK_DEFAULTS))
    assert execution_error(entry) is None, execution_error(entry)
    a, b = load_file(folder / f"{full}.safetensors"), load_file(folder / f"{name}.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert load_file(interrupted[0]).keys() == a.keys()  # a LoRA of every adapted layer


def test_resume_from_a_saved_state_equals_the_uninterrupted_run(server):
    from safetensors.torch import load_file

    folder = server.base / "models" / "loras" / "loralab"
    full, resumed = unique("full"), unique("resumed")
    save = {**SAVE_DEFAULTS, "every_n_steps": 4}
    entry = server.run(training_prompt("SD1.5", full, steps=12, save=save, network=NETWORK_DEFAULTS))
    assert execution_error(entry) is None, execution_error(entry)
    state = folder / f"{full}-step000004.trainstate"
    assert state.is_file()
    resume = {**save, "resume_from": f"loralab/{state.name}"}
    entry = server.run(training_prompt("SD1.5", resumed, steps=12, save=resume, network=NETWORK_DEFAULTS))
    assert execution_error(entry) is None, execution_error(entry)
    a, b = load_file(folder / f"{full}.safetensors"), load_file(folder / f"{resumed}.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    # a run with other settings is refused instead of silently diverging
    other = {**NETWORK_DEFAULTS, "rank": 2, "alpha": 2.0}
    message = run_expecting_error(server, training_prompt("SD1.5", unique("mismatch"), steps=12, save=resume,
                                                          network=other))
    assert "other settings" in message and "rank" in message


@pytest.mark.parametrize("family", ["Flux", "SD1.5"])
def test_samples_are_taken_at_start_each_save_and_end_without_changing_training(server, family):
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    from labtest.workflows import SAMPLES_DEFAULTS

    folder = server.base / "models" / "loras" / "loralab"
    plain, sampled = unique("plain"), unique("sampled")
    save = {**SAVE_DEFAULTS, "every_n_steps": 3}
    assert execution_error(server.run(training_prompt(family, plain, steps=6, save=save))) is None
    prompt = training_prompt(family, sampled, steps=6, save=save, samples=SAMPLES_DEFAULTS)
    prompt["10"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 3], "filename_prefix": sampled}}
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    files = entry["outputs"]["10"]["images"]
    images = [np.asarray(Image.open(server.base / "output" / f["subfolder"] / f["filename"])) for f in files]
    assert len(images) == 6 and all(i.shape == (64, 64, 3) for i in images)  # 2 prompts x (start, step 3, step 6)
    assert not np.array_equal(images[0], images[4])  # step 0 vs step 6, same prompt and seed: the LoRA acts
    a, b = load_file(folder / f"{plain}.safetensors"), load_file(folder / f"{sampled}.safetensors")
    assert all(a[k].equal(b[k]) for k in a)  # sampling does not disturb training


def test_loss_chart_node_draws_the_history(server):
    prompt = training_prompt("SD1.5", unique("chart"), steps=5)
    prompt["10"] = {"class_type": "LoRALabLossChart", "inputs": {"loss_history": ["5", 2], "width": 300,
                                                                "height": 150, "log_scale": True}}
    prompt["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "chart"}}
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    from PIL import Image

    f = entry["outputs"]["11"]["images"][0]
    with Image.open(server.base / "output" / f["subfolder"] / f["filename"]) as image:
        assert image.size == (300, 150)
        assert len(set(image.getdata())) > 3  # something was drawn on the background


def test_text_encoder_training_with_8bit_optimizer_and_usable_clip_output(server):
    from labtest.workflows import OPTIMIZER_DEFAULTS

    optimizer = {**OPTIMIZER_DEFAULTS, "optimizer": "AdamW8bit", "optimizer_args": "weight_decay=0.1 betas=0.9,0.99",
                 "scheduler": "cosine", "warmup_steps": 1, "text_encoder_lr": 5e-3}
    prompt = training_prompt("SD1.5", unique("te"), steps=4, optimizer=optimizer)
    for node_id, clip in (("30", ["1", 1]), ("31", ["5", 4])):  # input CLIP vs the Train node's clip output
        prompt[node_id] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "sks"}}
    prompt["32"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["30", 0],
                                                                    "conditioning_2": ["31", 0]}}
    prompt["33"] = {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["32", 0],
                                                         "negative": ["30", 0], "latent_image": ["34", 0], "seed": 1,
                                                         "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                                                         "scheduler": "normal", "denoise": 1.0}}
    prompt["34"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["35"] = {"class_type": "PreviewImage", "inputs": {"images": ["36", 0]}}
    prompt["36"] = {"class_type": "VAEDecode", "inputs": {"samples": ["33", 0], "vae": ["1", 2]}}
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    path = server.base / "models" / "loras" / "loralab" / f"{prompt['5']['inputs']['output_name']}.safetensors"
    meta = metadata(path)
    assert meta["ss_text_encoder_lr"] == "0.005" and meta["ss_network_train_unet_only"] == "False"
    assert meta["ss_optimizer"] == "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))"


def test_run_history_is_served_for_the_canvas(server):
    from labtest.workflows import SAMPLES_DEFAULTS

    save = {**SAVE_DEFAULTS, "every_n_steps": 2}
    prompt = training_prompt("SD1.5", unique("history"), steps=4, save=save,
                             samples={**SAMPLES_DEFAULTS, "prompts": "{trigger}", "sample_at_start": False})
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    run = server.get("/loralab/runs/5")
    assert run["status"] == "success" and run["total"] == 4
    assert [s["step"] for s in run["steps"]] == [1, 2, 3, 4] and all(s["loss"] > 0 for s in run["steps"])
    assert run["saves"] == [2, 4] and [s["step"] for s in run["samples"]] == [2, 4]
    shown = entry["outputs"]["5"]["images"]  # the samples stay on the node after the run
    assert [i["filename"] for i in shown] == [i["filename"] for s in run["samples"] for i in s["images"]]
    assert (server.base / "temp" / shown[0]["subfolder"] / shown[0]["filename"]).is_file()
    assert any(r["run"] == run["run"] for r in server.get("/loralab/runs"))


def test_two_stage_run_in_one_workflow_continues_from_stage_one(server):
    """Stage 2 takes stage 1's lora_path through the Network node (1to2's two-stage recipe)."""
    from safetensors.torch import load_file

    first, second = unique("stage1"), unique("stage2")
    prompt = training_prompt("SD1.5", first, steps=3, network=NETWORK_DEFAULTS)
    stage2 = training_prompt("SD1.5", second, steps=1, network=NETWORK_DEFAULTS)
    for node_id, node in stage2.items():
        if node_id in ("5", "7"):
            prompt[f"2{node_id}"] = node
    prompt["25"]["inputs"].update(model=["1", 0], vae=["1", 2], clip=["1", 1], dataset=["4", 0], network=["27", 0],
                                  learning_rate=1e-7)
    prompt["27"]["inputs"]["continue_from_path"] = ["5", 1]
    entry = server.run(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    folder = server.base / "models" / "loras" / "loralab"
    a, b = load_file(folder / f"{first}.safetensors"), load_file(folder / f"{second}.safetensors")
    ups = [k for k in a if k.endswith("lora_up.weight")]
    assert ups and all(torch_close(a[k], b[k]) for k in ups)  # one tiny step from stage 1's weights


def torch_close(x, y):
    import torch

    return torch.allclose(x.float(), y.float(), atol=1e-5)
