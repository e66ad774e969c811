"""Folder datasets (training/folder_dataset.py): kohya concept folders, captions, masks, and every
kind of bad file skipped with a note or refused with an error naming it."""

import os

import numpy as np
import pytest
from PIL import Image

from comfyui_lora_lab.training import image_io
from comfyui_lora_lab.training.folder_dataset import scan_folder, summarize


def image(path, size=(24, 16), mode="RGB", colour=None, **params):
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None and mode == "L":
        colour = 255  # a mask that keeps everything (an all-black one is refused: nothing to learn)
    Image.new(mode, size, colour).save(path, **params)
    return path


def caption(path, text):
    path.write_text(text, encoding="utf-8")


def transparent_png(path):
    pixels = np.full((16, 24, 4), 255, np.uint8)
    pixels[0, 0, 3] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def truncated(path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:4000])


@pytest.fixture
def kohya(tmp_path):
    """root/ds with concept folders, captions, masks and the odd files real folders contain."""
    ds = tmp_path / "root" / "ds"
    image(ds / "loose.png")                                       # directly in the folder
    image(ds / "10_ohwx dog" / "a.png", size=(40, 30))
    caption(ds / "10_ohwx dog" / "a.txt", "ohwx dog on grass")
    image(ds / "10_ohwx dog" / "a_mask.png", size=(40, 30), mode="L", colour=255)
    exif = Image.Exif()
    exif[0x0112] = 6
    image(ds / "10_ohwx dog" / "deeper" / "b.jpg", size=(40, 30), exif=exif)  # nested, EXIF-rotated
    caption(ds / "10_ohwx dog" / "deeper" / "b.txt", "ohwx dog,\r\nsleeping")
    transparent_png(ds / "10_ohwx dog" / "deeper" / "1_not a concept" / "c.png")
    image(ds / "landscapes" / "d.webp")
    image(ds / "landscapes" / "e.bmp")
    image(ds / "landscapes" / "e-masklabel.png", mode="L")
    image(ds / "x_name" / "f.tif")
    image(ds / "0_broken" / "g.png")
    for junk in (".DS_Store", "notes.json", "orphan.txt"):
        (ds / "landscapes" / junk).write_text("{}")
    image(ds / "landscapes" / "._e.png")  # macOS metadata file with an image extension
    image(ds / ".hidden" / "h.png")
    return tmp_path / "root", ds


def by_name(dataset):
    return {os.path.basename(s.path): s for s in dataset.samples}


def test_kohya_layout(kohya):
    root, ds = kohya
    dataset = scan_folder(root, ds)
    samples = by_name(dataset)
    assert sorted(samples) == ["a.png", "b.jpg", "c.png", "d.webp", "e.bmp", "f.tif", "loose.png"]
    assert [s.path for s in dataset.samples] == sorted(s.path for s in dataset.samples)
    assert dataset.trigger == ""

    a, b, c = samples["a.png"], samples["b.jpg"], samples["c.png"]
    assert (a.concept, a.repeats, a.caption, a.size) == ("ohwx dog", 10, "ohwx dog on grass", (40, 30))
    assert a.mask_path == str(ds / "10_ohwx dog" / "a_mask.png") and not a.alpha_mask
    assert (b.concept, b.repeats, b.caption, b.size) == ("ohwx dog", 10, "ohwx dog, sleeping", (30, 40))
    assert (c.concept, c.repeats, c.caption) == ("ohwx dog", 10, "ohwx dog")  # nested: the concept above
    assert c.alpha_mask and c.mask_path is None
    assert not b.alpha_mask and b.mask_path is None

    assert (samples["d.webp"].concept, samples["d.webp"].repeats) == ("landscapes", 1)
    assert samples["e.bmp"].mask_path == str(ds / "landscapes" / "e-masklabel.png")
    assert (samples["f.tif"].concept, samples["f.tif"].repeats) == ("x_name", 1)
    assert (samples["loose.png"].concept, samples["loose.png"].caption) == ("ds", "ds")

    assert "skipped 0_broken: repeats 0 in folder name" in dataset.notes
    assert "no caption: 10_ohwx dog/deeper/1_not a concept/c.png (using 'ohwx dog')" in dataset.notes
    assert ("no caption for 2 images of 'landscapes' (using 'landscapes'): landscapes/d.webp, landscapes/e.bmp"
            in dataset.notes)
    assert not any("json" in n or "DS_Store" in n or "orphan" in n or "._e" in n for n in dataset.notes)


