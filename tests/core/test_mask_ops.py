"""Mask post-processing on synthetic shapes: a disk, a square with a hole, a thin line."""

import math

import pytest
import torch

from comfyui_lora_lab.masking import ops
from comfyui_lora_lab.masking.ops import MaskOps
from comfyui_lora_lab.training.dataset import MASK_MEANINGS, mask_from_comfy

SIZE = 128


def radius_map(cy=SIZE // 2, cx=SIZE // 2, size=SIZE):
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    return ((y - cy) ** 2 + (x - cx) ** 2).sqrt()


def disk(radius, size=SIZE):
    return (radius_map(size=size) <= radius).float()


def square_with_hole():
    mask = torch.zeros(SIZE, SIZE)
    mask[32:96, 32:96] = 1
    mask[56:72, 56:72] = 0
    return mask


def rectangle():
    mask = torch.zeros(SIZE, SIZE)
    mask[30:90, 20:100] = 1
    return mask


def iou(a, b):
    a, b = a >= 0.5, b >= 0.5
    return float((a & b).sum() / (a | b).sum())


def area(mask):
    return float((mask >= 0.5).sum())


def test_threshold_is_inclusive_and_binary():
    soft = torch.linspace(0, 1, 11).repeat(3, 1)
    out = ops.threshold(soft, 0.5)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out[0], (torch.arange(11) >= 5).float())


@pytest.mark.parametrize("radius,by", [(20, 5), (30, 12)])
def test_grow_adds_about_the_ring_area(radius, by):
    grown = ops.grow(disk(radius), by)
    ring = math.pi * ((radius + by) ** 2 - radius ** 2)
    assert area(grown) - area(disk(radius)) == pytest.approx(ring, rel=0.05)
    assert torch.equal(grown * disk(radius), disk(radius))  # the original stays inside


@pytest.mark.parametrize("radius,by", [(20, 5), (40, 15)])
def test_shrink_removes_about_the_ring_area(radius, by):
    shrunk = ops.grow(disk(radius), -by)
    ring = math.pi * (radius ** 2 - (radius - by) ** 2)
    assert area(disk(radius)) - area(shrunk) == pytest.approx(ring, rel=0.05)


@pytest.mark.parametrize("shape", [disk(30), rectangle()], ids=["disk", "rectangle"])
def test_grow_then_shrink_is_close_to_identity_on_convex_shapes(shape):
    assert iou(ops.grow(ops.grow(shape, 8), -8), shape) > 0.95


def test_a_thin_line_grows_to_a_band_and_vanishes_when_shrunk():
    line = torch.zeros(SIZE, SIZE)
    line[64, 20:100] = 1
    band = ops.grow(line, 3)
    assert band[:, 60].sum() == 7  # 3 px each side of a 1 px line, perpendicular to it
    assert ops.grow(line, -1).sum() == 0


def test_shape_ops_ignore_the_frame_border():
    left_half = torch.zeros(SIZE, SIZE)
    left_half[:, :64] = 1
    assert torch.equal(ops.grow(left_half, -5)[:, :59], torch.ones(SIZE, 59))  # not eaten from the frame
    assert ops.grow(left_half, -5)[:, 59:].sum() == 0
    assert torch.equal(ops.feather(left_half, 10)[:, :58], torch.ones(SIZE, 58))


def test_shape_ops_on_soft_masks_use_the_half_weight_region():
    soft = disk(20) * 0.6 + 0.2  # 0.8 inside, 0.2 outside
    assert torch.equal(ops.grow(soft, 4), ops.grow(disk(20), 4))
    assert torch.equal(ops.grow(soft, 0), soft)  # nothing asked, nothing hardened


@pytest.mark.parametrize("flat", [torch.zeros(SIZE, SIZE), torch.ones(SIZE, SIZE)], ids=["empty", "full"])
def test_masks_without_an_edge_are_unchanged(flat):
    for by in (5, -5):
        assert torch.equal(ops.grow(flat, by), flat)
    assert torch.equal(ops.feather(flat, 10), flat)


