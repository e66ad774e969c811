"""The caption policy: static clean-up and template once per dataset, kohya-style randomness per
draw (shuffle with kept tokens, tag dropout, caption dropout)."""

import itertools
import math
import random
from collections import Counter

import pytest
import torch

from comfyui_lora_lab.training.captions import CaptionPolicy, parse_implications, prepare, preview
from comfyui_lora_lab.training.dataset import Dataset, DatasetSample


def dataset(*captions, concept="subject", trigger="", **changes):
    """captions: strings (all of `concept`) or (caption, concept) pairs."""
    samples = [DatasetSample(caption=c, concept=concept, image=torch.zeros(8, 8, 3)) if isinstance(c, str)
               else DatasetSample(caption=c[0], concept=c[1], image=torch.zeros(8, 8, 3)) for c in captions]
    return Dataset(samples=tuple(samples), trigger=trigger, **changes)


def static(policy, *captions, **kw):
    return list(prepare(policy, dataset(*captions, **kw)).captions)


# ---- the static part -------------------------------------------------------------------------

def test_default_policy_tidies_tags_and_keeps_them():
    assert static(CaptionPolicy(), " red hair ,,  blue   eyes, ") == ["red hair, blue eyes"]


def test_template_placeholders():
    policy = CaptionPolicy(template="{trigger}, {concept} style, {tags}")
    assert static(policy, "red hair, smile", concept="ann", trigger="ohwx") == ["ohwx, ann style, red hair, smile"]
    # {caption} is the processed tag list in tag mode, the same as {tags}
    policy = CaptionPolicy(template="photo of {trigger} | {caption}", remove_tags=("smile",))
    assert static(policy, "red hair, smile", trigger="ohwx") == ["photo of ohwx | red hair"]
    # an empty trigger leaves no empty tag behind
    assert static(CaptionPolicy(template="{trigger}, {tags}"), "a, b") == ["a, b"]


@pytest.mark.parametrize("template", ["{trigger}, {name}", "{0}", "{}", "{caption.upper}"])
def test_unknown_placeholders_are_named(template):
    with pytest.raises(ValueError, match="unknown placeholder"):
        CaptionPolicy(template=template)


def test_unmatched_brace_is_reported_with_the_template():
    with pytest.raises(ValueError, match="template"):
        CaptionPolicy(template="{trigger, {tags}")
    assert static(CaptionPolicy(template="{{x}}, {tags}"), "a") == ["{x}, a"]


def test_prefix_and_suffix():
    policy = CaptionPolicy(template="{trigger}, {tags}", prefix="masterpiece", suffix="  ")
    assert static(policy, "smile", trigger="ohwx") == ["masterpiece, ohwx, smile"]
    policy = CaptionPolicy(mode="natural", template="{trigger} {caption}", prefix="A photo:", suffix="Sharp.")
    assert static(policy, "a cat, sitting", trigger="ohwx") == ["A photo: ohwx a cat, sitting Sharp."]


def test_remove_tags_match_across_case_spaces_and_underscores():
    policy = CaptionPolicy(remove_tags=("Simple_Background", "  solo  "))
    captions = static(policy, "simple background, SOLO, red_hair", "simple   BACKGROUND, solo focus")
    assert captions == ["red_hair", "solo focus"]  # spelling of the kept tags is untouched


def test_dedupe_keeps_the_first_spelling_and_can_be_off():
    assert static(CaptionPolicy(), "red_hair, smile, Red Hair, smile") == ["red_hair, smile"]
    assert static(CaptionPolicy(dedupe=False), "red_hair, smile, Red Hair") == ["red_hair, smile, Red Hair"]
    # the final caption is deduplicated too: a trigger already in the caption appears once
    policy = CaptionPolicy(template="{trigger}, {tags}")
    assert static(policy, "ohwx, smile", trigger="ohwx") == ["ohwx, smile"]