def test_summary(kohya):
    root, ds = kohya
    text = summarize(scan_folder(root, ds))
    assert "7 image(s) in 4 concept(s): 34 images per epoch" in text
    assert "ohwx dog: 3 image(s) x 10 repeats = 30 per epoch (2 masked)" in text
    assert "landscapes: 2 image(s) x 1 repeats = 2 per epoch (1 masked)" in text
    assert "skipped 0_broken: repeats 0 in folder name" in text


def test_same_concept_with_different_repeats_is_summarized_as_a_range(tmp_path):
    image(tmp_path / "2_cat" / "a.png")
    image(tmp_path / "5_cat" / "b.png")
    text = summarize(scan_folder(tmp_path, tmp_path))
    assert "cat: 2 image(s) x 2-5 repeats = 7 per epoch" in text


def test_a_concept_folder_can_be_scanned_directly(tmp_path):
    image(tmp_path / "3_ohwx" / "a.png")
    dataset = scan_folder(tmp_path, tmp_path / "3_ohwx")
    assert (dataset.samples[0].concept, dataset.samples[0].repeats) == ("ohwx", 3)


def test_zero_repeats_is_an_error_when_asked(kohya):
    root, ds = kohya
    with pytest.raises(ValueError, match="0_broken: repeats 0 in folder name"):
        scan_folder(root, ds, on_bad_file="error")


