"""Small config nodes for the train node. Each outputs a frozen settings value; unconnected, the
train node uses the same defaults as these widgets."""

from comfy_api.latest import io

from ..training.network import ALGORITHMS, NetworkConfig
from ..training.objective import AUTO, FLOW_SAMPLERS, FlowTimesteps, SnrWeighting
from ..training.optimizers import OPTIMIZERS, check_optimizer_args, optimizer_notes
from ..training.schedulers import SCHEDULERS
from ..training.settings import (MEMORY_MODES, TARGET_PRESETS, NetworkSettings, ObjectiveSettings, OptimizerSettings,
                                 SampleSettings, SaveSettings, network_notes)
from ..training.lora_file import SAVE_DTYPES, check_subfolder
from ..training.train_state import SUFFIX as STATE_SUFFIX
from . import host, types

NO_FILE = "none"


class Network(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabNetwork", display_name="LoRA Lab Network", category="LoRA Lab/training",
            description="Adapter algorithm, size and target layers for LoRA Lab Train.",
            inputs=[
                io.Combo.Input("algorithm", options=list(ALGORITHMS), default="LoRA",
                               tooltip="LoRA (linear layers), LoCon (+ convolutions), LoHa, LoKr, GLoRA, Diag-OFT "
                                       "(rank = block size), DoRA (slower: recomputes each adapted weight). All load in "
                                       "ComfyUI's stock LoraLoader exactly as trained."),
                io.Int.Input("rank", default=16, min=1, max=1024, tooltip="Network dim: adapter rank for linear layers."),
                io.Float.Input("alpha", default=16.0, min=0.01, max=1024.0, step=0.5,
                               tooltip="Network alpha; the update is scaled by alpha/rank (kohya guides: 1/4 to 1/2 of rank)."),
                io.Int.Input("conv_rank", default=0, min=0, max=1024,
                             tooltip="Rank for convolutions larger than 1x1 (0 = leave them alone). Not for LoRA."),
                io.Float.Input("conv_alpha", default=1.0, min=0.01, max=1024.0, step=0.5, tooltip="Alpha for convolutions."),
                io.Float.Input("dropout", default=0.0, min=0.0, max=0.9, step=0.01,
                               tooltip="Dropout on the adapter's output during training."),
                io.Combo.Input("target_preset", options=list(TARGET_PRESETS), default="attention+mlp",
                               tooltip="Which layers get adapters: attention only, attention and MLP (default), or "
                                       "all linear/conv layers of the transformer/UNet blocks."),
                io.Combo.Input("continue_from", options=[NO_FILE, *host.lora_file_names()], default=NO_FILE,
                               tooltip="Start from an existing LoRA file with the same settings (e.g. stage 2 of a "
                                       "two-stage run)."),
                io.String.Input("continue_from_path", optional=True, force_input=True,
                                tooltip="Or connect the lora_path output of an earlier LoRA Lab Train node: a two-stage "
                                        "run in one workflow (stage 2 continues from stage 1's file)."),
            ],
            outputs=[types.NetworkConfig.Output(display_name="network", tooltip="Network settings for LoRA Lab Train.")],
        )

    @classmethod
    def execute(cls, algorithm, rank, alpha, conv_rank, conv_alpha, dropout, target_preset, continue_from,
                continue_from_path=None) -> io.NodeOutput:
        config = NetworkConfig(algorithm, rank, alpha, conv_rank, conv_alpha, dropout)
        source = continue_from_path or (None if continue_from == NO_FILE else continue_from)
        settings = NetworkSettings(config, target_preset, source)
        notes = network_notes(settings)
        return io.NodeOutput(settings, ui={"text": ["\n".join(f"Note: {n}" for n in notes)]} if notes else None)


