"""Reading dataset files (training/image_io.py): every format and mode a dataset folder meets,
bad files named in errors, captions in the encodings editors write."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_lora_lab.training import image_io
from comfyui_lora_lab.training.dataset import DatasetSample
from comfyui_lora_lab.training.image_io import (IMAGE_EXTENSIONS, MAX_CAPTION_CHARS, UnreadableFile, image_size,
                                                load_sample_pixels, open_image, probe_image, read_caption)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def quadrants(width=32, height=24, mode="RGB"):
    """Red top-left, green top-right, blue bottom-left, white bottom-right: shows any rotation."""
    pixels = np.full((height, width, 3), 255, np.uint8)
    pixels[: height // 2, : width // 2] = RED
    pixels[: height // 2, width // 2:] = GREEN
    pixels[height // 2:, : width // 2] = BLUE
    return Image.fromarray(pixels).convert(mode)


def corner_colours(rgb: torch.Tensor):
    """The colours a few pixels in from each corner, rounded: (top-left, top-right, bottom-left)."""
    h, w = rgb.shape[:2]
    return [tuple(int(round(v)) for v in rgb[y, x].tolist()) for y, x in ((2, 2), (2, w - 3), (h - 3, 2))]


def orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def rgba_with_hole(path):
    """RGBA whose left column is transparent but keeps its (green) colour."""
    pixels = np.zeros((4, 6, 4), np.uint8)
    pixels[..., 1] = 255
    pixels[..., 3] = 255
    pixels[:, 0, 3] = 0
    Image.fromarray(pixels, "RGBA").save(path)
    return path


# --- formats and modes -------------------------------------------------------------------------------

@pytest.mark.parametrize("ext,params", [(".png", {}), (".bmp", {}), (".tif", {}), (".webp", {"lossless": True}),
                                        (".gif", {})])
def test_lossless_formats_read_exactly(tmp_path, ext, params):
    path = tmp_path / f"q{ext}"
    quadrants().save(path, **params)
    loaded = open_image(path)
    assert loaded.rgb.dtype == torch.float32 and loaded.rgb.shape == (24, 32, 3)
    assert loaded.size == loaded.source_size == (32, 24)
    assert corner_colours(loaded.rgb) == [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert loaded.alpha_weight is None and loaded.warnings == ()


def test_jpeg_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "photo.jpg"
    quadrants().save(path, quality=95, exif=orientation(6))  # displayed rotated 90 degrees clockwise
    loaded = open_image(path)
    assert loaded.size == (24, 32)
    assert image_size(path) == (24, 32)
    assert probe_image(path).size == (24, 32)
    # clockwise: the left column (red over blue) becomes the top row (blue then red)
    top_left, top_right, bottom_left = corner_colours(loaded.rgb)
    assert top_left == (0, 0, 1) and top_right == (1, 0, 0) and bottom_left == (1, 1, 1)


@pytest.mark.parametrize("ext", [".tif", ".jpg"])
def test_cmyk_becomes_rgb(tmp_path, ext):
    path = tmp_path / f"print{ext}"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # no cyan, full magenta and yellow: red
    loaded = open_image(path)
    assert loaded.rgb.shape == (8, 8, 3)
    assert torch.allclose(loaded.rgb[4, 4], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, ext):
    path = tmp_path / f"deep{ext}"
    Image.fromarray(np.array([[0, 1000, 32768, 65535]], np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    loaded = open_image(path)
    expected = torch.tensor([0, 1000, 32768, 65535]) / 65535
    assert torch.allclose(loaded.rgb[0], expected[:, None].expand(4, 3))


def test_big_endian_16_bit_tiff(tmp_path):
    values = np.array([[0, 30000, 65535]], dtype=">u2")
    Image.frombytes("I;16B", (3, 1), values.tobytes()).save(tmp_path / "be.tif")
    loaded = open_image(tmp_path / "be.tif")
    assert torch.allclose(loaded.rgb[0, :, 0], torch.tensor([0, 30000, 65535]) / 65535)


def test_grey_and_la(tmp_path):
    Image.new("L", (3, 2), 51).save(tmp_path / "g.png")
    assert torch.allclose(open_image(tmp_path / "g.png").rgb, torch.full((2, 3, 3), 0.2))
    la = Image.merge("LA", [Image.new("L", (2, 1), 102), Image.fromarray(np.array([[0, 255]], np.uint8))])
    la.save(tmp_path / "la.png")
    loaded = open_image(tmp_path / "la.png")
    assert torch.allclose(loaded.rgb, torch.full((1, 2, 3), 0.4))
    assert torch.equal(loaded.alpha_weight, torch.tensor([[0.0, 1.0]]))


def test_rgba_keeps_the_colour_under_transparent_pixels(tmp_path):
    loaded = open_image(rgba_with_hole(tmp_path / "cut.png"))
    assert torch.equal(loaded.rgb[:, 0], torch.tensor([[0.0, 1.0, 0.0]] * 4))  # not blacked out
    assert torch.equal(loaded.alpha_weight[:, 0], torch.zeros(4))
    assert torch.equal(loaded.alpha_weight[:, 1:], torch.ones(4, 5))


def test_opaque_rgba_has_no_weight(tmp_path):
    Image.new("RGBA", (4, 4), (1, 2, 3, 255)).save(tmp_path / "o.png")
    assert open_image(tmp_path / "o.png").alpha_weight is None
    assert not probe_image(tmp_path / "o.png").has_alpha
    assert probe_image(rgba_with_hole(tmp_path / "t.png")).has_alpha


def test_palette_and_rgb_with_trns(tmp_path):
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([*RED, *GREEN])
    palette.save(tmp_path / "p.png", transparency=0)
    loaded = open_image(tmp_path / "p.png")
    assert torch.equal(loaded.rgb[0], torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.equal(loaded.alpha_weight, torch.tensor([[0.0, 1.0]]))
    Image.fromarray(np.array([[RED, GREEN]], np.uint8)).save(tmp_path / "rgb.png", transparency=GREEN)
    assert torch.equal(open_image(tmp_path / "rgb.png").alpha_weight, torch.tensor([[1.0, 0.0]]))


def test_palette_transparency_survives_exif_rotation(tmp_path):
    palette = Image.fromarray(np.array([[0, 1, 1]], np.uint8), "P")
    palette.putpalette([*RED, *GREEN])
    palette.save(tmp_path / "p.png", transparency=0, exif=orientation(6))
    loaded = open_image(tmp_path / "p.png")
    assert loaded.size == (1, 3)
    assert torch.equal(loaded.alpha_weight, torch.tensor([[0.0], [1.0], [1.0]]))


@pytest.mark.parametrize("ext", [".gif", ".png", ".webp"])
def test_animations_give_the_first_frame_with_a_warning(tmp_path, ext):
    path = tmp_path / f"anim{ext}"
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, GREEN, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True)
    loaded = open_image(path)
    assert torch.allclose(loaded.rgb[1, 1], torch.tensor([1.0, 0.0, 0.0]), atol=0.01)
    assert len(loaded.warnings) == 1 and "anim" in loaded.warnings[0] and "3 frames" in loaded.warnings[0]
    assert probe_image(path).frames == 3


def test_large_images_are_downscaled_with_their_alpha(tmp_path):
    pixels = np.zeros((40, 80, 4), np.uint8)
    pixels[..., 0] = 255
    pixels[:, 40:, 3] = 255  # right half opaque
    Image.fromarray(pixels, "RGBA").save(tmp_path / "big.png")
    loaded = open_image(tmp_path / "big.png", max_side=20)
    assert loaded.size == (20, 10) and loaded.source_size == (80, 40)
    assert loaded.alpha_weight.shape == (10, 20)
    assert torch.allclose(loaded.alpha_weight[:, :9], torch.zeros(10, 9), atol=1e-6)
    assert torch.allclose(loaded.alpha_weight[:, 11:], torch.ones(10, 9), atol=1e-6)
    assert torch.allclose(loaded.rgb[..., 0], torch.ones(10, 20), atol=1e-3)  # LANCZOS stays in [0,1]
    assert loaded.rgb.min() >= 0 and loaded.rgb.max() <= 1
    assert any("80x40 downscaled to 20x10" in w for w in loaded.warnings)
    assert image_size(tmp_path / "big.png", max_side=20) == (20, 10)
    assert probe_image(tmp_path / "big.png", max_side=20).size == (20, 10)


def test_every_listed_extension_is_a_pillow_format():
    registered = Image.registered_extensions()
    assert all(ext in registered for ext in IMAGE_EXTENSIONS)


# --- bad files ---------------------------------------------------------------------------------------

def noise(size=64):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))


def truncated_png(path):
    noise().save(path)
    path.write_bytes(path.read_bytes()[:5000])
    return path


def truncated_jpeg(path):
    noise().save(path, quality=90)
    path.write_bytes(path.read_bytes()[:-2000])
    return path


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: p.write_bytes(b"this is not an image at all"), "not an image"),
    (truncated_png, "truncated"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    for read in (open_image, probe_image):
        with pytest.raises(ValueError, match=reason) as caught:
            read(path)
        assert str(path) in str(caught.value)
        assert isinstance(caught.value, UnreadableFile) and caught.value.path == str(path)


def test_truncated_jpeg_is_caught_by_the_cheap_probe_too(tmp_path):
    path = truncated_jpeg(tmp_path / "cut.jpg")
    for read in (open_image, probe_image):
        with pytest.raises(ValueError, match="truncated"):
            read(path)
    assert image_size(path) == (64, 64)  # the header alone is fine: image_size does not decode


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        open_image(tmp_path / "nope.png")


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(image_io, "MAX_PIXELS", 399)
    for read in (open_image, probe_image, image_size):
        with pytest.raises(ValueError, match="decompression bomb") as caught:
            read(tmp_path / "bomb.png")
        assert "bomb.png" in str(caught.value) and "20x20" in str(caught.value)
    monkeypatch.setattr(image_io, "MAX_PIXELS", 400)
    assert open_image(tmp_path / "bomb.png").size == (20, 20)


def test_pillows_own_bomb_error_becomes_a_named_value_error(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice this
    with pytest.raises(ValueError, match="decompression bomb") as caught:
        open_image(tmp_path / "bomb.png")
    assert "bomb.png" in str(caught.value)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_no_file_is_left_open(tmp_path):
    good = tmp_path / "good.gif"
    frames = [Image.new("RGB", (4, 4), c) for c in (RED, GREEN)]
    frames[0].save(good, save_all=True, append_images=frames[1:])
    bad = truncated_png(tmp_path / "bad.png")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        open_image(good), probe_image(good), image_size(good)
        with pytest.raises(ValueError):
            open_image(bad)
    assert len(os.listdir("/proc/self/fd")) == before


# --- captions ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    "a photo of ohwx, smiling".encode("utf-8"),
    "\ufeffa photo of ohwx, smiling".encode("utf-8"),
    "\ufeffa photo of ohwx, smiling".encode("utf-16-le"),
    "\ufeffa photo of ohwx, smiling".encode("utf-16-be"),
    b"  a photo of ohwx,\r\nsmiling\r\n\r\n",
    b"a photo of ohwx,\rsmiling\n",
    b"a photo\tof  ohwx,\n  smiling",
])
def test_captions_decode_and_join_lines(tmp_path, data):
    (tmp_path / "c.txt").write_bytes(data)
    assert read_caption(tmp_path / "c.txt") == "a photo of ohwx, smiling"


def test_caption_with_non_ascii_text(tmp_path):
    (tmp_path / "c.txt").write_bytes("café, 東京, ü".encode("utf-16"))  # Python writes a BOM
    assert read_caption(tmp_path / "c.txt") == "café, 東京, ü"


@pytest.mark.parametrize("data", [bytes(range(256)), b"\x89PNG\r\n\x1a\n\x00\x00", "café".encode("latin-1"),
                                  "no bom".encode("utf-16-le")])
def test_binary_or_undecodable_captions_are_refused(tmp_path, data):
    (tmp_path / "c.txt").write_bytes(data)
    with pytest.raises(ValueError, match="caption is not text") as caught:
        read_caption(tmp_path / "c.txt")
    assert "c.txt" in str(caught.value)


def test_overlong_captions_are_refused_with_their_length(tmp_path):
    (tmp_path / "c.txt").write_text("x" * MAX_CAPTION_CHARS)
    assert len(read_caption(tmp_path / "c.txt")) == MAX_CAPTION_CHARS
    (tmp_path / "c.txt").write_text("word " * 20_000)
    with pytest.raises(ValueError, match="99999 characters") as caught:
        read_caption(tmp_path / "c.txt")
    assert "c.txt" in str(caught.value)


def test_empty_caption(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbf \r\n")
    assert read_caption(tmp_path / "c.txt") == ""


# --- a sample's pixels ----------------------------------------------------------------------------------

def file_sample(path, **fields):
    return DatasetSample(caption="c", concept="c", path=str(path), **fields)


def test_in_memory_samples_come_back_as_they_are():
    image, mask = torch.rand(4, 6, 3), torch.rand(4, 6)
    got = load_sample_pixels(DatasetSample(caption="c", concept="c", image=image, mask=mask))
    assert got[0] is image and got[1] is mask and got[2] == ()


def test_file_sample_without_a_mask(tmp_path):
    image, weight, notes = load_sample_pixels(file_sample(rgba_with_hole(tmp_path / "t.png")))
    assert image.shape == (4, 6, 3) and weight is None and notes == ()  # alpha is used only when asked


def test_alpha_mask_sample(tmp_path):
    _, weight, notes = load_sample_pixels(file_sample(rgba_with_hole(tmp_path / "t.png"), alpha_mask=True))
    assert torch.equal(weight[:, 0], torch.zeros(4)) and notes == ()
    Image.new("RGB", (4, 4)).save(tmp_path / "o.png")
    _, weight, notes = load_sample_pixels(file_sample(tmp_path / "o.png", alpha_mask=True))
    assert weight is None and "no transparent pixels" in notes[0]


def test_mask_file_wins_over_alpha_and_follows_the_downscale(tmp_path):
    Image.new("RGBA", (40, 20), (9, 9, 9, 0)).save(tmp_path / "a.png")
    Image.new("L", (40, 20), 255).save(tmp_path / "a_mask.png")
    sample = file_sample(tmp_path / "a.png", mask_path=str(tmp_path / "a_mask.png"), alpha_mask=True)
    image, weight, notes = load_sample_pixels(sample, max_side=10)
    assert image.shape == (5, 10, 3) and weight.shape == (5, 10)
    assert torch.allclose(weight, torch.ones(5, 10))
    assert len(notes) == 1 and "downscaled" in notes[0]  # the mask matched the image: no mask warning


def test_a_wrong_size_mask_file_warns(tmp_path):
    Image.new("RGB", (40, 20)).save(tmp_path / "a.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "a_mask.png")
    _, weight, notes = load_sample_pixels(file_sample(tmp_path / "a.png", mask_path=str(tmp_path / "a_mask.png")))
    assert weight.shape == (20, 40)
    assert any("a_mask.png" in n and "8x8" in n and "40x20" in n for n in notes)


def test_a_mask_tensor_on_a_file_sample(tmp_path):
    Image.new("RGB", (8, 4)).save(tmp_path / "a.png")
    mask = torch.zeros(4, 8)
    mask[:, 4:] = 1
    _, weight, notes = load_sample_pixels(file_sample(tmp_path / "a.png", mask=mask), max_side=4)
    assert weight.shape == (2, 4) and notes[-1].endswith("(longest side 4)")
    _, weight, notes = load_sample_pixels(file_sample(tmp_path / "a.png", mask=torch.ones(3, 3)))
    assert weight.shape == (4, 8) and "3x3" in notes[-1]


def test_an_unreadable_mask_file_is_named(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "a_mask.png").write_bytes(b"")
    with pytest.raises(ValueError, match="a_mask.png: the file is empty"):
        load_sample_pixels(file_sample(tmp_path / "a.png", mask_path=str(tmp_path / "a_mask.png")))