def test_caption_extension_and_encodings(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    (tmp_path / "a.caption").write_bytes("\ufeffsmiling".encode("utf-16-le"))
    (tmp_path / "b.caption").write_bytes("\ufefflaughing\r\n".encode("utf-8"))
    (tmp_path / "a.txt").write_text("ignored")
    samples = by_name(scan_folder(tmp_path, tmp_path, caption_extension="caption"))
    assert (samples["a.png"].caption, samples["b.png"].caption) == ("smiling", "laughing")


def test_empty_caption_is_kept_and_noted(tmp_path):
    image(tmp_path / "a.png")
    caption(tmp_path / "a.txt", "\n")
    dataset = scan_folder(tmp_path, tmp_path)
    assert dataset.samples[0].caption == ""
    assert "empty caption: a.txt" in dataset.notes


def test_missing_captions_are_summarised_per_concept(tmp_path):
    for i in range(67):
        image(tmp_path / "5_cleo" / f"{i:02d}.png")
    image(tmp_path / "1_anna" / "x.png")
    dataset = scan_folder(tmp_path, tmp_path)
    captions = [n for n in dataset.notes if "caption" in n]
    assert captions == ["no caption: 1_anna/x.png (using 'anna')",
                        "no caption for 67 images of 'cleo' (using 'cleo'): 5_cleo/00.png, 5_cleo/01.png, "
                        "5_cleo/02.png and 64 more"]


# --- masks ------------------------------------------------------------------------------------------

def test_sidecar_masks_are_not_images_and_orphans_are_noted(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "a_mask.png", mode="L")
    image(tmp_path / "lonely_mask.png", mode="L")
    dataset = scan_folder(tmp_path, tmp_path)
    assert [os.path.basename(s.path) for s in dataset.samples] == ["a.png"]
    assert len(dataset.notes) == 2 and "no caption: a.png (using '" in dataset.notes[0]
    assert dataset.notes[1].startswith("skipped lonely_mask.png: named like a mask")  # a_mask.png: not noted


def test_a_wrong_size_mask_is_noted_at_scan(tmp_path):
    image(tmp_path / "a.png", size=(40, 30))
    image(tmp_path / "a_mask.png", size=(20, 20), mode="L")
    dataset = scan_folder(tmp_path, tmp_path)
    assert "mask a_mask.png is 20x20 but its image is 40x30: it will be resized" in dataset.notes


def test_an_opaque_rgba_image_is_not_masked(tmp_path):
    image(tmp_path / "a.png", mode="RGBA", colour=(1, 2, 3, 255))
    assert not scan_folder(tmp_path, tmp_path).samples[0].alpha_mask


def test_a_bad_mask_skips_its_image(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    (tmp_path / "a_mask.png").write_bytes(b"")
    dataset = scan_folder(tmp_path, tmp_path)
    assert [os.path.basename(s.path) for s in dataset.samples] == ["b.png"]
    assert "skipped a.png: a_mask.png: the file is empty" in dataset.notes


# --- bad files -----------------------------------------------------------------------------------------

@pytest.fixture
def bad_files(tmp_path):
    image(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    truncated(tmp_path / "cut.png")
    return tmp_path


def test_bad_files_are_skipped_with_a_note(bad_files):
    dataset = scan_folder(bad_files, bad_files)
    assert [os.path.basename(s.path) for s in dataset.samples] == ["good.png"]
    skipped = {n.split(":")[0]: n for n in dataset.notes if n.startswith("skipped")}
    assert set(skipped) == {"skipped empty.png", "skipped text.jpg", "skipped cut.png"}
    assert "the file is empty" in skipped["skipped empty.png"]
    assert "not an image" in skipped["skipped text.jpg"]
    assert "truncated" in skipped["skipped cut.png"]


@pytest.mark.parametrize("name,reason", [("empty.png", "empty"), ("text.jpg", "not an image"),
                                         ("cut.png", "truncated")])
def test_bad_files_are_errors_when_asked(tmp_path, name, reason):
    image(tmp_path / "good.png")
    {"empty.png": lambda p: p.write_bytes(b""), "text.jpg": lambda p: p.write_text("no"),
     "cut.png": truncated}[name](tmp_path / name)
    with pytest.raises(ValueError, match=reason) as caught:
        scan_folder(tmp_path, tmp_path, on_bad_file="error")
    assert f"cannot use {name}:" in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    image(tmp_path / "small.png", size=(16, 16))
    image(tmp_path / "huge.png", size=(30, 30))
    monkeypatch.setattr(image_io, "MAX_PIXELS", 500)
    dataset = scan_folder(tmp_path, tmp_path)
    assert [os.path.basename(s.path) for s in dataset.samples] == ["small.png"]
    assert any(n.startswith("skipped huge.png: 30x30 is more than 500 pixels") for n in dataset.notes)


def test_a_100k_character_caption_is_skipped_not_a_crash(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    caption(tmp_path / "a.txt", "x" * 100_000)
    dataset = scan_folder(tmp_path, tmp_path)
    assert [os.path.basename(s.path) for s in dataset.samples] == ["b.png"]
    assert any(n.startswith("skipped a.png: a.txt: caption is 100000 characters long") for n in dataset.notes)


def test_a_binary_caption_is_an_error_when_asked(tmp_path):
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="a.txt: caption is not text"):
        scan_folder(tmp_path, tmp_path, on_bad_file="error")


def test_duplicate_stems_keep_the_first(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "a.jpg")
    image(tmp_path / "sub" / "a.webp")  # another folder: not a duplicate
    dataset = scan_folder(tmp_path, tmp_path)
    assert sorted(os.path.relpath(s.path, tmp_path) for s in dataset.samples) == ["a.jpg", "sub/a.webp"]
    assert "skipped a.png: another image has the same name (a.jpg)" in dataset.notes
    with pytest.raises(ValueError, match="a.png: another image has the same name"):
        scan_folder(tmp_path, tmp_path, on_bad_file="error")


def test_nothing_usable_is_an_error_listing_the_skips(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="no images found in") as caught:
        scan_folder(tmp_path, tmp_path)
    assert "skipped empty.png: the file is empty" in str(caught.value)
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ValueError, match="no images found in .*empty_folder"):
        scan_folder(tmp_path, tmp_path / "empty_folder")


def test_on_bad_file_is_checked(tmp_path):
    image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="on_bad_file must be one of"):
        scan_folder(tmp_path, tmp_path, on_bad_file="ignore")


# --- the allowed folder -----------------------------------------------------------------------------------

def test_the_folder_must_be_inside_root(tmp_path):
    image(tmp_path / "outside" / "a.png")
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError, match="not inside the allowed folder") as caught:
        scan_folder(tmp_path / "root", tmp_path / "outside")
    assert "outside" in str(caught.value) and str(tmp_path / "root") in str(caught.value)
    with pytest.raises(ValueError, match="not inside the allowed folder"):
        scan_folder(tmp_path / "root", "../outside")