def test_feather_is_a_ramp_of_the_given_width_centred_on_the_edge():
    radius, width = 40, 12
    r = radius_map()
    out = ops.feather(disk(radius), width)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.all(out[r <= radius - width / 2 - 1] == 1)  # interior stays exactly 1
    assert torch.all(out[r >= radius + width / 2 + 1] == 0)  # far exterior exactly 0
    row = out[SIZE // 2, SIZE // 2:]  # along a radius
    soft = int(((row > 0) & (row < 1)).sum())
    assert width - 1 <= soft <= width + 1
    assert torch.all(row[:-1] >= row[1:])  # falls monotonically
    assert abs(float(row[radius]) - 0.5) <= 1 / width  # 0.5 on the edge
    assert float(out.sum()) == pytest.approx(area(disk(radius)), rel=0.02)  # symmetric: area kept


def test_fill_holes_closes_enclosed_holes_and_keeps_soft_values_elsewhere():
    mask = square_with_hole()
    mask[0:10, 0:10] = 0.3  # a soft patch outside the square
    notch = square_with_hole()
    notch[60:68, 32:60] = 0  # the hole opens to the outside through the left side: no longer a hole
    filled = ops.fill_holes(mask)
    assert torch.all(filled[56:72, 56:72] == 1)
    assert torch.all(filled[0:10, 0:10] == 0.3)
    assert torch.equal(filled[32:96, 32:96], torch.ones(64, 64))
    assert torch.equal(ops.fill_holes(notch), notch)


def test_invert():
    soft = torch.rand(8, 8)
    assert torch.allclose(ops.invert(soft), 1 - soft)


def test_apply_runs_threshold_first():
    mask = square_with_hole() * 0.6  # the square's weight is 0.6, its hole 0
    # thresholding at 0.7 first leaves no square, so there is no hole to fill
    assert ops.apply(mask, MaskOps(threshold=0.7, fill_holes=True)).sum() == 0


def test_apply_fills_holes_before_inverting():
    out = ops.apply(square_with_hole(), MaskOps(fill_holes=True, invert=True))
    assert torch.all(out[56:72, 56:72] == 0)  # the filled hole belongs to the subject, then flipped


def test_apply_grows_the_subject_before_inverting():
    out = ops.apply(disk(30), MaskOps(grow=6, invert=True))
    assert torch.equal(out, 1 - ops.grow(disk(30), 6))  # the excluded disk is the grown one


def test_apply_feathers_last():
    out = ops.apply(disk(30) * 0.9, MaskOps(threshold=0.5, grow=-4, invert=True, feather=8))
    expected = ops.feather(1 - ops.grow(disk(30), -4), 8)
    assert torch.equal(out, expected)
    assert ((out > 0) & (out < 1)).any()  # soft values survive: nothing hardens after feathering


def test_mask_ops_checks_its_settings():
    with pytest.raises(ValueError, match="threshold"):
        MaskOps(threshold=1.5)
    with pytest.raises(ValueError, match="feather"):
        MaskOps(feather=-1)
    assert torch.equal(ops.apply(disk(10), MaskOps()), disk(10))


def frame_with(pixels, size=100):
    mask = torch.zeros(size * size)
    mask[:pixels] = 1
    return mask.reshape(size, size)


@pytest.mark.parametrize("pixels,expected", [
    (99, "nearly empty"), (100, None), (9500, None), (9501, "nearly full")])
def test_coverage_warnings_at_the_thresholds(pixels, expected):
    warning = ops.coverage_warning(frame_with(pixels), "cat_01.png")
    assert ops.coverage(frame_with(pixels)) == pixels / 10000
    if expected is None:
        assert warning is None
    else:
        assert expected in warning and "cat_01.png" in warning
    if expected == "nearly empty":
        assert "nothing to learn" in warning
    if expected == "nearly full":
        assert "inverted" in warning and "background" in warning


def test_a_faint_haze_counts_as_nearly_empty():
    assert "nearly empty" in ops.coverage_warning(torch.full((50, 50), 0.3), "haze")


def test_fill_background_original_keeps_the_pixels():
    image = torch.rand(16, 16, 3)
    assert torch.equal(ops.fill_background(image, disk(5, size=16), "original"), image)
    assert torch.equal(ops.fill_background(image, disk(5, size=16)), image)  # the default


def test_fill_background_colour_blends_by_the_weight():
    image = torch.full((4, 4, 3), 0.2)
    weight = torch.tensor([[1.0, 0.5, 0.0, 0.0]]).repeat(4, 1)
    out = ops.fill_background(image, weight, "colour", (1.0, 0.0, 0.5))
    assert torch.allclose(out[0, 0], torch.tensor([0.2, 0.2, 0.2]))
    assert torch.allclose(out[0, 1], torch.tensor([0.6, 0.1, 0.35]))
    assert torch.allclose(out[0, 3], torch.tensor([1.0, 0.0, 0.5]))


def test_fill_background_rejects_unknown_modes_and_mismatched_sizes():
    with pytest.raises(ValueError, match="original"):
        ops.fill_background(torch.rand(4, 4, 3), torch.ones(4, 4), "blur")
    with pytest.raises(ValueError, match="H,W"):
        ops.fill_background(torch.rand(4, 4, 3), torch.ones(5, 4), "colour")


@pytest.mark.parametrize("meaning", MASK_MEANINGS)
def test_comfy_mask_and_weight_round_trip(meaning):
    weight = torch.rand(12, 10)
    comfy = ops.weight_to_comfy_mask(weight, meaning)
    assert torch.allclose(mask_from_comfy(comfy, meaning), weight)
    assert torch.allclose(ops.weight_to_comfy_mask(mask_from_comfy(weight, meaning), meaning), weight)
    expected = weight if meaning == "white = subject/train" else 1 - weight
    assert torch.allclose(comfy, expected)  # LoadImage's mask is 1 = transparent = not learned


def test_weight_to_comfy_mask_rejects_unknown_meanings():
    with pytest.raises(ValueError, match="mask_meaning"):
        ops.weight_to_comfy_mask(torch.ones(2, 2), "black = subject")
