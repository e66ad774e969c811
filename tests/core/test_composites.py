"""1to2 composites (seed 000): ordered concept pairs, image-pair sampling, halves at a common
height, subject crops, masks aligned with their pixels, captions, and errors."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_lora_lab.training.captions import CaptionPolicy
from comfyui_lora_lab.training.composites import CompositeSettings, composite_preview, make_composites
from comfyui_lora_lab.training.dataset import Dataset, DatasetSample


def sample(concept, caption, width, height, value=0.5, box=None):
    """An in-memory image of one grey level; box (top, bottom, left, right): the masked subject."""
    mask = None
    if box is not None:
        mask = torch.zeros(height, width)
        top, bottom, left, right = box
        mask[top:bottom, left:right] = 1
    return DatasetSample(caption=caption, concept=concept, image=torch.full((height, width, 3), value), mask=mask)


def three_concepts(**changes):
    """ann: 3 images, bob: 2, cid: 1, of different sizes."""
    samples = [sample("ann", f"ann, a{i}", 40 + 8 * i, 80) for i in range(3)]
    samples += [sample("bob", f"b{i}", 60, 30 + 10 * i) for i in range(2)]
    samples += [sample("cid", "c0", 50, 50)]
    return Dataset(samples=tuple(samples), **changes)


def small(**values):
    return CompositeSettings(height=32, **values)


def per_pair(data):
    return Counter(s.concept for s in data.samples)


# --- pairing ------------------------------------------------------------------------------------

def test_every_ordered_pair_of_different_concepts_gets_its_composites():
    data, summary = make_composites(three_concepts(), small(pairs_per_combination=3))
    assert per_pair(data) == {f"{a}/{b}": 3 for a in ("ann", "bob", "cid") for b in ("ann", "bob", "cid") if a != b}
    assert "18 composite(s) of 3 concepts" in summary and "  bob/ann: 3" in summary


def test_random_pairs_are_distinct_until_every_pair_is_used():
    data, _ = make_composites(three_concepts(), small(pairs_per_combination=6))
    ann_bob = [s.caption for s in data.samples if s.concept == "ann/bob"]
    assert len(set(ann_bob)) == 6  # 3 x 2 image pairs: each once
    ann_cid = Counter(s.caption for s in data.samples if s.concept == "ann/cid")
    assert sorted(ann_cid.values()) == [2, 2, 2]  # 3 x 1 image pairs, each twice


def test_all_combinations_with_a_cap():
    data, _ = make_composites(three_concepts(), small(all_combinations_up_to=100))
    counts = per_pair(data)
    assert counts == {"ann/bob": 6, "bob/ann": 6, "ann/cid": 3, "cid/ann": 3, "bob/cid": 2, "cid/bob": 2}
    assert len({s.caption for s in data.samples if s.concept == "bob/ann"}) == 6
    capped, _ = make_composites(three_concepts(), small(all_combinations_up_to=4))
    assert per_pair(capped) == {"ann/bob": 4, "bob/ann": 4, "ann/cid": 3, "cid/ann": 3, "bob/cid": 2, "cid/bob": 2}
    assert len({s.caption for s in capped.samples if s.concept == "ann/bob"}) == 4


def test_deterministic_per_seed_and_different_between_seeds():
    def captions(seed):
        data, _ = make_composites(three_concepts(), small(pairs_per_combination=2, seed=seed))
        return [s.caption for s in data.samples]
    assert captions(3) == captions(3)
    assert len({tuple(captions(seed)) for seed in range(6)}) > 1


# --- pixels -------------------------------------------------------------------------------------

def test_halves_share_the_height_and_keep_their_aspect():
    data = Dataset(samples=(sample("ann", "x", 40, 80, 0.2), sample("bob", "y", 90, 30, 0.8)))
    out, summary = make_composites(data, small(pairs_per_combination=1, gap=4))
    first = out.samples[0]  # ann/bob: 40x80 -> 16x32, the gap, 90x30 -> 96x32
    assert first.image.shape == (32, 16 + 4 + 96, 3)
    assert torch.allclose(first.image[:, :16], torch.tensor(0.2))
    assert torch.allclose(first.image[:, 20:], torch.tensor(0.8))
    assert torch.allclose(first.image[:, 16:20], torch.tensor(0.5))  # the mean of the edges facing the gap
    assert out.samples[1].image.shape == (32, 116, 3)  # bob/ann
    assert "116x32" in summary


def test_mask_follows_its_pixels_and_the_gap_weighs_nothing():
    # ann: subject at rows 8-15, cols 4-7 of 16x32; at height 32 the scale is 1
    data = Dataset(samples=(sample("ann", "x", 16, 32, box=(8, 16, 4, 8)), sample("bob", "y", 20, 32)))
    out, _ = make_composites(data, small(pairs_per_combination=1, gap=3))
    ann_bob, bob_ann = out.samples
    expected = torch.zeros(32, 16)
    expected[8:16, 4:8] = 1
    assert torch.equal(ann_bob.mask[:, :16], expected)
    assert torch.equal(ann_bob.mask[:, 16:19], torch.zeros(32, 3))
    assert torch.equal(ann_bob.mask[:, 19:], torch.ones(32, 20))  # no mask: all learned
    assert torch.equal(bob_ann.mask[:, 23:], expected)  # on the right after bob and the gap


def test_crop_to_subject_uses_the_mask_box_plus_the_margin():
    # box 100 rows x 40 cols; at height 120 with margin 10, m = 10 * 100 / (120 - 20) = 10 source px
    data = Dataset(samples=(sample("ann", "x", 200, 200, box=(50, 150, 80, 120)), sample("bob", "y", 60, 120)))
    out, _ = make_composites(data, CompositeSettings(height=120, margin=10, crop_to_subject=True,
                                                     pairs_per_combination=1))
    composite = out.samples[0]
    assert composite.image.shape == (120, 60 + 60, 3)  # crop rows 40-160, cols 70-130: scale 1
    expected = torch.zeros(120, 60)
    expected[10:110, 10:50] = 1
    assert torch.equal(composite.mask[:, :60], expected)
    # near the edge the margin is clamped to the image
    edge = Dataset(samples=(sample("ann", "x", 200, 200, box=(0, 100, 0, 40)), sample("bob", "y", 60, 120)))
    out, _ = make_composites(edge, CompositeSettings(height=120, margin=10, crop_to_subject=True,
                                                     pairs_per_combination=1))
    assert out.samples[0].image.shape == (120, 55 + 60, 3)  # crop 110 x 50, scaled by 120/110


def test_crop_without_a_subject_keeps_the_whole_image_with_a_note():
    data = Dataset(samples=(sample("ann", "x", 16, 32, box=(0, 0, 0, 0)), sample("bob", "y", 16, 32)))
    out, summary = make_composites(data, small(crop_to_subject=True, margin=4, pairs_per_combination=1))
    assert out.samples[0].image.shape == (32, 32, 3)
    assert any("no subject" in note for note in out.notes) and "no subject" in summary


def test_folder_backed_samples_are_read_from_disk(tmp_path):
    samples = []
    for concept, size, colour in (("ann", (30, 60), (255, 0, 0)), ("bob", (80, 40), (0, 0, 255))):
        path = tmp_path / f"{concept}.png"
        Image.new("RGB", size, colour).save(path)
        samples.append(DatasetSample(caption=f"{concept}, solo", concept=concept, path=str(path), size=size))
    out, _ = make_composites(Dataset(samples=tuple(samples)), small(pairs_per_combination=1))
    ann_bob = out.samples[0]
    assert ann_bob.image.shape == (32, 16 + 64, 3)
    assert torch.allclose(ann_bob.image[:, :16], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(ann_bob.image[:, 16:], torch.tensor([0, 0, 1.0]))
    assert ann_bob.caption == "ann/bob/COMPOSITE, solo, solo"


def test_unreadable_files_skip_their_composites_with_a_note(tmp_path):
    good = tmp_path / "ann.png"
    Image.new("RGB", (16, 16)).save(good)
    samples = (DatasetSample(caption="a", concept="ann", path=str(good)),
               DatasetSample(caption="b", concept="bob", path=str(tmp_path / "gone.png")))
    with pytest.raises(ValueError, match="no composite could be made(.|\n)*gone.png"):
        make_composites(Dataset(samples=samples), small(pairs_per_combination=1))
    samples += (sample("bob", "b2", 16, 16),)
    out, _ = make_composites(Dataset(samples=samples), small(pairs_per_combination=2))
    assert per_pair(out) == {"ann/bob": 1, "bob/ann": 1}
    assert sum("skipped a" in note and "gone.png" in note for note in out.notes) == 2


# --- the result ---------------------------------------------------------------------------------

def test_composites_are_never_flipped_and_keep_the_dataset_settings():
    buckets = object()
    data = three_concepts(trigger="ohwx", flip=True, buckets=buckets, caption_policy=CaptionPolicy(),
                          masked_fill=(0.5, 0.5, 0.5), notes=("an old note",))
    out, _ = make_composites(data, small(pairs_per_combination=1))
    assert not out.flip and out.caption_policy is None and out.notes == ()
    assert out.trigger == "ohwx" and out.buckets is buckets and out.masked_fill == (0.5, 0.5, 0.5)
    assert all(not s.flip_allowed and s.repeats == 1 and s.image is not None for s in out.samples)


def test_caption_template_exact_with_names_said_once():
    data = Dataset(samples=(sample("ann", "ann, red hair, smile", 8, 8), sample("bob", "Bob,  hat ,", 8, 8)))
    out, _ = make_composites(data, small(pairs_per_combination=1))
    assert [s.caption for s in out.samples] == ["ann/bob/COMPOSITE, red hair, smile, hat",
                                                "bob/ann/COMPOSITE, hat, red hair, smile"]
    # a name later in the caption is description and stays; empty tags leave no ", ," behind
    data = Dataset(samples=(sample("ann", "ann", 8, 8), sample("bob", "next to ann", 8, 8)))
    out, _ = make_composites(data, small(pairs_per_combination=1, caption_template="{tags_left}, {left} and {right}, "
                                                                                    "{tags_right}"))
    assert out.samples[0].caption == "ann and bob, next to ann"


def test_caption_policy_path_removes_the_trigger_and_concept_it_adds():
    policy = CaptionPolicy(template="{trigger}, {concept}, {tags}", remove_tags=("smile",))
    data = Dataset(samples=(sample("ann", "red_hair, smile", 8, 8), sample("bob", "bob, hat", 8, 8)),
                   trigger="ohwx", caption_policy=policy)
    out, _ = make_composites(data, small(pairs_per_combination=1))
    assert out.samples[0].caption == "ann/bob/COMPOSITE, red_hair, hat"


def test_a_caption_template_after_composites_keeps_tags_both_sides_share():
    """Seed 000's stage 2: Load Dataset -> Caption Template -> Composite Pairs -> Caption Template
    keeps every tag of each side, de-duplicating within a side only (and not at all when asked)."""
    from comfyui_lora_lab.training.captions import prepare

    singles = Dataset(samples=(sample("cleo", "1girl, ponytail, 1girl", 8, 8), sample("anna", "1girl, hat, standing", 8, 8)),
                      caption_policy=CaptionPolicy(template="{concept}, {caption}"))
    out, _ = make_composites(singles, small(pairs_per_combination=1))
    assert out.samples[0].caption == "cleo/anna/COMPOSITE, 1girl, ponytail, 1girl, hat, standing"
    assert out.samples[0].caption_parts == ("cleo/anna/COMPOSITE", "1girl, ponytail", "1girl, hat, standing")
    stage2 = out.with_changes(caption_policy=CaptionPolicy(template="{caption}", keep_tokens=1))
    prepared = prepare(stage2.caption_policy, stage2)
    assert prepared.captions[0] == "cleo/anna/COMPOSITE, 1girl, ponytail, 1girl, hat, standing"
    assert prepared.fixed[0] == 1
    # within one side a repeat still goes; remove_tags and implications act on each side
    parts = ("a/b/COMPOSITE", "hat, Hat, dog", "hat, german shepherd, dog")
    doubled = out.with_samples([replace(out.samples[0], caption=", ".join(parts), caption_parts=parts)])
    policy = CaptionPolicy(template="ohwx, {caption}", implications=(("german shepherd", "dog"),))
    assert prepare(policy, doubled).captions[0] == "ohwx, a/b/COMPOSITE, hat, dog, hat, german shepherd"
    no_dedupe = CaptionPolicy(template="{caption}", dedupe=False)
    assert prepare(no_dedupe, doubled).captions[0] == "a/b/COMPOSITE, hat, Hat, dog, hat, german shepherd, dog"


def test_random_caption_policy_is_noted():
    data = three_concepts(caption_policy=CaptionPolicy(shuffle=True, keep_tokens=1))
    out, _ = make_composites(data, small(pairs_per_combination=1))
    assert any("shuffle" in note for note in out.notes)


def test_preview_is_a_contact_sheet():
    out, _ = make_composites(three_concepts(), small(pairs_per_combination=1))
    sheet = composite_preview(out, first=3)
    assert sheet.size == (2 * 384, 2 * (384 + 48))
    assert np.asarray(sheet).std() > 0


# --- errors -------------------------------------------------------------------------------------

def test_one_concept_is_refused():
    data = Dataset(samples=(sample("ann", "x", 8, 8), sample("ann", "y", 8, 8)))
    with pytest.raises(ValueError, match="needs? at least two concepts, found 1"):
        make_composites(data, small())


@pytest.mark.parametrize("template", ["{left}, {name}", "{0}", "{}", "{left"])
def test_bad_templates_are_refused(template):
    with pytest.raises(ValueError, match="caption_template"):
        CompositeSettings(caption_template=template)
    if template == "{left}, {name}":
        with pytest.raises(ValueError, match=r"\{name\}"):
            CompositeSettings(caption_template=template)


@pytest.mark.parametrize("changes", [{"pairs_per_combination": 0}, {"all_combinations_up_to": -1}, {"height": 0},
                                     {"gap": -1}, {"margin": 1.5}, {"crop_to_subject": True, "margin": 16,
                                                                   "height": 32}])
def test_bad_settings_are_refused(changes):
    with pytest.raises(ValueError, match="composite"):
        CompositeSettings(**changes)
