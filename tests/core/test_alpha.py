"""Loss weights from transparency and from sidecar mask files (masking/alpha.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_lora_lab.masking.alpha import (alpha_weight, find_sidecar, looks_like_sidecar, read_mask_file,
                                            resize_weight)

ALPHAS = np.array([[0, 128], [255, 255]], dtype=np.uint8)  # one transparent, one half, two opaque
EXPECTED = torch.tensor([[0.0, 128 / 255], [1.0, 1.0]])


def saved(img, path, **params):
    """The image as Pillow reads it back from the file (with the file closed)."""
    img.save(path, **params)
    with Image.open(path) as loaded:
        loaded.load()
        return loaded


def rgba(alpha=ALPHAS):
    pixels = np.dstack([np.full(alpha.shape, c, np.uint8) for c in (10, 20, 30)] + [alpha])
    return Image.fromarray(pixels, "RGBA")


# --- alpha_weight -----------------------------------------------------------------------------------

def test_transparent_rgba_gives_its_alpha_as_weight(tmp_path):
    weight = alpha_weight(saved(rgba(), tmp_path / "a.png"))
    assert weight.dtype == torch.float32
    assert torch.allclose(weight, EXPECTED)


def test_opaque_rgba_has_no_weight(tmp_path):
    img = saved(rgba(np.full((2, 2), 255, np.uint8)), tmp_path / "a.png")
    assert img.has_transparency_data  # the Pillow trap: RGBA always says it is transparent
    assert alpha_weight(img) is None


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "I;16", "1"])
def test_images_without_alpha_have_no_weight(mode):
    assert alpha_weight(Image.new(mode, (3, 2))) is None


def test_la_and_pa():
    la = Image.merge("LA", [Image.new("L", (2, 2), 90), Image.fromarray(ALPHAS)])
    assert torch.allclose(alpha_weight(la), EXPECTED)
    pa = Image.merge("PA", [Image.new("P", (2, 2), 1), Image.fromarray(ALPHAS)])
    assert torch.allclose(alpha_weight(pa), EXPECTED)


def test_palette_with_a_transparent_index(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    loaded = saved(img, tmp_path / "p.png", transparency=1)
    assert loaded.mode == "P"
    assert torch.equal(alpha_weight(loaded), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_palette_with_a_trns_table_of_partial_alphas(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [2, 2]], np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    loaded = saved(img, tmp_path / "p.png", transparency=bytes([0, 128]))  # index 2: opaque
    assert torch.allclose(alpha_weight(loaded), EXPECTED)


def test_palette_whose_transparent_index_is_unused_has_no_weight(tmp_path):
    img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    assert alpha_weight(saved(img, tmp_path / "p.png", transparency=2)) is None


def test_rgb_with_a_transparent_colour(tmp_path):
    pixels = np.array([[[1, 2, 3], [1, 2, 4]], [[9, 9, 9], [1, 2, 3]]], np.uint8)
    loaded = saved(Image.fromarray(pixels), tmp_path / "rgb.png", transparency=(1, 2, 3))
    assert loaded.mode == "RGB" and loaded.info["transparency"] == (1, 2, 3)
    assert torch.equal(alpha_weight(loaded), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_grey_and_16_bit_grey_with_a_transparent_value(tmp_path):
    grey = saved(Image.fromarray(np.array([[7, 8]], np.uint8)), tmp_path / "l.png", transparency=7)
    assert torch.equal(alpha_weight(grey), torch.tensor([[0.0, 1.0]]))
    deep = saved(Image.fromarray(np.array([[700, 40000]], np.uint16)), tmp_path / "i16.png", transparency=40000)
    assert deep.mode == "I;16"
    assert torch.equal(alpha_weight(deep), torch.tensor([[1.0, 0.0]]))


# --- read_mask_file -----------------------------------------------------------------------------------

def test_grey_mask_white_is_learn(tmp_path):
    Image.fromarray(np.array([[0, 51], [255, 255]], np.uint8)).save(tmp_path / "m.png")
    weight, warning = read_mask_file(tmp_path / "m.png", (2, 2))
    assert warning is None
    assert weight.dtype == torch.float32
    assert torch.allclose(weight, torch.tensor([[0.0, 0.2], [1.0, 1.0]]))


def test_colour_mask_counts_by_luminance(tmp_path):
    pixels = np.array([[[255, 255, 255], [255, 0, 0]], [[0, 255, 0], [0, 0, 0]]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "m.png")
    weight, _ = read_mask_file(tmp_path / "m.png", (2, 2))
    assert torch.allclose(weight, torch.tensor([[1.0, 76 / 255], [150 / 255, 0.0]]), atol=1 / 255)


def test_transparent_parts_of_a_mask_count_as_black(tmp_path):
    # white strokes on a transparent layer: the strokes are learned, whatever RGB sits underneath
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[..., :3] = 255
    pixels[..., 3] = ALPHAS
    Image.fromarray(pixels, "RGBA").save(tmp_path / "m.png")
    weight, _ = read_mask_file(tmp_path / "m.png", (2, 2))
    assert torch.allclose(weight, EXPECTED)
    la = Image.merge("LA", [Image.new("L", (2, 2), 255), Image.fromarray(ALPHAS)])
    la.save(tmp_path / "la.png")
    assert torch.allclose(read_mask_file(tmp_path / "la.png", (2, 2))[0], EXPECTED)


def test_an_opaque_rgba_mask_is_its_grey_value(tmp_path):
    pixels = np.zeros((1, 2, 4), np.uint8)
    pixels[0, 1, :3] = 255
    pixels[..., 3] = 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "m.png")
    assert torch.equal(read_mask_file(tmp_path / "m.png", (2, 1))[0], torch.tensor([[0.0, 1.0]]))


def test_one_bit_and_16_bit_masks(tmp_path):
    Image.fromarray(np.array([[False, True]])).save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as bits:
        assert bits.mode == "1"
    assert torch.equal(read_mask_file(tmp_path / "bits.png", (2, 1))[0], torch.tensor([[0.0, 1.0]]))
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "deep.png")
    weight, _ = read_mask_file(tmp_path / "deep.png", (3, 1))
    assert torch.allclose(weight, torch.tensor([[0.0, 32768 / 65535, 1.0]]))  # not clipped at 255


def test_mask_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((2, 3), np.uint8)
    pixels[0, 0] = 255  # top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "m.png", exif=exif)
    weight, warning = read_mask_file(tmp_path / "m.png", (2, 3))
    assert warning is None
    assert weight.shape == (3, 2)
    assert weight[0, 1] == 1.0 and weight.sum() == 1.0  # the stored top-left is now top-right


def test_a_wrong_size_mask_is_resized_with_a_warning(tmp_path):
    Image.new("L", (10, 6), 255).save(tmp_path / "m.png")
    weight, warning = read_mask_file(tmp_path / "m.png", (20, 12))
    assert weight.shape == (12, 20)
    assert torch.allclose(weight, torch.ones(12, 20))
    assert "m.png" in warning and "10x6" in warning and "20x12" in warning


def test_a_mask_of_the_image_source_size_follows_the_downscale_silently(tmp_path):
    pixels = np.zeros((8, 8), np.uint8)
    pixels[:, 4:] = 255
    Image.fromarray(pixels).save(tmp_path / "m.png")
    weight, warning = read_mask_file(tmp_path / "m.png", (4, 4), source_size=(8, 8))
    assert warning is None
    assert torch.allclose(weight, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4), atol=0.3)
    assert weight.min() >= 0 and weight.max() <= 1


def test_resize_weight_keeps_a_matching_weight_and_stays_in_range():
    weight = torch.rand(5, 7, generator=torch.Generator().manual_seed(0))
    assert resize_weight(weight, (7, 5)) is weight
    smaller = resize_weight(weight, (3, 2))
    assert smaller.shape == (2, 3) and smaller.min() >= 0 and smaller.max() <= 1


# --- sidecars -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a_mask.png", "a-masklabel.png", "a_mask.jpg", "a-masklabel.webp", "a_mask.PNG"])
def test_find_sidecar(tmp_path, name):
    (tmp_path / "a.jpg").touch()
    assert find_sidecar(tmp_path / "a.jpg") is None
    (tmp_path / name).touch()
    assert find_sidecar(tmp_path / "a.jpg") == tmp_path / name
    assert looks_like_sidecar(tmp_path / name)


def test_find_sidecar_prefers_mask_and_ignores_other_stems(tmp_path):
    for name in ("a.png", "a-masklabel.png", "a_mask.png", "ab_mask.png", "a_mask.txt"):
        (tmp_path / name).touch()
    assert find_sidecar(tmp_path / "a.png") == tmp_path / "a_mask.png"
    assert find_sidecar(tmp_path / "b.png") is None
    assert not looks_like_sidecar(tmp_path / "a.png")
    assert not looks_like_sidecar(tmp_path / "a_mask.txt")
