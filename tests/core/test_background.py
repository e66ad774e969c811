"""Background removal through rembg's real sessions: tiny planted ONNX models for every offered
session, rembg's own u2netp weights for quality, and the failures a user meets (no weights, a
broken file, a tiny image, no onnxruntime).

The first test to run imports rembg, which compiles numba kernels once (~60 s on two cores; cached
under ~/.cache/comfyui-lora-lab/numba afterwards)."""

import os
from pathlib import Path

import numpy as np
import pooch
import pytest
import torch
from PIL import Image

from comfyui_lora_lab.masking import background
from comfyui_lora_lab.masking.background import MODELS, cut_out, find_weights, open_session, remove_background
from comfyui_lora_lab.masking.ops import coverage_warning
from comfyui_lora_lab.masking.rembg_loader import load_rembg
from labtest import PACK_ROOT
from labtest.blocking import run_child
from labtest.onnx_models import REMBG_INPUT_SIZES, DownloadFailed, real_u2netp, write_tiny_rembg_model

SAMPLE_SUBJECT = PACK_ROOT / "example_workflows" / "lora_lab_sample_subject.png"


@pytest.fixture(scope="module")
def rembg():
    return load_rembg()  # before any test moves HOME: the numba cache stays where it persists


@pytest.fixture(autouse=True)
def no_downloads(rembg, monkeypatch, tmp_path):
    """No weights anywhere but where a test plants them, and any download attempt fails loudly."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("U2NET_HOME", "REMBG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"rembg tried to download {args[:1]}")
    monkeypatch.setattr(pooch, "retrieve", refuse)


@pytest.fixture
def rembg_dir(tmp_path):
    return tmp_path / "ComfyUI" / "models" / "rembg"


def plant(folder, model):
    return write_tiny_rembg_model(folder / f"{model}.onnx", REMBG_INPUT_SIZES[model])


def figure(height=96, width=128, subject=0.9, ground=0.1):
    """A bright head-and-body figure on a dark ground, (H,W,3), and where it is drawn (H,W)."""
    y, x = np.mgrid[0:height, 0:width]
    head = (y - height * 0.3) ** 2 + (x - width * 0.5) ** 2 <= (height * 0.15) ** 2
    body = (abs(x - width * 0.5) <= width * 0.12) & (y >= height * 0.45) & (y <= height * 0.9)
    drawn = head | body
    image = np.where(drawn[..., None], subject, ground).repeat(3, axis=2).astype(np.float32)
    return torch.from_numpy(image), torch.from_numpy(drawn)


def iou(mask, drawn):
    found = mask >= 0.5
    return float((found & drawn).sum() / (found | drawn).sum())


def test_models_offered_are_rembg_sessions(rembg):
    assert set(MODELS) <= set(rembg.sessions.sessions_names)
    assert set(REMBG_INPUT_SIZES) == set(MODELS)


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_runs_rembgs_own_processing_offline(model, rembg, rembg_dir):
    plant(rembg_dir, model)
    session = open_session(model, [rembg_dir])
    assert isinstance(session, rembg.sessions.sessions[model])  # rembg's class, its predict
    image, drawn = figure()
    mask = remove_background(image, session)
    assert mask.shape == (96, 128) and mask.dtype == torch.float32
    assert mask.min() >= 0 and mask.max() <= 1
    assert float(mask[drawn].mean()) > float(mask[~drawn].mean()) + 0.5
    assert iou(mask, drawn) > 0.8


def test_find_weights_searches_the_given_folders_then_rembgs_homes(tmp_path, monkeypatch, rembg_dir):
    assert find_weights("u2netp", [rembg_dir]) is None
    home_file = plant(tmp_path / "home" / ".u2net", "u2netp")
    assert find_weights("u2netp", [rembg_dir]) == home_file
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    xdg_file = plant(tmp_path / "xdg" / ".u2net", "u2netp")
    assert find_weights("u2netp", [rembg_dir]) == xdg_file
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg_home"))
    nested = plant(tmp_path / "rembg_home" / "models" / "u2netp", "u2netp")  # newer rembg layout
    assert find_weights("u2netp", [rembg_dir]) == nested
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net_home"))
    flat = plant(tmp_path / "u2net_home", "u2netp")
    assert find_weights("u2netp", [rembg_dir]) == flat
    comfy = plant(rembg_dir, "u2netp")
    assert find_weights("u2netp", [tmp_path / "empty", rembg_dir]) == comfy
    with pytest.raises(ValueError, match="unknown background removal model"):
        find_weights("u2net-xl", [rembg_dir])


def test_sessions_are_reused_until_the_file_changes(rembg_dir):
    path = plant(rembg_dir, "u2netp")
    first = open_session("u2netp", [rembg_dir])
    assert open_session("u2netp", [rembg_dir]) is first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert open_session("u2netp", [rembg_dir]) is not first
    assert len(background._sessions) <= 2


def test_missing_weights_name_the_file_and_the_folder(rembg_dir):
    with pytest.raises(FileNotFoundError) as error:
        open_session("isnet-anime", [rembg_dir])
    message = str(error.value)
    assert f"put isnet-anime.onnx into {rembg_dir}" in message
    assert "online" in message and "new_session('isnet-anime')" in message


@pytest.mark.parametrize("content", [os.urandom(2048), b""], ids=["random-bytes", "empty"])
def test_a_broken_model_file_is_named(rembg_dir, content):
    rembg_dir.mkdir(parents=True)
    (rembg_dir / "u2netp.onnx").write_bytes(content)
    with pytest.raises(ValueError, match="not a usable ONNX model") as error:
        open_session("u2netp", [rembg_dir])
    assert str(rembg_dir / "u2netp.onnx") in str(error.value)


def test_unknown_model_is_refused(rembg_dir):
    with pytest.raises(ValueError, match="birefnet-general-lite"):
        open_session("modnet", [rembg_dir])


@pytest.fixture
def tiny_u2netp(rembg_dir):
    plant(rembg_dir, "u2netp")
    return open_session("u2netp", [rembg_dir])


@pytest.mark.parametrize("height,width", [(1, 1), (7, 64), (64, 7)])
def test_too_small_images_are_refused_with_their_size(tiny_u2netp, height, width):
    with pytest.raises(ValueError, match=f"image too small for background removal \\({width}x{height}\\)"):
        remove_background(torch.rand(height, width, 3), tiny_u2netp)
    assert remove_background(figure(8, 8)[0], tiny_u2netp).shape == (8, 8)


def test_a_large_image_gets_a_mask_of_its_own_size(tiny_u2netp):
    image, drawn = figure(1536, 2048)
    mask = remove_background(image, tiny_u2netp)
    assert mask.shape == (1536, 2048)
    assert iou(mask, drawn) > 0.9


def test_alpha_is_dropped(tiny_u2netp):
    image, _ = figure()
    rgba = torch.cat([image, torch.rand(96, 128, 1)], dim=-1)
    assert torch.equal(remove_background(rgba, tiny_u2netp), remove_background(image, tiny_u2netp))
    with pytest.raises(ValueError, match="H,W,3"):
        remove_background(image[..., 0], tiny_u2netp)


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_an_image_without_a_subject_gives_a_nearly_empty_mask(tiny_u2netp, level):
    mask = remove_background(torch.full((64, 80, 3), level), tiny_u2netp)
    assert mask.shape == (64, 80) and not mask.isnan().any()
    assert "nearly empty" in coverage_warning(mask, "blank.png")


def test_cut_out_backgrounds():
    image = torch.full((2, 2, 3), 0.8)
    mask = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    assert torch.equal(cut_out(image, mask, "original"), image)
    assert torch.allclose(cut_out(image, mask, "transparent-as-black")[..., 0], torch.tensor([[0.8, 0.0], [0.4, 0.0]]))
    assert torch.allclose(cut_out(image, mask, "white")[..., 0], torch.tensor([[0.8, 1.0], [0.9, 1.0]]))
    assert torch.allclose(cut_out(image, mask, "grey")[..., 0], torch.tensor([[0.8, 0.5], [0.65, 0.5]]))
    with pytest.raises(ValueError, match="white"):
        cut_out(image, mask, "checkerboard")


def test_without_onnxruntime_opening_a_session_names_the_pip_command(tmp_path):
    out = run_child("from comfyui_lora_lab.masking.background import open_session\n"
                    "from comfyui_lora_lab.training.optional_deps import MissingDependency\n"
                    "try:\n    open_session('u2netp', [])\nexcept MissingDependency as e:\n    print('ERROR', e)\n",
                    ["onnxruntime"], tmp_path)
    assert "ERROR Background removal needs" in out and "onnxruntime" in out
    assert "pip install onnxruntime" in out


@pytest.fixture(scope="module")
def real_u2netp_dir():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    try:
        return real_u2netp(Path(cache) / "comfyui-lora-lab" / "test-weights").parent
    except DownloadFailed as error:
        pytest.skip(f"real u2netp weights unavailable (offline?): {error}")


def sample_on(ground):
    """The pack's sample figure composited on a plain ground, and where the figure is."""
    rgba = np.asarray(Image.open(SAMPLE_SUBJECT).convert("RGBA"), dtype=np.float32) / 255
    alpha = rgba[..., 3:]
    image = rgba[..., :3] * alpha + ground * (1 - alpha)
    return torch.from_numpy(image), torch.from_numpy(alpha[..., 0] >= 0.5)


@pytest.mark.slow
def test_real_u2netp_finds_the_figure_and_nothing_on_a_blank_ground(real_u2netp_dir):
    session = open_session("u2netp", [real_u2netp_dir])
    image, drawn = sample_on(0.94)
    mask = remove_background(image, session)
    assert mask.shape == drawn.shape
    assert iou(mask, drawn) >= 0.8
    assert coverage_warning(mask, "sample") is None
    blank = torch.linspace(0.75, 0.95, 256)[:, None, None].expand(256, 256, 3)  # a plain gradient
    assert "nearly empty" in coverage_warning(remove_background(blank, session), "blank")
