"""1to2 composites (seed 000): single-subject images of two different concepts joined side by side
and captioned "Left/Right/COMPOSITE, left tags, right tags", so that a model trained on one subject
per image learns to draw two in one.

Every ordered concept pair gets its own composites, so each concept appears on both sides equally
often. Each half keeps its loss weight and the gap between the halves has weight 0. Composites are
never flipped: a flip would swap left and right against the caption.
"""

from __future__ import annotations

import itertools
import random
import string
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .captions import PART_MARK, prepare, split_tags, tag_key
from .dataset import Dataset, DatasetSample
from .image_io import UnreadableFile, load_sample_pixels
from .preview import grid, tile

PLACEHOLDERS = ("left", "right", "tags_left", "tags_right")


@dataclass(frozen=True)
class CompositeSettings:
    pairs_per_combination: int = 4  # composites per ordered concept pair, image pairs drawn at random
    all_combinations_up_to: int = 0  # > 0: every image pair instead, at most this many per ordered pair
    seed: int = 0
    height: int = 768  # both halves scaled to this height, keeping their aspect
    crop_to_subject: bool = False  # crop each half to its mask's bounding box (weight > 0.5) plus margin
    margin: int = 32  # px around the subject, measured at the common height
    gap: int = 0  # px between the halves, in the mean colour of the edges facing it
    caption_template: str = "{left}/{right}/COMPOSITE, {tags_left}, {tags_right}"

    def __post_init__(self):
        for name, least in (("pairs_per_combination", 1), ("all_combinations_up_to", 0), ("seed", 0),
                            ("height", 1), ("margin", 0), ("gap", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"composite {name} must be a whole number of at least {least}, not {value!r}")
        if self.crop_to_subject and 2 * self.margin >= self.height:
            raise ValueError(f"composite margin ({self.margin}) must be less than half the height ({self.height})")
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(self.caption_template) if name is not None]
        except ValueError as e:  # an unmatched brace
            raise ValueError(f"caption_template {self.caption_template!r}: {e}; write a literal brace as "
                             f"{{{{ or }}}}") from None
        unknown = [f"{{{name}}}" for name in names if name not in PLACEHOLDERS]
        if unknown:
            raise ValueError(f"caption_template: unknown placeholder(s) {', '.join(unknown)}; "
                             f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")


def _image_pairs(n_left: int, n_right: int, settings: CompositeSettings, rng: random.Random):
    """(left index, right index) pairs for one ordered concept pair, from the n_left × n_right
    possible image pairs."""
    combos = n_left * n_right
    if settings.all_combinations_up_to:
        # past the cap a seeded random subset, so that the cap does not keep only the first left image
        chosen = sorted(rng.sample(range(combos), min(combos, settings.all_combinations_up_to)))
    else:
        chosen = []
        while len(chosen) < settings.pairs_per_combination:  # an image pair repeats only once all are used
            chosen += rng.sample(range(combos), min(combos, settings.pairs_per_combination - len(chosen)))
    return [divmod(i, n_right) for i in chosen]


def _subject_box(weight: torch.Tensor, settings: CompositeSettings) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the pixels with weight > 0.5 plus the margin, clamped to the
    image; None when there are none."""
    rows = (weight > 0.5).any(dim=1).nonzero()
    cols = (weight > 0.5).any(dim=0).nonzero()
    if not len(rows):
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # The crop (box height + 2m source px) is scaled to `height`: m source px become `margin` px there.
    m = settings.margin * (bottom - top) / (settings.height - 2 * settings.margin)
    height, width = weight.shape
    return (max(0, round(top - m)), min(height, round(bottom + m)),
            max(0, round(left - m)), min(width, round(right + m)))


def _half(sample: DatasetSample, settings: CompositeSettings) -> tuple[torch.Tensor, list[str]]:
    """A sample as (4, height, W) planes, RGB then loss weight, cropped and scaled; and warnings."""
    image, weight, warnings = load_sample_pixels(sample)
    notes = list(warnings)
    weight = torch.ones(image.shape[:2]) if weight is None else weight.float()
    planes = torch.cat([image.float().permute(2, 0, 1), weight[None]])
    if settings.crop_to_subject:
        box = _subject_box(weight, settings)
        if box is None:
            notes.append(f"{sample.name}: no subject in its mask to crop to; the whole image is used")
        else:
            top, bottom, left, right = box
            planes = planes[:, top:bottom, left:right]
    height, width = planes.shape[1:]
    size = (settings.height, max(1, round(width * settings.height / height)))
    if tuple(planes.shape[1:]) != size:
        # one resize for image and weight together keeps the weight aligned with its pixels
        planes = F.interpolate(planes[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return planes.clamp(0, 1), notes


def _join(left: torch.Tensor, right: torch.Tensor, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves' planes side by side as (image (H,W,3), weight (H,W))."""
    parts = [left, right]
    if gap:
        # The colour of the edges facing the gap makes the softest seam; weight 0: nothing to learn there.
        fill = (left[:3, :, -1].mean(dim=1) + right[:3, :, 0].mean(dim=1)) / 2
        filler = torch.cat([fill[:, None, None].expand(3, left.shape[1], gap), torch.zeros(1, left.shape[1], gap)])
        parts.insert(1, filler)
    joined = torch.cat(parts, dim=2)
    return joined[:3].permute(1, 2, 0).contiguous(), joined[3].contiguous()


def _tags(caption: str, concept: str, trigger: str) -> str:
    """The caption's tags without the concept name and trigger at its start (in any order, compared
    as Caption Template compares tags: case, underscores and spacing ignored), since the composite
    caption names each half already; kohya folders and templates like "{trigger}, {concept}, {tags}"
    put them there. A name later in the caption stays: it is part of the description there."""
    tags = split_tags(caption)
    names = [[tag_key(t) for t in split_tags(name)] for name in (concept, trigger) if split_tags(name)]
    stripped = True
    while stripped:
        stripped = False
        for name in names:
            if tags and [tag_key(t) for t in tags[:len(name)]] == name:
                tags, stripped = tags[len(name):], True
    return ", ".join(tags)


def _caption_parts(template: str, left: str, right: str, tags_left: str, tags_right: str) -> tuple[str, ...]:
    """The composite's caption in parts: each side's tags a part of its own, the template's other text
    (the "Left/Right/COMPOSITE" header) the parts between, so that a Caption Template after Composite
    Pairs de-duplicates within a side and never across: both sides keep a tag they share."""
    def fenced(tags: str) -> str:
        return f"{PART_MARK}, {tags}, {PART_MARK}"

    text = template.format_map({"left": left, "right": right, "tags_left": fenced(tags_left),
                                "tags_right": fenced(tags_right)})
    parts, current = [], []
    for tag in split_tags(text) + [PART_MARK]:
        if tag != PART_MARK:
            current.append(tag)
        elif current:
            parts.append(", ".join(current))
            current = []
    return tuple(parts)


def _size_range(samples) -> str:
    sizes = sorted({s.pixel_size for s in samples}, key=lambda size: (size[0] * size[1], size))
    shown = [f"{w}x{h}" for w, h in (sizes[0], sizes[-1])]
    return shown[0] if len(sizes) == 1 else f"{shown[0]} to {shown[1]}"


def make_composites(dataset: Dataset, settings: CompositeSettings = CompositeSettings()) -> tuple[Dataset, str]:
    """The composites of every ordered pair of the dataset's concepts as a new in-memory Dataset
    (trigger, buckets and masked_fill kept; no flips; captions final, so no caption policy), and a
    summary: composites per concept pair, total and sizes."""
    # concepts() by index, since a sample's caption after the policy is found by its index
    concepts: dict[str, list[int]] = {}
    for i, sample in enumerate(dataset.samples):
        concepts.setdefault(sample.concept, []).append(i)
    if len(concepts) < 2:
        raise ValueError(f"1to2 composites: the dataset needs at least two concepts, found {len(concepts)}: "
                         f"{', '.join(map(repr, concepts))}")
    policy = dataset.caption_policy
    captions = prepare(policy, dataset).captions if policy is not None else [s.caption for s in dataset.samples]
    tags = [_tags(caption, s.concept, dataset.trigger) for caption, s in zip(captions, dataset.samples)]
    notes = []
    if policy is not None and policy.is_random:
        notes.append("the caption policy's per-step shuffle and dropout do not carry into the composites' "
                     "captions: add a Caption Template after Composite Pairs for them")

    halves: dict[int, torch.Tensor | UnreadableFile] = {}

    def half(i: int):  # each image loaded and scaled once, however many composites it is in
        if i not in halves:
            try:
                halves[i], warnings = _half(dataset.samples[i], settings)
                notes.extend(warnings)
            except UnreadableFile as e:
                halves[i] = e
        return halves[i]

    rng = random.Random(settings.seed)
    samples, counts = [], {}
    for a, b in itertools.permutations(concepts, 2):
        pair = f"{a}/{b}"
        counts[pair] = 0
        for li, ri in _image_pairs(len(concepts[a]), len(concepts[b]), settings, rng):
            left, right = concepts[a][li], concepts[b][ri]
            unreadable = [h for h in (half(left), half(right)) if isinstance(h, UnreadableFile)]
            if unreadable:
                notes.append(f"skipped a {pair} composite: {unreadable[0]}")
                continue
            image, mask = _join(half(left), half(right), settings.gap)
            parts = _caption_parts(settings.caption_template, a, b, tags[left], tags[right])
            samples.append(DatasetSample(caption=", ".join(parts), concept=pair, image=image, mask=mask,
                                         repeats=1, flip_allowed=False, caption_parts=parts))
            counts[pair] += 1
    if not samples:
        raise ValueError("\n".join(["no composite could be made", *notes]))

    result = dataset.with_changes(samples=tuple(samples), notes=tuple(notes), flip=False, caption_policy=None)
    lines = [f"{len(samples)} composite(s) of {len(concepts)} concepts, sizes {_size_range(samples)}:",
             *(f"  {pair}: {n}" for pair, n in counts.items())]
    lines += [f"notes ({len(notes)}):", *(f"  {note}" for note in notes)] if notes else []
    return result, "\n".join(lines)


def composite_preview(dataset: Dataset, first: int = 8):
    """A contact sheet of the first composites: masked-out areas tinted, captions underneath."""
    tiles = []
    for sample in dataset.samples[:first]:
        image, weight, _ = load_sample_pixels(sample)
        tiles.append(tile(image, weight, sample.caption, size=384))
    return grid(tiles, columns=2)
