"""The dataset value passed between nodes: masks as loss weights, validation with clear messages."""

import pytest
import torch

from comfyui_lora_lab.training.dataset import (MASK_MEANINGS, Dataset, DatasetSample, looks_inverted,
                                               mask_from_comfy)


def image(h=8, w=6):
    return torch.rand(h, w, 3, generator=torch.Generator().manual_seed(h * 100 + w))


def sample(**overrides):
    values = dict(image=image(), caption="a photo of ohwx", concept="ohwx")
    values.update(overrides)
    return DatasetSample(**values)


# --- masks --------------------------------------------------------------------------------------

def test_white_means_train():
    mask = torch.tensor([[0.0, 0.25], [1.0, 0.5]])
    weight = mask_from_comfy(mask, "white = subject/train")
    assert torch.equal(weight, mask)
    assert weight.dtype == torch.float32


def test_loadimage_alpha_is_inverted():
    # LoadImage's MASK is 1 - alpha: 1 where the image is transparent, i.e. where not to learn
    mask = torch.tensor([[0.0, 0.25], [1.0, 0.5]])
    weight = mask_from_comfy(mask, "LoadImage alpha")
    assert torch.equal(weight, torch.tensor([[1.0, 0.75], [0.0, 0.5]]))


@pytest.mark.parametrize("meaning", MASK_MEANINGS)
def test_masks_become_float_weights_in_zero_one(meaning):
    mask = torch.tensor([[-0.5, 2.0], [0.3, 1.0]], dtype=torch.float16)
    weight = mask_from_comfy(mask, meaning)
    assert weight.dtype == torch.float32
    assert weight.min() >= 0 and weight.max() <= 1
    assert weight.shape == mask.shape


def test_the_two_meanings_are_complements():
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(0))
    a = mask_from_comfy(mask, MASK_MEANINGS[0])
    b = mask_from_comfy(mask, MASK_MEANINGS[1])
    assert torch.allclose(a + b, torch.ones_like(a))


def test_an_unknown_mask_meaning_is_refused():
    with pytest.raises(ValueError, match="mask_meaning must be"):
        mask_from_comfy(torch.zeros(2, 2), "black = train")


def test_a_mask_input_is_not_modified():
    mask = torch.tensor([[0.2, 0.8]])
    mask_from_comfy(mask, "LoadImage alpha")
    assert torch.equal(mask, torch.tensor([[0.2, 0.8]]))


def test_looks_inverted_flags_a_weight_covering_almost_everything():
    frame = torch.ones(10, 10)
    assert looks_inverted(frame)
    subject = torch.zeros(10, 10)
    subject[2:8, 2:8] = 1.0  # 36% of the frame
    assert not looks_inverted(subject)
    mostly = torch.ones(10, 10)
    mostly[0, :] = 0.0  # exactly 90%: not above the threshold
    assert not looks_inverted(mostly)
    mostly[0, :5] = 1.0  # 95%
    assert looks_inverted(mostly)
    assert not looks_inverted(torch.ones(4, 4, dtype=torch.bool) & False)


# --- samples ------------------------------------------------------------------------------------

def test_a_valid_sample():
    mask = torch.ones(8, 6)
    s = sample(mask=mask, repeats=3)
    assert s.repeats == 3 and s.mask is mask and s.flip_allowed


def test_a_mask_of_another_size_is_refused_naming_both_shapes():
    with pytest.raises(ValueError, match=r"mask of 'ohwx' is \(6, 8\) but its image is \(8, 6\)"):
        sample(mask=torch.ones(6, 8))


def test_an_image_that_is_not_hwc_rgb_is_refused():
    with pytest.raises(ValueError, match=r"must be \(H,W,3\), got \(3, 8, 6\)"):
        sample(image=torch.rand(3, 8, 6))
    with pytest.raises(ValueError, match=r"got \(8, 6, 4\)"):
        sample(image=torch.rand(8, 6, 4))


@pytest.mark.parametrize("repeats", [0, -2])
def test_repeats_below_one_are_refused(repeats):
    with pytest.raises(ValueError, match=f"repeats of 'ohwx' must be at least 1, not {repeats}"):
        sample(repeats=repeats)


# --- datasets -----------------------------------------------------------------------------------

def test_an_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="dataset is empty"):
        Dataset(samples=())


def test_images_per_epoch_counts_repeats():
    ds = Dataset(samples=(sample(repeats=3), sample(repeats=1), sample(repeats=2)), trigger="ohwx")
    assert ds.images_per_epoch == 6


def test_with_samples_keeps_the_rest_and_leaves_the_original():
    original = Dataset(samples=(sample(),), trigger="ohwx", notes=("3 captions were empty",))
    changed = original.with_samples([sample(repeats=2), sample()])
    assert isinstance(changed.samples, tuple) and len(changed.samples) == 2
    assert changed.trigger == "ohwx" and changed.notes == ("3 captions were empty",)
    assert len(original.samples) == 1
    with pytest.raises(ValueError, match="dataset is empty"):
        original.with_samples([])


def test_samples_and_datasets_are_immutable():
    s = sample()
    with pytest.raises(AttributeError):
        s.repeats = 5
    with pytest.raises(AttributeError):
        Dataset(samples=(s,)).trigger = "x"
