"""Mask nodes: Remove Background (IMAGE -> cut-out + MASK) and Dataset Masks (a loss mask for
every sample of a dataset, from alpha, sidecar files or background removal)."""

from dataclasses import replace

import torch
from comfy_api.latest import io

from ..masking import background as bg
from ..masking import ops
from ..masking.alpha import find_sidecar, read_mask_file
from ..training.image_io import load_sample_pixels, open_image
from . import host, types
from .dataset_nodes import preview_image

MASK_SOURCES = ("background removal", "alpha", "sidecar files")
MASKED_PIXELS = ("original", "colour")


def _session(model: str, progress: host.Progress):
    progress.text(f"loading background removal ({model}); its first use compiles for about a minute")
    return bg.open_session(model, host.rembg_model_folders())


def _check_cancel() -> None:
    if host.interrupted():
        raise host.interrupt_exception()


def _colour(text: str) -> tuple[float, float, float]:
    value = text.strip().lstrip("#")
    if len(value) != 6 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"fill_colour: {text!r} is not a colour like #808080")
    return tuple(int(value[i:i + 2], 16) / 255 for i in (0, 2, 4))


class RemoveBackground(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabRemoveBackground", display_name="LoRA Lab Remove Background", category="LoRA Lab/masks",
            description="Separates the subject from the background with rembg, offline (weights in models/rembg).",
            inputs=[
                io.Image.Input("image", tooltip="Image(s) to cut out."),
                io.Combo.Input("model", options=list(bg.MODELS), default="u2netp",
                               tooltip="rembg model; put <model>.onnx into ComfyUI's models/rembg folder. u2netp is "
                                       "small and general, isnet-anime suits illustrations, birefnet is the most precise."),
                io.Combo.Input("background", options=list(bg.CUTOUT_BACKGROUNDS), default="original",
                               tooltip="What the cut-out IMAGE shows behind the subject. For training keep 'original': "
                                       "the mask already keeps the background out of the loss."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The image with the chosen background."),
                io.Mask.Output(display_name="mask", tooltip="The subject mask: 1 = subject (as segmentation nodes); "
                                                            "use mask_meaning 'white = subject/train'."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image, model, background) -> io.NodeOutput:
        progress = host.Progress(image.shape[0], cls.hidden.unique_id)
        session = _session(model, progress)
        cut, masks = [], []
        for i in range(image.shape[0]):
            _check_cancel()
            mask = bg.remove_background(image[i], session)
            masks.append(mask)
            cut.append(bg.cut_out(image[i, ..., :3], mask, background))
            progress.update(i + 1)
        return io.NodeOutput(torch.stack(cut), torch.stack(masks))


class DatasetMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabDatasetMasks", display_name="LoRA Lab Dataset Masks", category="LoRA Lab/masks",
            description="Gives every sample a loss mask (1 = learn) from its alpha, sidecar mask files or background "
                        "removal, with clean-up. Masks only weight the loss; the model still sees the whole image.",
            inputs=[
                types.Dataset.Input("dataset", tooltip="The dataset to mask."),
                io.Combo.Input("source", options=list(MASK_SOURCES), default=MASK_SOURCES[0],
                               tooltip="Where masks come from: background removal (rembg), the image's alpha channel, "
                                       "or <stem>_mask.png / <stem>-masklabel.png files beside the images."),
                io.Combo.Input("model", options=list(bg.MODELS), default="u2netp",
                               tooltip="rembg model for background removal (a file in models/rembg)."),
                io.Boolean.Input("replace_existing", default=False,
                                 tooltip="Replace masks samples already have; off = only samples without one get a mask."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Make the mask hard at this level (0 = keep it soft)."),
                io.Int.Input("grow", default=0, min=-256, max=256,
                             tooltip="Grow (positive) or shrink (negative) the subject by this many pixels."),
                io.Int.Input("feather", default=0, min=0, max=256, tooltip="Soften the edge over this many pixels."),
                io.Boolean.Input("fill_holes", default=False, tooltip="Fill holes inside the subject."),
                io.Boolean.Input("invert", default=False, tooltip="Learn the background instead of the subject."),
                io.Combo.Input("masked_pixels", options=list(MASKED_PIXELS), default="original",
                               tooltip="What training sees under the masked-out area: the original image (default: the "
                                       "context stays) or a flat fill colour."),
                io.String.Input("fill_colour", default="#808080", tooltip="Fill colour when masked_pixels is 'colour'."),
            ],
            outputs=[
                types.Dataset.Output(display_name="dataset", tooltip="The dataset with masks."),
                io.String.Output(display_name="summary", tooltip="Mask coverage per image and warnings."),
                io.Image.Output(display_name="preview", tooltip="The first images with their masks overlaid."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, dataset, source, model, replace_existing, threshold, grow, feather, fill_holes, invert,
                masked_pixels, fill_colour) -> io.NodeOutput:
        post = ops.MaskOps(threshold or None, grow, feather, fill_holes, invert)
        fill = _colour(fill_colour) if masked_pixels == "colour" else None
        progress = host.Progress(len(dataset.samples), cls.hidden.unique_id)
        session = _session(model, progress) if source == "background removal" else None
        samples, lines, warnings = [], [], []
        for index, sample in enumerate(dataset.samples):
            _check_cancel()
            has_mask = sample.mask is not None or sample.mask_path is not None or sample.alpha_mask
            image, weight, _ = load_sample_pixels(sample)
            if replace_existing or not has_mask:
                weight = _mask_from(source, sample, image, session)
            if weight is None:
                lines.append(f"{sample.name}: no mask ({source} found none): trains on the whole image")
                samples.append(sample)
            else:
                weight = ops.apply(weight, post)
                lines.append(f"{sample.name}: mask covers {ops.coverage(weight):.0%}")
                warning = ops.coverage_warning(weight, sample.name)
                if warning:
                    warnings.append(warning)
                samples.append(replace(sample, mask=weight, mask_path=None, alpha_mask=False))
            progress.update(index + 1)
        masked = dataset.with_changes(samples=tuple(samples), masked_fill=fill,
                                      notes=dataset.notes + tuple(warnings))
        summary = "\n".join([f"{len(samples)} image(s), masks from {source}", *lines,
                             *(f"warning: {w}" for w in warnings)])
        return io.NodeOutput(masked, summary, preview_image(masked), ui={"text": [summary]})


def _mask_from(source: str, sample, image: torch.Tensor, session) -> torch.Tensor | None:
    size = (int(image.shape[1]), int(image.shape[0]))
    if source == "background removal":
        return bg.remove_background(image, session)
    if sample.path is None:
        return None  # in-memory images carry no alpha and no sidecar files
    if source == "alpha":
        return open_image(sample.path).alpha_weight
    sidecar = find_sidecar(sample.path)
    return None if sidecar is None else read_mask_file(sidecar, size)[0]
