"""Concept balancing and dataset merging, by repeats.

Balancing follows seed 001's multi-concept recipe: the concept with the most samples per epoch
(images × repeats) sets the pace, and every other concept gets repeats = that count / its images,
rounded, so each concept is seen about equally often and the big folder does not drown the small
ones. Merging scales whole datasets so each takes a chosen share of the samples per epoch.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .dataset import Dataset

_SHARE_TOLERANCE = 1e-6  # shares typed as decimals (0.1 + 0.2 + 0.7) may miss 1 by float noise


def _round_half_up(x: float) -> int:
    # Python's round() sends halves to even (2.5 -> 2); the recipe means school rounding (2.5 -> 3).
    # Rounding to 9 places first drops float noise (0.29 * 50 gives 14.499999999999998).
    return math.floor(round(x, 9) + 0.5)


# --- concept repeats ----------------------------------------------------------------------------

def balanced_repeats(counts: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Repeats per concept from counts {concept: (images, current repeats)}:
    r_c = round(max_j(n_j · r_j) / n_c), rounded half up, at least 1. The largest concept keeps its
    repeats; 40 images × 1 next to 7 images gives the 7 images 6 repeats (40/7 = 5.71)."""
    return weighted_repeats(counts, {})


def weighted_repeats(counts: dict[str, tuple[int, int]], weights: dict[str, float]) -> dict[str, int]:
    """Like balanced_repeats, but concept c aims at weights[c] × max_j(n_j · r_j) samples per epoch
    (concepts not named weigh 1, so weight 1 everywhere is plain balancing)."""
    for concept, (images, repeats) in counts.items():
        if images < 1 or repeats < 1:
            raise ValueError(f"concept {concept!r} needs at least 1 image and 1 repeat, not {images} and {repeats}")
    largest = max((images * repeats for images, repeats in counts.values()), default=0)
    return _repeats({concept: images for concept, (images, _) in counts.items()}, largest, weights)


def _repeats(images: dict[str, int], largest: int, weights: dict[str, float]) -> dict[str, int]:
    unknown = sorted(set(weights) - set(images))
    if unknown:
        raise ValueError(f"no concept named {', '.join(map(repr, unknown))}; the concepts are "
                         f"{', '.join(map(repr, sorted(images)))}")
    for concept, weight in weights.items():
        _check_weight(weight, f"weight of {concept!r}")
    return {concept: max(1, _round_half_up(weights.get(concept, 1.0) * largest / n))
            for concept, n in images.items()}


def _check_weight(weight: float, what: str):
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{what} must be a number above 0, not {weight}")


def parse_weights(text: str) -> dict[str, float]:
    """"charA=1, charB=0.5", or one "name=weight" per line. A piece without "=" before a comma
    belongs to the next name, since concept names may hold commas ("1_charactertag, outfittag")."""
    weights: dict[str, float] = {}
    for line in text.splitlines():
        name = ""
        for piece in line.split(","):
            if "=" not in piece:
                name += piece + ","
                continue
            key, _, value = piece.partition("=")
            token = (name + piece).strip()
            name, key = "", (name + key).strip()
            try:
                weight = float(value)
            except ValueError:
                raise ValueError(f"weight {token!r} is not name=number") from None
            if not key:
                raise ValueError(f"weight {token!r} has no concept name")
            if key in weights:
                raise ValueError(f"concept {key!r} is weighted twice")
            _check_weight(weight, f"weight {token!r}")
            weights[key] = weight
        if name.strip(" ,"):
            raise ValueError(f"weight {name.strip(' ,')!r} is not name=number")
    return weights


def balance_dataset(dataset: Dataset, weights: dict[str, float] | None = None,
                    overfit_ratio: float = 10.0) -> tuple[Dataset, str]:
    """Every sample of a concept gets the concept's balanced (or weighted) repeats. Returns the
    dataset and a summary: per concept images, repeats and samples per epoch before and after, and a
    warning for each concept repeated overfit_ratio times or more per epoch."""
    if not overfit_ratio > 0:
        raise ValueError(f"overfit_ratio must be above 0, not {overfit_ratio}")
    concepts = dataset.concepts()
    before = {concept: sum(s.repeats for s in samples) for concept, samples in concepts.items()}
    repeats = _repeats({c: len(samples) for c, samples in concepts.items()}, max(before.values()), weights or {})
    balanced = dataset.with_samples(replace(s, repeats=repeats[s.concept]) for s in dataset.samples)

    rows = []
    for concept, samples in concepts.items():
        old = sorted({s.repeats for s in samples})
        old_repeats = str(old[0]) if len(old) == 1 else f"{old[0]}-{old[-1]}"  # mixed N_ folders
        n, r = len(samples), repeats[concept]
        rows.append((concept, str(n), f"{old_repeats} -> {r}", f"{before[concept]} -> {n * r}"))
    lines = [f"Balance Concepts: {dataset.images_per_epoch} -> {balanced.images_per_epoch} samples per epoch",
             *_table(("concept", "images", "repeats", "per epoch"), rows)]
    lines += [f"concept {concept}: {len(samples)} images repeated {repeats[concept]} times per epoch may overfit; "
              "add images or lower its weight"
              for concept, samples in concepts.items() if repeats[concept] >= overfit_ratio]
    return balanced, "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in (header, *rows)]


