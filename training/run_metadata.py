"""How a run was trained, as LoRA file metadata: every setting a user needs to reproduce it, under
kohya sd-scripts' `ss_*` name where kohya has one (kohya writes every value with str(): True,
None, 0.0001), and under `loralab_*` where it has none."""

from __future__ import annotations

from pathlib import PurePath

from .optimizers import optimizer_description
from .settings import NetworkSettings, ObjectiveSettings, OptimizerSettings

# kohya's loss_type names for ours
_LOSS_TYPE = {"mse": "l2", "huber": "huber"}


def file_name(reference: str | None) -> str | None:
    """A LoRA or state file as the user picked it (its name under the loras folder), never a
    server path: a full path (a lora_path output) is cut to its file name."""
    if not reference:
        return None
    path = PurePath(reference.replace("\\", "/"))
    return path.name if path.is_absolute() else str(reference)


def settings_metadata(*, optimizer: OptimizerSettings, objective: ObjectiveSettings, network: NetworkSettings,
                      dataset, steps: int, flow: bool, resume_from: str | None = None) -> dict[str, str]:
    """The run's settings as metadata strings. `flow`: a flow model (Flux), whose timestep
    settings apply instead of min-SNR, debiased estimation and noise offset."""
    meta = {
        "ss_optimizer": optimizer_description(optimizer.optimizer, optimizer.optimizer_args),
        "ss_lr_scheduler": optimizer.scheduler,
        "ss_lr_warmup_steps": optimizer.warmup_steps,
        "ss_lr_scheduler_num_cycles": optimizer.num_cycles,
        "ss_max_train_steps": steps,
        "ss_batch_size_per_device": optimizer.batch_size,
        "ss_gradient_accumulation_steps": optimizer.grad_accum,
        "ss_total_batch_size": optimizer.batch_size * optimizer.grad_accum,
        "ss_max_grad_norm": optimizer.max_grad_norm,
        "ss_scale_weight_norms": optimizer.scale_weight_norms or None,
        "ss_gradient_checkpointing": optimizer.gradient_checkpointing,
        "ss_network_dropout": network.network.dropout or None,
        "loralab_target_preset": network.preset,
        "ss_loss_type": _LOSS_TYPE[objective.loss],
        "loralab_huber_delta": objective.huber_delta,
        "ss_masked_loss": any(s.mask is not None or s.mask_path or s.alpha_mask for s in dataset.samples),
        "loralab_mask_reduction": objective.reduction,
        "loralab_unmasked_weight": objective.unmasked_weight,
        "ss_num_train_images": dataset.images_per_epoch,
        "ss_flip_aug": bool(dataset.flip),
    }
    if flow:
        meta.update({
            "ss_timestep_sampling": objective.flow_timesteps.sampling,
            "ss_sigmoid_scale": objective.flow_timesteps.sigmoid_scale,
            "ss_discrete_flow_shift": objective.flow_timesteps.shift,
            "ss_model_prediction_type": "raw",
            "ss_guidance_scale": objective.training_guidance,
        })
    else:
        meta.update({
            "ss_min_snr_gamma": objective.snr.min_snr_gamma,
            "ss_debiased_estimation": objective.snr.debiased,
            "ss_noise_offset": objective.noise_offset or None,
        })
    policy = dataset.caption_policy
    if policy is not None:
        meta.update({
            "ss_shuffle_caption": policy.shuffle,
            "ss_keep_tokens": policy.keep_tokens,
            "ss_keep_tokens_separator": policy.keep_separator,
            "ss_caption_dropout_rate": policy.caption_dropout,
            "ss_caption_tag_dropout_rate": policy.tag_dropout,
            "loralab_caption_template": policy.template,
            "loralab_caption_dedupe": policy.dedupe,
        })
    continued = file_name(network.continue_from)
    if continued:
        meta["loralab_continued_from"] = continued
    resumed = file_name(resume_from)
    if resumed:
        meta["loralab_resumed_from"] = resumed
    return {key: str(value) for key, value in meta.items()}