def test_implications_remove_the_implied_tag_only_when_both_are_present():
    policy = CaptionPolicy(implications=(("german shepherd", "dog"), ("spread_legs", "legs")))
    assert static(policy, "dog, German_Shepherd, legs, smile", "dog, legs") == [
        "German_Shepherd, legs, smile", "dog, legs"]
    assert static(policy, "spread legs, legs") == ["spread legs"]


def test_implications_follow_chains_and_reject_loops():
    policy = CaptionPolicy(implications=(("german shepherd", "dog"), ("dog", "animal")))
    assert static(policy, "animal, german shepherd, smile") == ["german shepherd, smile"]
    with pytest.raises(ValueError, match="loop"):
        CaptionPolicy(implications=(("a", "b"), ("b", "A")))


def test_parse_implications():
    text = "german shepherd -> dog\n\n# comment\n  spread_legs->legs  # inline\n"
    assert parse_implications(text) == (("german shepherd", "dog"), ("spread_legs", "legs"))
    for bad in ("dog", "a -> b -> c", " -> dog"):
        with pytest.raises(ValueError, match="line 2"):
            parse_implications(f"a -> b\n{bad}")


def test_prune_defining_is_per_concept():
    # ann: blonde hair 4/4, blue eyes 3/4 (75%), smile 1/4; bob: blonde hair 1/3, hat 3/3
    captions = [("ann, blonde hair, blue eyes, smile", "ann"), ("ann, blonde_hair, blue eyes", "ann"),
                ("ann, Blonde Hair, blue eyes", "ann"), ("ann, blonde hair", "ann"),
                ("hat, blonde hair", "bob"), ("hat, sky", "bob"), ("hat", "bob"),
                ("tree", "cid")]
    prepared = prepare(CaptionPolicy(prune_defining=0.75), dataset(*captions))
    assert prepared.captions == ("ann, smile", "ann", "ann", "ann",  # the concept name is never pruned
                                 "blonde hair", "sky", "", "")
    assert prepared.pruned == {"ann": ("blonde hair", "blue eyes"), "bob": ("hat",), "cid": ("tree",)}
    stricter = prepare(CaptionPolicy(prune_defining=0.8), dataset(*captions))
    assert stricter.pruned["ann"] == ("blonde hair",)
    assert stricter.captions[:2] == ("ann, blue eyes, smile", "ann, blue eyes")
    assert prepare(CaptionPolicy(), dataset(*captions)).pruned == {}


def test_prune_never_removes_the_trigger():
    prepared = prepare(CaptionPolicy(prune_defining=0.5), dataset("ohwx, red hair", "ohwx, sky", trigger="ohwx"))
    assert prepared.captions == ("ohwx", "ohwx")
    assert prepared.pruned == {"subject": ("red hair", "sky")}


def test_tag_frequency_is_kohyas_format_counted_before_pruning():
    captions = [("a, b, b", "one"), ("A, c", "one"), ("x", "two")]
    prepared = prepare(CaptionPolicy(prune_defining=1.0, remove_tags=("c",)), dataset(*captions))
    # {concept: {tag: images with it}}, most frequent first, after removal, before pruning
    assert prepared.tag_frequency == {"one": {"a": 2, "b": 1}, "two": {"x": 1}}
    assert list(prepared.tag_frequency["one"]) == ["a", "b"]
    assert prepared.pruned == {"one": ("a",), "two": ("x",)}


# ---- the per-step part -----------------------------------------------------------------------

def test_no_randomness_draws_the_static_caption_and_one_variant():
    prepared = prepare(CaptionPolicy(template="{trigger}, {tags}"), dataset("b, c", trigger="a"))
    rng = random.Random(0)
    assert {prepared.draw(0, rng) for _ in range(20)} == {"a, b, c"}
    assert prepared.variants(0, k=8) == ["a, b, c"]


