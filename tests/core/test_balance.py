"""Concept balancing (seed 001's recipe), weights, and merging datasets with target shares."""

import pytest

from comfyui_lora_lab.training.balance import (balance_dataset, balanced_repeats, merge_datasets, parse_weights,
                                               weighted_repeats)
from comfyui_lora_lab.training.dataset import Dataset, DatasetSample


def dataset(*concepts, **values):
    """concepts: (name, images, repeats) each; file-backed samples, nothing is read."""
    samples = [DatasetSample(caption=name, concept=name, path=f"{name}/{i}.png", repeats=repeats)
               for name, images, repeats in concepts for i in range(images)]
    return Dataset(samples=tuple(samples), **values)


def per_epoch(data):
    return {concept: sum(s.repeats for s in samples) for concept, samples in data.concepts().items()}


# --- repeats ------------------------------------------------------------------------------------

def test_the_worked_example():
    # largest folder 40 images x 1 repeat: 40/20 = 2, 40/7 = 5.71 -> 6
    assert balanced_repeats({"big": (40, 1), "mid": (20, 1), "small": (7, 1)}) == {"big": 1, "mid": 2, "small": 6}


def test_halves_round_up():
    # 20/8 = 2.5: banker's rounding would give 2
    assert balanced_repeats({"big": (20, 1), "eight": (8, 1)}) == {"big": 1, "eight": 3}
    assert balanced_repeats({"big": (5, 1), "two": (2, 1)}) == {"big": 1, "two": 3}


def test_the_pace_is_images_times_repeats():
    # 10 images x 5 repeats = 50 beats 40 x 1: the 40 get 50/40 = 1.25 -> 1, the 10 keep 5
    assert balanced_repeats({"few": (10, 5), "many": (40, 1), "six": (6, 2)}) == {"few": 5, "many": 1, "six": 8}


def test_weights_scale_the_samples_per_epoch():
    counts = {"big": (40, 1), "small": (10, 1)}
    assert weighted_repeats(counts, {}) == balanced_repeats(counts) == {"big": 1, "small": 4}
    assert weighted_repeats(counts, {"big": 1, "small": 1}) == {"big": 1, "small": 4}
    assert weighted_repeats(counts, {"small": 0.5}) == {"big": 1, "small": 2}
    assert weighted_repeats(counts, {"big": 2}) == {"big": 2, "small": 4}
    assert weighted_repeats(counts, {"big": 0.01}) == {"big": 1, "small": 4}  # never below 1
    # 0.29 * 50 is 14.499999999999998 in floats: still a half, so 15
    assert weighted_repeats({"big": (50, 1), "one": (1, 1)}, {"one": 0.29}) == {"big": 1, "one": 15}


def test_unknown_concepts_list_the_known_ones():
    with pytest.raises(ValueError, match=r"'charC'.*'charA', 'charB'"):
        weighted_repeats({"charA": (3, 1), "charB": (4, 1)}, {"charC": 1.0})


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf")])
def test_weights_must_be_positive(weight):
    with pytest.raises(ValueError, match="charA"):
        weighted_repeats({"charA": (3, 1)}, {"charA": weight})


# --- the dataset --------------------------------------------------------------------------------

def test_balance_dataset_sets_every_sample_of_a_concept():
    data = dataset(("big", 40, 1), ("mid", 20, 1), ("small", 7, 1), trigger="ohwx", flip=True, notes=("n",))
    balanced, summary = balance_dataset(data)
    assert {s.concept: s.repeats for s in balanced.samples} == {"big": 1, "mid": 2, "small": 6}
    assert per_epoch(balanced) == {"big": 40, "mid": 40, "small": 42}
    assert [s.path for s in balanced.samples] == [s.path for s in data.samples]
    assert (balanced.trigger, balanced.flip, balanced.notes) == ("ohwx", True, ("n",))
    assert "67 -> 122 samples per epoch" in summary
    assert summary.splitlines()[4].split() == ["small", "7", "1", "->", "6", "7", "->", "42"]
    assert "overfit" not in summary


def test_balance_replaces_mixed_repeats():
    data = dataset(("a", 4, 1), ("a", 4, 3), ("b", 2, 1))  # concept a from folders 1_a and 3_a
    balanced, summary = balance_dataset(data)
    # a: 16 per epoch sets the pace -> 16/8 = 2 each; b: 16/2 = 8
    assert per_epoch(balanced) == {"a": 16, "b": 16}
    assert "1-3 -> 2" in summary


def test_heavy_repeats_warn_about_overfitting():
    data = dataset(("big", 40, 1), ("tiny", 3, 1))
    _, summary = balance_dataset(data)  # 40/3 = 13.3 -> 13
    assert ("concept tiny: 3 images repeated 13 times per epoch may overfit; add images or lower its weight"
            in summary.splitlines())
    _, quiet = balance_dataset(data, overfit_ratio=14)
    assert "overfit" not in quiet
    _, weighted = balance_dataset(data, weights={"tiny": 0.5})  # 6.67 -> 7
    assert "overfit" not in weighted


def test_balance_dataset_checks_weights():
    with pytest.raises(ValueError, match="'other'"):
        balance_dataset(dataset(("big", 4, 1)), weights={"other": 1})


# --- weights text -------------------------------------------------------------------------------