# --- merging ------------------------------------------------------------------------------------

def merge_datasets(parts: list[tuple[Dataset, float | None]]) -> tuple[Dataset, str]:
    """Combine datasets, each with an optional target share of the merged samples per epoch.

    Precedence: repeats inside each part (folder N_ prefixes, then Balance Concepts) are kept
    relative to each other; Merge Datasets then multiplies every repeat of a part by one factor so
    the part's share of the merged samples per epoch matches its target share as closely as integer
    repeats allow. Parts without a share (None) together take the rest, 1 - sum of shares, and
    keep their repeats, always: the shared parts are scaled around them. Shares must be above 0 and sum to
    at most 1, and to exactly 1 when every part has one (below 1 when some part has none).
    Factor rounding: each part's ideal multiplier is computed relative to the share-less parts when
    there are any, else to the part whose samples per epoch are largest for its share (images ×
    repeats / share; with equal shares, the largest part), which keeps factor 1; the others are rounded half up,
    at least 1. So a part already above its share at factor 1 is the reference and the others are
    scaled up to it; nothing is ever scaled down.

    The merged dataset keeps the first part's trigger, buckets, flip and caption policy, and
    concatenates the samples and notes. The summary gives each part's and concept's samples per
    epoch and each part's achieved share against its target.
    """
    if not parts:
        raise ValueError("nothing to merge: give at least one dataset")
    shares = [share for _, share in parts]
    _check_shares(shares)
    factors = _merge_factors([dataset.images_per_epoch for dataset, _ in parts], shares)
    merged = parts[0][0].with_changes(
        samples=tuple(replace(s, repeats=s.repeats * f) for (dataset, _), f in zip(parts, factors)
                      for s in dataset.samples),
        notes=tuple(note for dataset, _ in parts for note in dataset.notes))
    return merged, _merge_summary(parts, factors, merged.images_per_epoch)


def _check_shares(shares: list[float | None]):
    given = [s for s in shares if s is not None]
    for share in given:
        if not (math.isfinite(share) and 0 < share <= 1):
            raise ValueError(f"a dataset's share must be above 0 and at most 1, not {share}")
    total = sum(given)
    if len(given) == len(shares) and abs(total - 1) > _SHARE_TOLERANCE:
        raise ValueError(f"every dataset has a share, so the shares must sum to 1, not {total:g}")
    if len(given) < len(shares) and total > 1 - _SHARE_TOLERANCE:
        raise ValueError(f"the shares sum to {total:g}, leaving nothing for the datasets without one; "
                         "they must sum to less than 1")


def _merge_factors(counts: list[int], shares: list[float | None]) -> list[int]:
    # groups: each part with a share, and the share-less parts together (they keep one common factor)
    groups: dict[int | None, tuple[int, float]] = {i: (n, s) for i, (n, s) in enumerate(zip(counts, shares))
                                                   if s is not None}
    unshared = sum(n for n, s in zip(counts, shares) if s is None)
    if unshared:
        groups[None] = (unshared, 1 - sum(s for s in shares if s is not None))
    # Parts without a share keep their repeats ("0 = keep its repeats as they are"): they are the
    # reference whenever there are any; else the part furthest above its share is.
    reference = None if unshared else max(groups, key=lambda g: groups[g][0] / groups[g][1])
    total = groups[reference][0] / groups[reference][1]  # merged samples per epoch the shares aim at
    factor = {g: 1 if g == reference else max(1, _round_half_up(share * total / n))
              for g, (n, share) in groups.items()}
    return [factor[i if s is not None else None] for i, s in enumerate(shares)]


def _merge_summary(parts: list[tuple[Dataset, float | None]], factors: list[int], total: int) -> str:
    lines = [f"Merge Datasets: {total} samples per epoch"]
    for number, ((dataset, share), factor) in enumerate(zip(parts, factors), start=1):
        after = dataset.images_per_epoch * factor
        target = "no target" if share is None else f"target {share:.1%}"
        lines.append(f"part {number}: {dataset.images_per_epoch} -> {after} samples per epoch (repeats x{factor}), "
                     f"share {after / total:.1%}, {target}")
        if share is not None and factor == 1 and after / total > share + 0.05:
            lines.append(f"  above its target at its own repeats (never scaled down): lower its repeats "
                         f"or raise the other parts' to reach {share:.0%}")
        for concept, samples in dataset.concepts().items():
            per_epoch = sum(s.repeats for s in samples) * factor
            lines.append(f"  {concept}: {per_epoch} samples per epoch ({per_epoch / total:.1%})")
    return "\n".join(lines)
