"""Dataset nodes: Load Dataset (kohya folders), Balance Concepts, Merge Datasets, Caption Template."""

from dataclasses import replace

from comfy_api.latest import io

from ..training import balance, captions, composites, folder_dataset
from ..training.buckets import BucketSettings, assign_bucket, bucket_report, cropped_width, format_buckets
from ..training.image_io import load_sample_pixels
from ..training.loss_chart import as_image_batch
from ..training.preview import grid, tile
from . import host, types

ON_BAD_FILE = ("skip", "error")
PREVIEW_SAMPLES = 12


def preview_image(dataset, captions_text=None):
    """A contact sheet of the first samples: mask overlaid, caption below."""
    cards = []
    for i, sample in enumerate(dataset.samples[:PREVIEW_SAMPLES]):
        image, weight, _ = load_sample_pixels(sample)
        cards.append(tile(image, weight, captions_text[i] if captions_text else sample.caption))
    return as_image_batch(grid(cards))


class LoadDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabLoadDataset", display_name="LoRA Lab Load Dataset", category="LoRA Lab/dataset",
            description="Reads a folder of images, captions and masks (kohya N_name folders: N repeats of concept "
                        "'name') into a training dataset with resolution buckets.",
            inputs=[
                # The empty entry (last) stands for "no folder: read custom_path"; it is always
                # listed, since ComfyUI 0.33 accepts only listed values (API prompts send "").
                io.Combo.Input("folder", options=host.input_subfolders() + [""],
                               tooltip="A folder inside ComfyUI's input folder. Subfolders named N_name become "
                                       "concept 'name' with N repeats. The empty entry at the end: read "
                                       "custom_path instead."),
                io.String.Input("custom_path", default="",
                                tooltip="Or a folder path under a root allowed in loralab_config.json "
                                        "(\"dataset_roots\"); empty = use 'folder'."),
                io.String.Input("caption_extension", default=".txt", tooltip="Caption files: <image stem> + this."),
                io.Int.Input("resolution", default=512, min=256, max=4096, step=64,
                             tooltip="Training resolution: buckets hold about resolution² pixels."),
                io.Int.Input("min_side", default=256, min=64, max=4096, step=64, tooltip="Smallest bucket side."),
                io.Int.Input("max_side", default=1024, min=64, max=8192, step=64, tooltip="Largest bucket side."),
                io.Int.Input("bucket_step", default=64, min=16, max=256, step=16, tooltip="Bucket sides are multiples of this."),
                io.Boolean.Input("no_upscale", default=False,
                                 tooltip="Small images get a bucket of their own size instead of being upscaled."),
                io.Boolean.Input("flip", default=False,
                                 tooltip="Random horizontal flips. Off by default: flips teach the mirror image too, "
                                         "which breaks asymmetric details (a scar, a logo, parted hair)."),
                io.Int.Input("max_image_side", default=3072, min=256, max=16384,
                             tooltip="Larger images are downscaled when loaded."),
                io.Combo.Input("on_bad_file", options=list(ON_BAD_FILE), default="skip",
                               tooltip="A corrupt or unreadable file: skip it (listed in the summary) or stop with an error."),
            ],
            outputs=[
                types.Dataset.Output(display_name="dataset", tooltip="The dataset, for Caption Template, Balance "
                                                                     "Concepts or LoRA Lab Train."),
                io.String.Output(display_name="summary", tooltip="Concepts, images, repeats, buckets, skipped files."),
                io.Image.Output(display_name="preview", tooltip="The first images with their masks and captions."),
            ],
        )

    @classmethod
    def execute(cls, folder, custom_path, caption_extension, resolution, min_side, max_side, bucket_step,
                no_upscale, flip, max_image_side, on_bad_file) -> io.NodeOutput:
        root, path = host.resolve_dataset_folder(folder, custom_path)
        settings = BucketSettings(resolution, min_side, max_side, bucket_step, no_upscale)
        dataset = folder_dataset.scan_folder(root, path, caption_extension, on_bad_file, max_image_side)
        dataset = dataset.with_changes(buckets=settings, flip=flip)
        report = bucket_report([s.size for s in dataset.samples], settings)
        summary = f"{folder_dataset.summarize(dataset)}\nbuckets: {format_buckets(report)}"
        return io.NodeOutput(dataset, summary, preview_image(dataset), ui={"text": [summary]})


class BalanceConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabBalanceConcepts", display_name="LoRA Lab Balance Concepts", category="LoRA Lab/dataset",
            description="Sets each concept's repeats so every concept gets the same share of an epoch (seed 001: "
                        "repeats = round(max(images x repeats) / images)), or shares set by weights.",
            inputs=[
                types.Dataset.Input("dataset", tooltip="A dataset with several concepts."),
                io.String.Input("weights", multiline=True, default="",
                                tooltip="Optional 'concept=weight' pairs (comma or one per line): a concept's share of "
                                        "each epoch relative to the others. Empty = equal shares."),
            ],
            outputs=[
                types.Dataset.Output(display_name="dataset", tooltip="The dataset with balanced repeats."),
                io.String.Output(display_name="summary", tooltip="Repeats before and after, per concept."),
            ],
        )

    @classmethod
    def execute(cls, dataset, weights) -> io.NodeOutput:
        try:
            parsed = balance.parse_weights(weights) if weights.strip() else None
        except ValueError as error:
            raise ValueError(f"weights: {error}") from None
        balanced, summary = balance.balance_dataset(dataset, parsed)
        return io.NodeOutput(balanced, summary, ui={"text": [summary]})