def test_parse_weights():
    assert parse_weights("charA=1, charB=0.5") == {"charA": 1.0, "charB": 0.5}
    assert parse_weights("charA = 1\n\n  charB=0.5 \n") == {"charA": 1.0, "charB": 0.5}
    assert parse_weights("charactertag, outfittag=2, other=1,") == {"charactertag, outfittag": 2.0, "other": 1.0}
    assert parse_weights("  ") == {}


@pytest.mark.parametrize("text, token", [
    ("charA=1, charB", "charB"),
    ("charA=one", "charA=one"),
    ("charA=1 charB=2", "charA=1 charB=2"),
    ("=2", "=2"),
    ("charA=0", "charA=0"),
    ("charA=-1", "charA=-1"),
    ("charA=1\ncharA=2", "charA"),
])
def test_parse_weights_names_the_bad_token(text, token):
    with pytest.raises(ValueError) as error:
        parse_weights(text)
    assert repr(token) in str(error.value)


# --- merging ------------------------------------------------------------------------------------

def share_of(merged, concepts):
    counts = per_epoch(merged)
    return sum(counts[c] for c in concepts) / sum(counts.values())


def test_a_composite_share_is_met_as_closely_as_integer_repeats_allow():
    singles = dataset(("charA", 30, 1), ("charB", 15, 2))  # 60 per epoch
    composites = dataset(("duo", 5, 2))  # 10 per epoch
    merged, summary = merge_datasets([(singles, None), (composites, 0.2)])
    # the singles keep their repeats; ideal composite factor 1.5 -> 2: 20/80 = 25%, while x1 gives 14.3%
    assert per_epoch(merged) == {"charA": 30, "charB": 30, "duo": 20}
    best = min(range(1, 10), key=lambda m: abs(10 * m / (60 + 10 * m) - 0.2))
    assert share_of(merged, ["duo"]) == 10 * best / (60 + 10 * best)
    assert "part 2: 10 -> 20 samples per epoch (repeats x2), share 25.0%, target 20.0%" in summary
    assert "  duo: 20 samples per epoch (25.0%)" in summary


def test_parts_without_a_share_keep_their_repeats_even_when_a_shared_part_is_larger():
    # share 0 in the node: "keep its repeats". 9 singles beside 200 composites at 20% stay 9, and the
    # composites, already above 20% at x1, are not scaled down either: the summary says so
    merged, summary = merge_datasets([(dataset(("single", 9, 1)), None), (dataset(("duo", 200, 1)), 0.2)])
    assert per_epoch(merged) == {"single": 9, "duo": 200}
    assert "part 1: 9 -> 9 samples per epoch (repeats x1)" in summary
    assert "above its target at its own repeats" in summary


def test_merge_factors_round_half_up():
    # 100 singles + 10 composites at 20%: ideal factor 2.5 -> 3 (23.1%; x2 would give 16.7%)
    merged, _ = merge_datasets([(dataset(("single", 100, 1)), None), (dataset(("duo", 10, 1)), 0.2)])
    assert per_epoch(merged) == {"single": 100, "duo": 30}


def test_repeats_inside_a_part_stay_relative():
    part = dataset(("a", 4, 3), ("b", 6, 1))  # 12 + 6 = 18
    merged, _ = merge_datasets([(dataset(("big", 90, 1)), 0.5), (part, 0.5)])
    assert per_epoch(merged) == {"big": 90, "a": 60, "b": 30}  # factor 90/18 = 5


def test_every_part_with_a_share():
    merged, _ = merge_datasets([(dataset(("a", 40, 1)), 0.25), (dataset(("b", 10, 1)), 0.25),
                                (dataset(("c", 20, 1)), 0.5)])
    assert per_epoch(merged) == {"a": 40, "b": 40, "c": 80}


def test_a_part_above_its_share_is_the_reference():
    # "big" has the most samples but is below its 90% share; "small" at x1 is already 44% against
    # its 10%, so small keeps its repeats and big is scaled up to it: 0.9 * 800 / 100 = 7.2 -> 7
    merged, _ = merge_datasets([(dataset(("big", 100, 1)), 0.9), (dataset(("small", 80, 1)), 0.1)])
    assert per_epoch(merged) == {"big": 700, "small": 80}
    assert share_of(merged, ["big"]) == pytest.approx(0.897, abs=1e-3)


def test_a_single_part_with_share_one_is_unchanged():
    data = dataset(("a", 3, 2), ("b", 5, 1))
    merged, summary = merge_datasets([(data, 1.0)])
    assert merged == data
    assert "share 100.0%, target 100.0%" in summary


def test_merged_dataset_keeps_the_first_parts_settings_and_all_notes():
    first = dataset(("a", 2, 1), trigger="ohwx", flip=True, notes=("first",), buckets="b1")
    second = dataset(("b", 3, 1), trigger="other", flip=False, notes=("second",), buckets="b2")
    merged, _ = merge_datasets([(first, None), (second, None)])
    assert (merged.trigger, merged.flip, merged.buckets, merged.notes) == ("ohwx", True, "b1", ("first", "second"))
    assert [s.path for s in merged.samples] == [s.path for s in first.samples + second.samples]
    assert merged.images_per_epoch == 5


@pytest.mark.parametrize("shares", [(0.6, 0.5), (-0.2, None), (0, None), (0.5, 0.4), (1.0, None), (1.5, None),
                                    (float("nan"), None)])
def test_invalid_shares_are_refused(shares):
    parts = [(dataset((f"c{i}", 3, 1)), share) for i, share in enumerate(shares)]
    with pytest.raises(ValueError, match="share"):
        merge_datasets(parts)


def test_nothing_to_merge():
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_datasets([])