def test_keep_tokens_shuffle_keeps_the_head_and_permutes_the_rest_uniformly():
    policy = CaptionPolicy(template="{trigger}, {tags}", shuffle=True, keep_tokens=2)
    prepared = prepare(policy, dataset("first, b, c, d, e", trigger="ohwx"))
    rng, draws = random.Random(1234), 8000
    positions = Counter()
    orders = Counter()
    for _ in range(draws):
        tokens = prepared.draw(0, rng).split(", ")
        assert tokens[:2] == ["ohwx", "first"]
        assert sorted(tokens[2:]) == ["b", "c", "d", "e"]
        positions.update((tag, i) for i, tag in enumerate(tokens[2:]))
        orders[tuple(tokens[2:])] += 1
    expected, sigma = draws / 4, math.sqrt(draws * 0.25 * 0.75)
    for tag, i in itertools.product("bcde", range(4)):
        assert abs(positions[tag, i] - expected) < 4 * sigma, (tag, i, positions[tag, i])
    assert len(orders) == 24  # every permutation occurs


def test_keep_tokens_counts_the_final_deduplicated_caption():
    policy = CaptionPolicy(template="{trigger}, {tags}", keep_tokens=2)
    prepared = prepare(policy, dataset("ohwx, b, c", "d", trigger="ohwx"))
    assert prepared.tokens == (("ohwx", "b", "c"), ("ohwx", "d")) and prepared.fixed == (2, 2)
    assert prepare(CaptionPolicy(keep_tokens=5), dataset("a, b")).fixed == (2,)


def test_keep_separator_takes_precedence_and_disappears():
    policy = CaptionPolicy(template="{trigger}, {concept} ||| {tags}", shuffle=True, keep_tokens=1,
                           tag_dropout=0.5)
    prepared = prepare(policy, dataset("b, c, d", concept="ann", trigger="ohwx"))
    assert prepared.captions == ("ohwx, ann, b, c, d",)
    assert prepared.fixed == (2,)
    rng = random.Random(5)
    seen = set()
    for _ in range(500):
        tokens = prepared.draw(0, rng).split(", ")
        assert tokens[:2] == ["ohwx", "ann"] and "|||" not in tokens
        seen.add(tuple(tokens[2:]))
    assert ("d", "c", "b") in seen and () in seen
    # the separator also works written in the captions themselves; only the first one keeps
    written = prepare(CaptionPolicy(shuffle=True), dataset("x, y ||| z ||| w", "x ||| y, x, z"))
    assert written.captions == ("x, y, z, w", "x, y, z") and written.fixed == (2, 1)


def test_tag_dropout_rate_and_kept_tokens_are_never_dropped():
    p, draws, tags = 0.3, 10_000, ["b", "c", "d", "e"]
    policy = CaptionPolicy(template="{trigger}, {tags}", keep_tokens=1, tag_dropout=p)
    prepared = prepare(policy, dataset(", ".join(tags), trigger="ohwx"))
    rng, present = random.Random(7), Counter()
    for _ in range(draws):
        tokens = prepared.draw(0, rng).split(", ")
        assert tokens[0] == "ohwx"
        assert tokens[1:] == [t for t in tags if t in tokens[1:]]  # no shuffle: order kept
        present.update(tokens[1:])
    sigma = math.sqrt(draws * p * (1 - p))
    for tag in tags:
        assert abs((draws - present[tag]) - p * draws) < 3 * sigma, (tag, present[tag])


def test_caption_dropout_rate():
    p, draws = 0.3, 10_000
    prepared = prepare(CaptionPolicy(template="{trigger}, {tags}", caption_dropout=p), dataset("b", trigger="a"))
    rng = random.Random(3)
    results = Counter(prepared.draw(0, rng) for _ in range(draws))
    assert set(results) == {"", "a, b"}  # all or nothing, the trigger included
    assert abs(results[""] - p * draws) < 3 * math.sqrt(draws * p * (1 - p))