def test_a_relative_folder_is_taken_from_root(tmp_path):
    image(tmp_path / "ds" / "a.png")
    assert len(scan_folder(tmp_path, "ds").samples) == 1
    with pytest.raises(ValueError, match="does not exist"):
        scan_folder(tmp_path, "nope")


@pytest.fixture
def escape(tmp_path):
    """root/ds with a symlinked image, caption and folder pointing outside root, and one inside."""
    secret = tmp_path / "secret"
    image(secret / "private.png")
    (secret / "passwd").write_text("root:x:0:0")
    ds = tmp_path / "root" / "ds"
    image(ds / "a.png")
    image(tmp_path / "root" / "shared" / "s.png")
    try:
        (ds / "b.png").symlink_to(secret / "private.png")
        (ds / "a.txt").symlink_to(secret / "passwd")
        (ds / "3_leak").symlink_to(secret, target_is_directory=True)
        (ds / "2_shared").symlink_to(tmp_path / "root" / "shared", target_is_directory=True)
    except OSError:
        pytest.skip("this file system cannot make symlinks")
    return tmp_path / "root", ds


def test_symlinks_out_of_root_are_skipped(escape):
    root, ds = escape
    dataset = scan_folder(root, ds)
    samples = by_name(dataset)
    assert sorted(samples) == ["a.png", "s.png"]  # a symlinked folder inside root is fine
    assert (samples["s.png"].concept, samples["s.png"].repeats) == ("shared", 2)
    assert samples["a.png"].caption == "ds"  # the caption that leads out was not read
    for name in ("b.png", "a.txt", "3_leak"):
        assert f"skipped {name}: symlink leads outside the allowed folder" in dataset.notes
    assert not any("root:x" in s.caption for s in dataset.samples)


def test_symlinks_out_of_root_are_errors_when_asked(escape):
    root, ds = escape
    with pytest.raises(ValueError, match="symlink leads outside the allowed folder"):
        scan_folder(root, ds, on_bad_file="error")


def test_a_symlink_loop_ends(tmp_path):
    image(tmp_path / "1_a" / "x.png")
    try:
        (tmp_path / "1_a" / "loop").symlink_to(tmp_path / "1_a", target_is_directory=True)
    except OSError:
        pytest.skip("this file system cannot make symlinks")
    dataset = scan_folder(tmp_path, tmp_path)
    assert len(dataset.samples) == 1
    assert "skipped 1_a/loop: symlink loop" in dataset.notes


# --- unusable images (issue 13) -------------------------------------------------------------------

def test_a_fully_transparent_image_or_black_mask_is_refused_like_any_unusable_file(tmp_path):
    """Dataset From Images refuses an empty mask; a folder dataset follows the same rule: nothing
    to learn is not trained on silently (it ran at loss 0.0000 before)."""
    image(tmp_path / "ok.png")
    Image.fromarray(np.zeros((32, 32, 4), np.uint8), "RGBA").save(tmp_path / "clear.png")
    image(tmp_path / "masked.png")
    image(tmp_path / "masked_mask.png", mode="L", colour=0)
    dataset = scan_folder(tmp_path, tmp_path)
    assert [os.path.basename(s.path) for s in dataset.samples] == ["ok.png"]
    assert "skipped clear.png: fully transparent: its loss weight is zero everywhere (nothing to learn)" in dataset.notes
    assert "skipped masked.png: its mask masked_mask.png is black everywhere (nothing to learn)" in dataset.notes
    with pytest.raises(ValueError, match="cannot use clear.png: fully transparent"):
        scan_folder(tmp_path, tmp_path, on_bad_file="error")


def test_an_image_below_the_minimum_size_is_refused(tmp_path):
    """A 1x1 image was upscaled to the bucket without a word."""
    image(tmp_path / "ok.png", size=(16, 16))
    image(tmp_path / "dot.png", size=(1, 1))
    image(tmp_path / "strip.png", size=(400, 8))
    dataset = scan_folder(tmp_path, tmp_path)
    assert [os.path.basename(s.path) for s in dataset.samples] == ["ok.png"]
    assert "skipped dot.png: 1x1 pixels is too small to train on (at least 16 on each side)" in dataset.notes
    assert any(n.startswith("skipped strip.png: 400x8 pixels") for n in dataset.notes)
    with pytest.raises(ValueError, match="cannot use dot.png: 1x1 pixels is too small"):
        scan_folder(tmp_path, tmp_path, on_bad_file="error")
