"""How a run was trained, in its file's metadata: each setting under kohya's name (kohya writes
values with str()), never a server path."""

import torch

from comfyui_lora_lab.training.captions import CaptionPolicy
from comfyui_lora_lab.training.dataset import Dataset, DatasetSample
from comfyui_lora_lab.training.lora_file import TrainingFacts, build_metadata
from comfyui_lora_lab.training.network import NetworkConfig
from comfyui_lora_lab.training.objective import FlowTimesteps, SnrWeighting
from comfyui_lora_lab.training.run_metadata import settings_metadata
from comfyui_lora_lab.training.settings import NetworkSettings, ObjectiveSettings, OptimizerSettings

PRODIGY = OptimizerSettings("Prodigy", '"decouple=True weight_decay=0.1 betas=0.9,0.99"', "cosine", warmup_steps=3,
                            batch_size=2, grad_accum=4, max_grad_norm=0.5)
OBJECTIVE = ObjectiveSettings(snr=SnrWeighting(5.0, True), noise_offset=0.05,
                              flow_timesteps=FlowTimesteps("shift", 1.0, 2.5), training_guidance=1.0)


def dataset(**changes):
    sample = DatasetSample(caption="a", concept="c", image=torch.zeros(8, 8, 3), mask=torch.ones(8, 8), repeats=3)
    return Dataset(samples=(sample,), **changes)


def metadata(flow=False, **changes):
    settings = dict(optimizer=PRODIGY, objective=OBJECTIVE, dataset=dataset(), steps=40, flow=flow,
                    network=NetworkSettings(NetworkConfig("LoCon", 16, 8.0, 8, 4.0, 0.1), "all",
                                            "/srv/comfy/models/loras/loralab/stage1.safetensors"))
    return settings_metadata(**{**settings, **changes})


def test_an_eps_runs_settings_under_kohyas_names():
    meta = metadata(dataset=dataset(caption_policy=CaptionPolicy(shuffle=True, keep_tokens=1, tag_dropout=0.1)))
    assert meta["ss_optimizer"] == "prodigyopt.prodigy.Prodigy(decouple=True,weight_decay=0.1,betas=(0.9, 0.99))"
    expected = {"ss_lr_scheduler": "cosine", "ss_lr_warmup_steps": "3", "ss_max_train_steps": "40",
                "ss_batch_size_per_device": "2", "ss_gradient_accumulation_steps": "4", "ss_total_batch_size": "8",
                "ss_max_grad_norm": "0.5", "ss_min_snr_gamma": "5.0", "ss_debiased_estimation": "True",
                "ss_noise_offset": "0.05", "ss_network_dropout": "0.1", "ss_loss_type": "l2",
                "ss_masked_loss": "True", "ss_num_train_images": "3", "ss_shuffle_caption": "True",
                "ss_keep_tokens": "1", "ss_caption_tag_dropout_rate": "0.1", "loralab_target_preset": "all"}
    assert {k: meta[k] for k in expected} == expected
    assert "ss_timestep_sampling" not in meta  # Flux's settings only on Flux
    # a continued run names its source by file name: no server path goes into a shared file
    assert meta["loralab_continued_from"] == "stage1.safetensors"
    assert not any("/srv/" in value for value in meta.values())


def test_a_flux_run_records_its_timesteps_and_guidance():
    meta = metadata(flow=True)
    assert (meta["ss_timestep_sampling"], meta["ss_discrete_flow_shift"], meta["ss_guidance_scale"]) == (
        "shift", "2.5", "1.0")
    assert "ss_min_snr_gamma" not in meta and "ss_noise_offset" not in meta


def test_the_settings_reach_the_file_metadata_over_the_basic_keys():
    settings = metadata()
    facts = TrainingFacts(base_model_version="sd_v1", architecture="stable-diffusion-v1/lora",
                          implementation="https://github.com/Stability-AI/generative-models", output_name="x", network_module="lycoris.kohya", rank=16, alpha=8.0,
                          network_args={}, steps=40, epoch=1, learning_rate=1.0, optimizer="Prodigy",
                          resolution="512x512", seed=0, settings=settings)
    meta = build_metadata(facts)
    assert meta["ss_optimizer"].startswith("prodigyopt.prodigy.Prodigy(") and meta["ss_lr_scheduler"] == "cosine"
    assert all(isinstance(v, str) for v in meta.values())
