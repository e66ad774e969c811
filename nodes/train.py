"""LoRALab Train: trains a LoRA/LyCORIS adapter on the MODEL, CLIP and VAE already loaded."""

import html
import logging

from comfy_api.latest import io

from ..training.optimizers import optimizer_notes
from ..training.settings import NetworkSettings, ObjectiveSettings, OptimizerSettings, SaveSettings, network_notes
from . import host, train_run, types


def run_notes(request, profile) -> list[str]:
    """Settings of this run that cannot take effect."""
    notes = network_notes(request.network, profile.name, profile.has_convolutions) + optimizer_notes(request.optimizer.optimizer,
                                                                   request.optimizer.optimizer_args)
    images, batch = len(request.dataset.samples), request.optimizer.batch_size
    per_epoch = sum(s.repeats for s in request.dataset.samples)
    if batch > per_epoch:
        notes.append(f"batch_size {batch} is larger than the dataset ({per_epoch} image(s) per epoch): "
                     f"a batch holds at most {per_epoch}")
    elif batch > images:
        notes.append(f"batch_size {batch} is larger than the dataset's {images} image(s): a batch holds repeats "
                     f"of the same image")
    return notes


class Train(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabTrain",
            display_name="LoRA Lab Train",
            category="LoRA Lab/training",
            description="Trains a LoRA (or LyCORIS) adapter on the loaded model with the dataset's masks as loss "
                        "weights, saves it to the loras folder and returns the model with it applied.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The base model to train on (Flux, SDXL or SD1.5). It is not "
                                                "modified: training runs on a clone."),
                io.Clip.Input("clip", optional=True, tooltip="Text encoder(s) for the captions (needed when the "
                                                             "dataset has captions). Clip skip from an upstream "
                                                             "CLIPSetLastLayer is used and recorded in the file."),
                io.Vae.Input("vae", tooltip="The VAE that encodes the dataset images to latents (once)."),
                types.Dataset.Input("dataset", tooltip="A LoRA Lab dataset (e.g. from Dataset From Images)."),
                io.Int.Input("steps", default=400, min=1, max=1_000_000,
                             tooltip="Optimizer steps to train (one step = batch size x gradient accumulation images)."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=10.0, step=1e-5,
                               tooltip="Learning rate of the adapter (Prodigy expects 1.0)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seed of adapter initialisation, data order, noise and timesteps: the same "
                                     "seed and inputs give the same run."),
                io.String.Input("output_name", default="my_lora",
                                tooltip="File name of the LoRA in the loras folder (no folders, no '..'). Periodic "
                                        "saves add -stepNNNNNN."),
                types.NetworkConfig.Input("network", optional=True,
                                          tooltip="Adapter settings (LoRA Lab Network). Default: LoRA rank 16, "
                                                  "alpha 16, attention+MLP layers."),
                types.OptimizerConfig.Input("optimizer", optional=True,
                                            tooltip="Optimizer and schedule (LoRA Lab Optimizer). Default: AdamW, "
                                                    "constant, batch 1, max grad norm 1."),
                types.ObjectiveConfig.Input("objective", optional=True,
                                            tooltip="Loss and timestep settings (LoRA Lab Objective). Default: "
                                                    "masked MSE normalised per sample, sigmoid timesteps on Flux."),
                types.SaveConfig.Input("save", optional=True,
                                       tooltip="Save cadence and format (LoRA Lab Save). Default: only the final "
                                               "file, bf16, in loras/loralab."),
                types.SampleConfig.Input("samples", optional=True,
                                         tooltip="Sample images during training (LoRA Lab Samples). Default: none."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the trained LoRA applied (as LoraLoader "
                                                              "would apply the saved file)."),
                io.String.Output(display_name="lora_path", tooltip="Path of the saved LoRA file."),
                types.LossHistory.Output(display_name="loss_history",
                                         tooltip="Per-step loss, learning rate and timestep of the run."),
                io.Image.Output(display_name="images", tooltip="The sample images taken during training, in order "
                                                               "(the loss chart when no samples are configured)."),
                io.Clip.Output(display_name="clip", tooltip="The CLIP with the trained text-encoder LoRA applied "
                                                            "(the input CLIP when the text encoder was not trained)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, vae, dataset, steps, learning_rate, seed, output_name, clip=None, network=None,
                optimizer=None, objective=None, save=None, samples=None) -> io.NodeOutput:
        import torch

        request = train_run.RunRequest(
            model=model, clip=clip, vae=vae, dataset=dataset, steps=steps, learning_rate=learning_rate, seed=seed,
            output_name=output_name, network=network or NetworkSettings(), optimizer=optimizer or OptimizerSettings(),
            objective=objective or ObjectiveSettings(), save=save or SaveSettings(), samples=samples,
            node_id=cls.hidden.unique_id)
        notes = run_notes(request, host.profile_of(model))
        for note in notes:  # on the node while it trains, in the log, and in its text afterwards
            logging.warning("LoRA Lab Train: %s", note)
        if notes:
            host.Progress(steps, cls.hidden.unique_id).text("<br>".join(html.escape(f"Note: {n}") for n in notes))
        with torch.inference_mode(False):  # the executor runs nodes in inference mode; training needs autograd
            result = train_run.run(request)
        if result.text_encoder_trained:
            trained, trained_clip = host.apply_lora(model, result.tensors, clip=clip)
        else:
            trained, trained_clip = host.apply_lora(model, result.tensors), clip
        summary = "\n".join([f"saved {result.lora_path.name}; final loss {result.history[-1]['loss']:.4f}",
                             *(f"Note: {note}" for note in notes)])
        return io.NodeOutput(trained, str(result.lora_path), result.history, train_run.output_images(result),
                             trained_clip, ui={"text": [summary], "lora_path": [str(result.lora_path)],
                                               "images": [e for s in result.sample_files for e in s["images"]]})