def test_draws_and_variants_are_deterministic():
    policy = CaptionPolicy(shuffle=True, tag_dropout=0.2, caption_dropout=0.1)
    prepared = prepare(policy, dataset("a, b, c, d, e, f", "a, b, c, d, e, f"))
    a, b = random.Random(99), random.Random(99)
    assert [prepared.draw(i % 2, a) for i in range(50)] == [prepared.draw(i % 2, b) for i in range(50)]
    variants = prepared.variants(0, k=5, seed=1)
    assert len(variants) == 5 and len(set(variants)) > 1
    assert variants == prepared.variants(0, k=5, seed=1)
    assert variants != prepared.variants(0, k=5, seed=2)
    assert prepared.variants(1, k=5, seed=1) != variants  # the same caption, its own stream
    assert len(prepared.variants(1, k=12)) == 12
    with pytest.raises(ValueError, match="k"):
        prepared.variants(0, k=0)


# ---- natural mode and validation -------------------------------------------------------------

def test_natural_mode_keeps_the_caption_whole():
    policy = CaptionPolicy(mode="natural", template="{trigger}, {caption}", caption_dropout=0.5)
    prepared = prepare(policy, dataset("A cat, a cat, sitting on a mat.", trigger="ohwx"))
    assert prepared.captions == ("ohwx, A cat, a cat, sitting on a mat.",)
    assert prepared.tag_frequency == {} and prepared.pruned == {}
    rng = random.Random(0)
    assert {prepared.draw(0, rng) for _ in range(200)} == {"", "ohwx, A cat, a cat, sitting on a mat."}


@pytest.mark.parametrize("setting", [{"shuffle": True}, {"keep_tokens": 1}, {"tag_dropout": 0.1},
                                     {"prune_defining": 0.8}, {"remove_tags": ("x",)},
                                     {"implications": (("a", "b"),)}])
def test_tag_settings_in_natural_mode_are_errors(setting):
    with pytest.raises(ValueError, match=f"{next(iter(setting))} only appl(y|ies) in tag mode"):
        CaptionPolicy(mode="natural", **setting)


@pytest.mark.parametrize("setting, message", [
    ({"mode": "words"}, "mode"), ({"tag_dropout": 1.5}, "tag_dropout"), ({"caption_dropout": -0.1}, "caption_dropout"),
    ({"prune_defining": 2}, "prune_defining"), ({"keep_tokens": -1}, "keep_tokens"),
    ({"implications": (("a", "b", "c"),)}, "pair"), ({"implications": ("ab",)}, "pair"),
    ({"implications": (("a", " "),)}, "pair")])
def test_invalid_settings(setting, message):
    with pytest.raises(ValueError, match=message):
        CaptionPolicy(**setting)


def test_sequences_become_tuples_and_a_string_is_refused():
    policy = CaptionPolicy(remove_tags=["a"], implications=[["b", "c"]])
    assert policy.remove_tags == ("a",) and policy.implications == (("b", "c"),)
    hash(policy)
    with pytest.raises(TypeError):
        CaptionPolicy(remove_tags="a, b")


def test_preview_shows_captions_frequencies_and_pruned_tags():
    captions = [(f"ann, blonde hair, tag{i}", "ann") for i in range(30)] + [("bob, hat", "bob")]
    policy = CaptionPolicy(template="{trigger}, {tags}", prune_defining=0.9, shuffle=True, keep_tokens=1,
                           caption_dropout=0.05)
    text = preview(policy, dataset(*captions), first=3)
    assert "first 3 of 31" in text
    assert "'ann, tag0'" in text and "'ann, tag3'" not in text
    assert "Each step: tags after the first 1 (or after '|||') shuffled, caption dropout 5%" in text
    assert "Note: the template uses {trigger}" in text
    assert "Tags of 'ann' (30 images, top 20)" in text and "Tags of 'bob' (1 image, top 20)" in text
    assert "   30  blonde hair" in text
    assert "      1  tag17" in text and "tag18" not in text  # 20 rows: blonde hair, ann, 18 others
    assert "pruned (in >= 90% of its images): blonde hair\n" in text  # not the concept name
    assert "Note" not in preview(CaptionPolicy(template="{trigger}, {tags}"), dataset("a", trigger="t"))