class MergeDatasets(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        share = "Target share of samples per epoch for this dataset (0 = keep its repeats as they are)."
        inputs = []
        for i in range(1, 5):
            inputs += [types.Dataset.Input(f"dataset_{i}", optional=i > 2, tooltip=f"Dataset {i} to merge."),
                       io.Float.Input(f"share_{i}", default=0.0, min=0.0, max=1.0, step=0.01, optional=i > 2,
                                      tooltip=share)]
        return io.Schema(
            node_id="LoRALabMergeDatasets", display_name="LoRA Lab Merge Datasets", category="LoRA Lab/dataset",
            description="Combines datasets (e.g. single images + composites, or regularisation images). Repeats "
                        "inside each dataset keep their proportions; a share scales a whole dataset's repeats so it "
                        "makes up that fraction of each epoch.",
            inputs=inputs,
            outputs=[
                types.Dataset.Output(display_name="dataset", tooltip="The merged dataset."),
                io.String.Output(display_name="summary", tooltip="Samples per epoch per dataset and concept."),
            ],
        )

    @classmethod
    def execute(cls, dataset_1, share_1, dataset_2, share_2, dataset_3=None, share_3=0.0, dataset_4=None,
                share_4=0.0) -> io.NodeOutput:
        parts = [(d, s or None) for d, s in ((dataset_1, share_1), (dataset_2, share_2), (dataset_3, share_3),
                                             (dataset_4, share_4)) if d is not None]
        merged, summary = balance.merge_datasets(parts)
        return io.NodeOutput(merged, summary, ui={"text": [summary]})


class CaptionTemplate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabCaptionTemplate", display_name="LoRA Lab Caption Template", category="LoRA Lab/dataset",
            description="Attaches a caption policy to a dataset: template, trigger word, tag clean-up and per-step "
                        "shuffling/dropout (applied while training, with a fresh draw each step).",
            inputs=[
                types.Dataset.Input("dataset", tooltip="The dataset whose captions to shape."),
                io.String.Input("template", default="{trigger}, {caption}",
                                tooltip="Caption layout: {trigger}, {concept}, {caption}, {tags}."),
                io.String.Input("trigger", default="", tooltip="Trigger word ({trigger}; also used by sample prompts)."),
                io.Combo.Input("mode", options=["tags", "natural"], default="tags",
                               tooltip="tags: comma-separated tags (tag operations apply); natural: sentences kept whole."),
                io.String.Input("prefix", default="", tooltip="Text put before every caption."),
                io.String.Input("suffix", default="", tooltip="Text put after every caption."),
                io.String.Input("remove_tags", default="", tooltip="Comma-separated tags to remove."),
                io.String.Input("implications", multiline=True, default="",
                                tooltip="Lines 'tag -> implied tag': when both appear, the implied (more general) "
                                        "tag is removed."),
                io.Float.Input("prune_defining", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Remove tags found in at least this fraction of a concept's images, so the "
                                       "trigger carries them (seed 004; 0 = off)."),
                io.Boolean.Input("shuffle", default=False, tooltip="Shuffle tags every step."),
                io.Int.Input("keep_tokens", default=1, min=0, max=64,
                             tooltip="Tags at the start that stay in place when shuffling (kohya keep_tokens)."),
                io.String.Input("keep_separator", default="|||",
                                tooltip="If a caption contains this, everything before it stays in place."),
                io.Float.Input("tag_dropout", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Chance to drop each (non-kept) tag per step."),
                io.Float.Input("caption_dropout", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Chance to train a step with an empty caption."),
                # appended, and optional: API prompts written before it existed still validate
                io.Boolean.Input("dedupe", default=True, optional=True,
                                 tooltip="Remove repeated tags (the first spelling stays). On 1to2 composites each "
                                         "side is de-duplicated on its own, so a tag both characters share stays "
                                         "on both sides. Off: captions keep every tag as written (kohya)."),
            ],
            outputs=[
                types.Dataset.Output(display_name="dataset", tooltip="The dataset with the caption policy attached."),
                io.String.Output(display_name="preview", tooltip="Final captions of the first images and tag "
                                                                 "frequencies per concept."),
            ],
        )

    @classmethod
    def execute(cls, dataset, template, trigger, mode, prefix, suffix, remove_tags, implications, prune_defining,
                shuffle, keep_tokens, keep_separator, tag_dropout, caption_dropout, dedupe=True) -> io.NodeOutput:
        try:
            pairs = captions.parse_implications(implications)
        except ValueError as error:
            raise ValueError(f"implications: {error}") from None
        removed = tuple(t.strip() for t in remove_tags.split(",") if t.strip())
        policy = captions.CaptionPolicy(
            template=template, prefix=prefix, suffix=suffix, mode=mode, remove_tags=removed, implications=pairs,
            prune_defining=prune_defining, shuffle=shuffle,
            keep_tokens=keep_tokens if mode == "tags" else 0,  # the widget's default of 1 means nothing in natural mode
            keep_separator=keep_separator,
            tag_dropout=tag_dropout, caption_dropout=caption_dropout, dedupe=dedupe)
        shaped = dataset.with_changes(caption_policy=policy, trigger=trigger.strip() or dataset.trigger)
        text = captions.preview(policy, shaped)
        return io.NodeOutput(shaped, text, ui={"text": [text]})


class CompositePairs(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabCompositePairs", display_name="LoRA Lab Composite Pairs (1to2)", category="LoRA Lab/dataset",
            description="Joins images of two different concepts side by side with a 'Left/Right/COMPOSITE' caption, so "
                        "a model trained on single-subject images learns to draw two subjects in one image (seed 000).",
            inputs=[
                types.Dataset.Input("dataset", tooltip="A dataset with at least two concepts (their names are the "
                                                       "trigger words used in the captions)."),
                io.Int.Input("pairs_per_combination", default=4, min=1, max=10000,
                             tooltip="Composites per ordered concept pair (A left of B, and B left of A)."),
                io.Int.Input("all_combinations_up_to", default=0, min=0, max=100000,
                             tooltip="Instead: every image pairing of two concepts, up to this many per ordered pair "
                                     "(0 = use pairs_per_combination)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seed of the random pairing."),
                io.Int.Input("height", default=768, min=64, max=4096, step=8,
                             tooltip="Both halves are scaled to this height (the composite is about twice as wide)."),
                io.Boolean.Input("crop_to_subject", default=False,
                                 tooltip="Crop each half to its mask's subject (plus margin) before joining."),
                io.Int.Input("margin", default=32, min=0, max=1024, tooltip="Margin around the subject when cropping."),
                io.Int.Input("gap", default=0, min=0, max=1024, tooltip="Pixels between the halves (not learned)."),
                io.String.Input("caption_template", default="{left}/{right}/COMPOSITE, {tags_left}, {tags_right}",
                                tooltip="Caption of a composite: {left} and {right} are the concept names, "
                                        "{tags_left}/{tags_right} each half's tags after the caption template."),
                io.Int.Input("bucket_resolution", default=0, min=0, max=4096, step=64,
                             tooltip="Training resolution of the composites' buckets (0 = the dataset's); e.g. 768 "
                                     "for a stage 2 at a higher resolution than stage 1 (seed 000)."),
            ],
            outputs=[
                types.Dataset.Output(display_name="dataset", tooltip="The composites (never flipped: a flip would "
                                                                     "swap left and right against the caption)."),
                io.String.Output(display_name="summary", tooltip="Composites per concept pair."),
                io.Image.Output(display_name="preview", tooltip="The first composites with masks and captions."),
            ],
        )

    @classmethod
    def execute(cls, dataset, pairs_per_combination, all_combinations_up_to, seed, height, crop_to_subject, margin,
                gap, caption_template, bucket_resolution=0) -> io.NodeOutput:
        settings = composites.CompositeSettings(pairs_per_combination, all_combinations_up_to, seed, height,
                                                crop_to_subject, margin, gap, caption_template)
        made, summary = composites.make_composites(dataset, settings)
        if bucket_resolution:
            buckets = made.buckets or BucketSettings()
            made = made.with_changes(buckets=replace(buckets, resolution=bucket_resolution,
                                                     min_side=min(buckets.min_side, bucket_resolution),
                                                     max_side=max(buckets.max_side, 2 * bucket_resolution)))
        _check_composites_fit(made)
        preview = as_image_batch(composites.composite_preview(made))
        return io.NodeOutput(made, summary, preview, ui={"text": [summary]})


MAX_COMPOSITE_CROP = 0.2  # more cuts into the left or right subject (small resolutions have coarse buckets)


def _check_composites_fit(dataset) -> None:
    """A composite wider than any bucket would be centre-cropped at the sides in training,
    cutting into the outer subjects against the caption: refuse it with what to change."""
    if dataset.buckets is None:
        return
    for sample in dataset.samples:
        size = sample.pixel_size
        bucket = assign_bucket(size, dataset.buckets)
        lost = cropped_width(size, bucket)
        if lost > MAX_COMPOSITE_CROP:
            raise ValueError(f"composites of {size[0]}x{size[1]} do not fit the buckets of resolution "
                             f"{dataset.buckets.resolution} (max side {dataset.buckets.max_side}): training would crop "
                             f"{lost:.0%} of their width (bucket {bucket[0]}x{bucket[1]}). Raise the Load Dataset max_side or "
                             f"bucket_resolution, lower the gap, or crop_to_subject")
