"""LoRALab Loss Chart: a finished run's loss history as an IMAGE, to save or share."""

from comfy_api.latest import io

from ..training.loss_chart import as_image_batch, render
from . import types


class LossChart(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabLossChart", display_name="LoRA Lab Loss Chart", category="LoRA Lab/training",
            description="Draws a training run's loss per step (raw and smoothed) as an image.",
            inputs=[
                types.LossHistory.Input("loss_history", tooltip="The loss_history output of LoRA Lab Train."),
                io.Int.Input("width", default=768, min=128, max=4096, tooltip="Image width in pixels."),
                io.Int.Input("height", default=384, min=96, max=4096, tooltip="Image height in pixels."),
                io.Boolean.Input("log_scale", default=False, tooltip="Logarithmic loss axis."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The chart.")],
        )

    @classmethod
    def execute(cls, loss_history, width, height, log_scale) -> io.NodeOutput:
        chart = render([h["loss"] for h in loss_history], width=width, height=height, log_scale=log_scale)
        return io.NodeOutput(as_image_batch(chart))