class Optimizer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabOptimizer", display_name="LoRA Lab Optimizer", category="LoRA Lab/training",
            description="Optimizer, learning-rate schedule and batch settings for LoRA Lab Train.",
            inputs=[
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="AdamW",
                               tooltip="AdamW, AdamW8bit/Lion8bit (bitsandbytes), Lion, Prodigy (set lr 1.0), "
                                       "Adafactor (transformers', as kohya uses)."),
                io.String.Input("optimizer_args", default="",
                                tooltip="kohya's optimizer_args, pasted as a guide writes them (quotes and all), e.g. "
                                        "'decouple=True weight_decay=0.1 betas=0.9,0.99 d_coef=2' or Adafactor's "
                                        "'scale_parameter=False relative_step=False warmup_init=False'. Each "
                                        "argument is checked against the optimizer before training."),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="constant",
                               tooltip="Learning-rate schedule over the run."),
                io.Int.Input("warmup_steps", default=0, min=0, max=1_000_000, tooltip="Linear warm-up steps."),
                io.Int.Input("num_cycles", default=1, min=1, max=1000, tooltip="Restarts for cosine_with_restarts."),
                io.Int.Input("batch_size", default=1, min=1, max=256,
                             tooltip="Images per micro-batch (only same-size images share one)."),
                io.Int.Input("gradient_accumulation", default=1, min=1, max=1024,
                             tooltip="Micro-batches per optimizer step (effective batch = batch x this)."),
                io.Float.Input("max_grad_norm", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Clip the gradient norm (0 = off)."),
                io.Float.Input("scale_weight_norms", default=0.0, min=0.0, max=100.0, step=0.1,
                               tooltip="kohya's max-norm regularisation of the adapter (0 = off)."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute activations in backward to save memory."),
                io.Float.Input("text_encoder_lr", default=0.0, min=0.0, max=10.0, step=1e-5,
                               tooltip="Learning rate of the CLIP text encoder(s) (0 = not trained; kohya guides use "
                                       "5e-4 on SD1.5). T5 is never trained."),
                io.Combo.Input("memory_mode", options=list(MEMORY_MODES), default="auto", optional=True,
                               tooltip="Where the frozen model weights live while training. auto: fully on the GPU "
                                       "when they fit, else partially (the rest streamed per layer, as ComfyUI does "
                                       "for sampling); full: always fully loaded; offload: partially loaded on "
                                       "purpose (least VRAM, slower). fp8 checkpoints train in their stored type."),
                io.Int.Input("keep_activations_blocks", default=0, min=0, max=1000, optional=True,
                             tooltip="With gradient checkpointing: the first N transformer/UNet blocks keep their "
                                     "activations instead of recomputing them (faster, more memory)."),
            ],
            outputs=[types.OptimizerConfig.Output(display_name="optimizer", tooltip="Optimizer settings for LoRA Lab Train.")],
        )

    @classmethod
    def execute(cls, optimizer, optimizer_args, scheduler, warmup_steps, num_cycles, batch_size,
                gradient_accumulation, max_grad_norm, scale_weight_norms, gradient_checkpointing,
                text_encoder_lr=0.0, memory_mode="auto", keep_activations_blocks=0) -> io.NodeOutput:
        try:
            check_optimizer_args(optimizer, optimizer_args)
        except ValueError as error:
            raise ValueError(f"optimizer_args: {error}") from None
        notes = optimizer_notes(optimizer, optimizer_args)
        ui = {"text": ["\n".join(f"Note: {n}" for n in notes)]} if notes else None
        return io.NodeOutput(OptimizerSettings(optimizer, optimizer_args, scheduler, warmup_steps, num_cycles,
                                               batch_size, gradient_accumulation, max_grad_norm, scale_weight_norms,
                                               gradient_checkpointing, text_encoder_lr, memory_mode,
                                               keep_activations_blocks), ui=ui)


class Objective(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabObjective", display_name="LoRA Lab Objective", category="LoRA Lab/training",
            description="Loss, masking and timestep settings for LoRA Lab Train.",
            inputs=[
                io.Combo.Input("loss", options=["mse", "huber"], default="mse", tooltip="Error per latent cell."),
                io.Float.Input("huber_delta", default=1.0, min=0.001, max=100.0, step=0.01, tooltip="Huber's delta."),
                io.Combo.Input("mask_reduction", options=["normalized", "kohya"], default="normalized",
                               tooltip="normalized: sum(w*e)/sum(w) per image (a small subject still learns at full "
                                       "strength); kohya: mean(w*e) over the whole frame."),
                io.Float.Input("unmasked_weight", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Loss weight kept by masked-out pixels (0 = ignored, 1 = mask has no effect)."),
                io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=100.0, step=0.5,
                               tooltip="Min-SNR weighting gamma, eps/v models only (0 = off; kohya guides use 5)."),
                io.Boolean.Input("debiased_estimation", default=False, tooltip="Debiased estimation loss, eps/v models only."),
                io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Noise offset, eps/v models only."),
                io.Combo.Input("timestep_sampling", options=[AUTO, *FLOW_SAMPLERS], default=AUTO,
                               tooltip="Flow models (Flux, Z-Image, Qwen-Image, SD3.5 ...): how training timesteps "
                                       "are drawn. auto: Flux.1 sigmoid (kohya's default), other families sigmoid "
                                       "shifted by the model's own sampling shift; sigmoid, shift, uniform, "
                                       "flux_shift (Flux's resolution-dependent shift)."),
                io.Float.Input("sigmoid_scale", default=1.0, min=0.01, max=10.0, step=0.1,
                               tooltip="Flow models: sigmoid scale."),
                io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Flow models: the shift of 'shift' sampling (and of 'auto' where it shifts); "
                                       "0 = the shift ComfyUI samples the model with (Z-Image and SD3.5 3.0, Flux.2 "
                                       "2.02, Qwen-Image 1.15, or an upstream ModelSampling node's). Only this one "
                                       "shift is applied."),
                io.Float.Input("training_guidance", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Flux-dev guidance during training (1.0 as kohya recommends); models without "
                                       "a guidance embedding ignore it."),
            ],
            outputs=[types.ObjectiveConfig.Output(display_name="objective", tooltip="Objective settings for LoRA Lab Train.")],
        )

    @classmethod
    def execute(cls, loss, huber_delta, mask_reduction, unmasked_weight, min_snr_gamma, debiased_estimation,
                noise_offset, timestep_sampling, sigmoid_scale, shift, training_guidance) -> io.NodeOutput:
        snr = SnrWeighting(min_snr_gamma or None, debiased_estimation)
        flow = FlowTimesteps(timestep_sampling, sigmoid_scale, shift)
        return io.NodeOutput(ObjectiveSettings(loss, huber_delta, mask_reduction, unmasked_weight, snr, noise_offset,
                                               flow, training_guidance))


