"""LoRALab Dataset From Images: an IMAGE batch (+ MASK, + captions) as a training dataset, for
single-image workflows that start at LoadImage."""

from comfy_api.latest import io

from ..training.dataset import MASK_MEANINGS, Dataset, DatasetSample, looks_inverted, mask_from_comfy
from . import types
from .dataset_nodes import preview_image


def _captions(text: str, count: int) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) in (0, 1):
        return [lines[0] if lines else ""] * count
    if len(lines) != count:
        raise ValueError(f"captions: {len(lines)} lines for {count} images; give one line per image or one for all")
    return lines


class DatasetFromImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabDatasetFromImages",
            display_name="LoRA Lab Dataset From Images",
            category="LoRA Lab/dataset",
            description="Turns an IMAGE batch, with an optional MASK and captions, into a training dataset.",
            inputs=[
                io.Image.Input("images", tooltip="The training images (one or a batch)."),
                io.Combo.Input("mask_meaning", options=list(MASK_MEANINGS), default=MASK_MEANINGS[0],
                               tooltip="What white means in the MASK input: 'white = subject/train' (segmentation "
                                       "and Remove Background nodes) or 'LoadImage alpha' (LoadImage's mask, where "
                                       "1 = transparent). Masked-out pixels are left out of the loss."),
                io.String.Input("captions", multiline=True, default="",
                                tooltip="One caption for all images, or one line per image. Empty: the trigger word."),
                io.String.Input("trigger", default="",
                                tooltip="Trigger word for the subject; put first in every caption that lacks it."),
                io.Int.Input("repeats", default=1, min=1, max=10000,
                             tooltip="How many times each image is seen per epoch."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional loss mask, same size as the images (one, or one per image)."),
            ],
            outputs=[
                types.Dataset.Output(display_name="dataset", tooltip="The dataset, for the LoRA Lab Train node."),
                io.String.Output(display_name="summary", tooltip="Images, captions and mask coverage."),
                io.Image.Output(display_name="preview", tooltip="The first images with their masks (the ignored "
                                                                "area tinted red) and captions."),
            ],
        )

    @classmethod
    def execute(cls, images, mask_meaning, captions, trigger, repeats, mask=None) -> io.NodeOutput:
        count = images.shape[0]
        texts = _captions(captions, count)
        trigger = trigger.strip()
        if mask is not None:
            if mask.ndim == 2:
                mask = mask.unsqueeze(0)
            if mask.shape[-2:] != images.shape[1:3]:
                raise ValueError(f"mask: size {tuple(mask.shape[-2:])} differs from the images' {tuple(images.shape[1:3])}")
            if mask.shape[0] not in (1, count):
                raise ValueError(f"mask: {mask.shape[0]} masks for {count} images; give one, or one per image")
        samples, lines, notes = [], [], []
        for i in range(count):
            caption = texts[i]
            if trigger and trigger not in caption:
                caption = f"{trigger}, {caption}" if caption else trigger
            weight = None
            if mask is not None:
                weight = mask_from_comfy(mask[min(i, mask.shape[0] - 1)], mask_meaning)
                coverage = float(weight.mean())
                if looks_inverted(weight) and coverage < 1.0:
                    notes.append(f"image {i}: the mask keeps {coverage:.0%} of the frame; is mask_meaning right?")
                if coverage == 0.0:
                    raise ValueError(f"mask: image {i} has an empty loss mask (nothing to learn); "
                                     "check mask_meaning")
            samples.append(DatasetSample(image=images[i, :, :, :3].float().cpu(), caption=caption,
                                         concept=trigger or "subject",
                                         mask=None if weight is None else weight.cpu(), repeats=repeats))
            cover = "no mask" if weight is None else f"mask {float(weight.mean()):.0%}"
            lines.append(f"{i}: {images.shape[2]}x{images.shape[1]}, {cover}, caption: {caption!r}")
        dataset = Dataset(samples=tuple(samples), trigger=trigger, notes=tuple(notes))
        summary = "\n".join([f"{count} image(s) x {repeats} repeats = {dataset.images_per_epoch} per epoch", *lines,
                             *(f"warning: {n}" for n in notes)])
        return io.NodeOutput(dataset, summary, preview_image(dataset))