class Save(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabSave", display_name="LoRA Lab Save", category="LoRA Lab/training",
            description="When and how LoRA Lab Train saves the adapter.",
            inputs=[
                io.Int.Input("every_n_steps", default=0, min=0, max=1_000_000, tooltip="Save every N steps (0 = off)."),
                io.Int.Input("every_n_epochs", default=0, min=0, max=100_000,
                             tooltip="Save every N epochs (0 = off). A single image is one step per epoch."),
                io.Int.Input("keep_last", default=0, min=0, max=10_000, tooltip="Keep only the last K periodic saves (0 = all)."),
                io.Combo.Input("precision", options=list(SAVE_DTYPES), default="bf16", tooltip="Tensor dtype in the file."),
                io.String.Input("subfolder", default="loralab", tooltip="Subfolder of ComfyUI's loras folder."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace files of the same name."),
                io.Boolean.Input("save_training_state", default=True,
                                 tooltip="Also write a .trainstate file (adapter, optimizer, scheduler, step) beside "
                                         "each periodic and interrupted save, so the run can be resumed exactly."),
                io.Combo.Input("resume_from", options=[NO_FILE, *host.state_file_names(STATE_SUFFIX)], default=NO_FILE,
                               tooltip="Continue an earlier run from its .trainstate file (same dataset and "
                                       "settings): the result equals an uninterrupted run."),
            ],
            outputs=[types.SaveConfig.Output(display_name="save", tooltip="Save settings for LoRA Lab Train.")],
        )

    @classmethod
    def execute(cls, every_n_steps, every_n_epochs, keep_last, precision, subfolder, overwrite,
                save_training_state=True, resume_from=NO_FILE) -> io.NodeOutput:
        if precision not in SAVE_DTYPES:  # an old workflow or an API client: a run must not fail at its save
            raise ValueError(f"precision: {precision!r} is not one of {', '.join(SAVE_DTYPES)}")
        try:
            check_subfolder(subfolder)
        except ValueError as error:
            raise ValueError(error if str(error).startswith("subfolder") else f"subfolder: {error}") from None
        return io.NodeOutput(SaveSettings(every_n_steps, every_n_epochs, keep_last, precision, subfolder, overwrite,
                                          save_training_state, None if resume_from == NO_FILE else resume_from))


class Samples(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        samplers, schedulers = host.sampler_names()
        return io.Schema(
            node_id="LoRALabSamples", display_name="LoRA Lab Samples", category="LoRA Lab/training",
            description="Sample images LoRA Lab Train takes during training, to compare checkpoints.",
            inputs=[
                io.String.Input("prompts", multiline=True, default="{trigger}",
                                tooltip="One prompt per line; {trigger} becomes the dataset's trigger word."),
                io.String.Input("negative", multiline=True, default="", tooltip="Negative prompt (used when cfg > 1)."),
                io.Combo.Input("sampler", options=samplers, default="euler", tooltip="Sampler."),
                io.Combo.Input("scheduler", options=schedulers, default="simple", tooltip="Noise schedule."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps per image."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance (1.0 for Flux-dev, which uses 'guidance')."),
                io.Float.Input("guidance", default=3.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Flux sampling guidance (separate from the training guidance)."),
                io.Int.Input("seed", default=42, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Fixed seed: every checkpoint is sampled with the same noise."),
                io.Int.Input("width", default=512, min=64, max=4096, step=16, tooltip="Sample width in pixels."),
                io.Int.Input("height", default=512, min=64, max=4096, step=16, tooltip="Sample height in pixels."),
                io.Int.Input("every_n_steps", default=0, min=0, max=1_000_000,
                             tooltip="Sample every N steps (0 = with each save and at the end)."),
                io.Boolean.Input("sample_at_start", default=True,
                                 tooltip="Also sample before training, to compare with the base model."),
            ],
            outputs=[types.SampleConfig.Output(display_name="samples", tooltip="Sample settings for LoRA Lab Train.")],
        )

    @classmethod
    def execute(cls, prompts, negative, sampler, scheduler, steps, cfg, guidance, seed, width, height,
                every_n_steps, sample_at_start) -> io.NodeOutput:
        lines = tuple(line.strip() for line in prompts.splitlines() if line.strip())
        samplers, schedulers = host.sampler_names()  # checked now, not at the first sample after training
        for input_name, value, options in (("sampler", sampler, samplers), ("scheduler", scheduler, schedulers)):
            if value not in options:
                raise ValueError(f"{input_name}: {value!r} is not one of this ComfyUI's {input_name}s")
        return io.NodeOutput(SampleSettings(lines, negative, sampler, scheduler, steps, cfg, guidance, seed, width,
                                            height, every_n_steps, sample_at_start))
