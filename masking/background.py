"""Background removal through rembg's own sessions, offline.

rembg (pinned to 2.0.67–2.0.69) downloads a model's weights the first time a session is made and
looks for them at `$U2NET_HOME/<name>.onnx` (else `$XDG_DATA_HOME/.u2net`, else `~/.u2net`); later
releases also read `$REMBG_HOME/models/<name>/<name>.onnx`. Offline, that download fails after a
DNS error or a 30 s timeout, and a file whose checksum differs from rembg's (another release of the
weights) is downloaded again. So the session is built from the file we found instead: rembg's own
session class, with its `download_models` answering that file's path. Everything else — the
model-specific resize and normalisation, the output scaling, the resize back — is rembg's code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .ops import fill_background
from .rembg_loader import load_rembg

# rembg session names offered; all are in rembg 2.0.69's `rembg.sessions.sessions_names`.
MODELS = {
    "u2netp": "U2-Net small (4.6 MB): fast, general objects",
    "u2net": "U2-Net: general objects",
    "isnet-general-use": "IS-Net: general objects, finer edges",
    "isnet-anime": "IS-Net for anime and illustrated characters",
    "silueta": "U2-Net, pruned: general objects, smaller download",
    "birefnet-general": "BiRefNet: highest quality, slow and large",
    "birefnet-general-lite": "BiRefNet lite: general objects, lighter than BiRefNet",
}
MIN_SIDE = 8  # smaller images carry no subject worth segmenting
_KEEP_SESSIONS = 2  # sessions hold the model (up to ~1 GB): keep only the recently used ones
_sessions: dict[tuple, object] = {}

# What a cut-out shows where the mask is 0 (blended by the soft mask); None keeps the original.
CUTOUT_BACKGROUNDS = {
    "transparent-as-black": (0.0, 0.0, 0.0),  # what rembg's RGBA cut-outs turn into without alpha
    "white": (1.0, 1.0, 1.0),
    "grey": (0.5, 0.5, 0.5),
    "original": None,
}


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown background removal model {model!r}; choose one of {list(MODELS)}")


def weight_homes(search_dirs) -> list[Path]:
    """Folders searched for weights, in order: the given ones (ComfyUI's models/rembg), then
    where rembg itself keeps them."""
    xdg = os.environ.get("XDG_DATA_HOME")
    homes = [*search_dirs, os.environ.get("U2NET_HOME"), os.environ.get("REMBG_HOME"),
             xdg and Path(xdg) / ".u2net", Path.home() / ".u2net"]
    return [Path(home).expanduser() for home in homes if home]


def find_weights(model: str, search_dirs) -> Path | None:
    """The first `<home>/<model>.onnx` or `<home>/models/<model>/<model>.onnx` that exists."""
    _check_model(model)
    name = f"{model}.onnx"
    for home in weight_homes(search_dirs):
        for candidate in (home / name, home / "models" / model / name):
            if candidate.is_file():
                return candidate
    return None


def _missing_weights(model: str, search_dirs) -> FileNotFoundError:
    homes = weight_homes(search_dirs)
    return FileNotFoundError(
        f"Background removal model '{model}' not found: put {model}.onnx into {homes[0]} "
        f"(searched: {', '.join(str(home) for home in homes)}). When this machine is online, "
        f"rembg can download it itself: python -c \"from rembg import new_session; "
        f"new_session('{model}')\" saves it into ~/.u2net (or $U2NET_HOME), which is searched too.")


def _session_options(onnxruntime):
    # As rembg's new_session: honour OMP_NUM_THREADS, else let onnxruntime use every core.
    options = onnxruntime.SessionOptions()
    if "OMP_NUM_THREADS" in os.environ:
        options.inter_op_num_threads = options.intra_op_num_threads = int(os.environ["OMP_NUM_THREADS"])
    return options


def _build_session(rembg, model: str, path: Path):
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import (Fail, InvalidArgument, InvalidGraph,
                                                             InvalidProtobuf)

    session_class = rembg.sessions.sessions[model]
    offline = type(session_class.__name__, (session_class,),
                   {"download_models": classmethod(lambda cls, *args, **kwargs: str(path))})
    try:
        return offline(model, _session_options(onnxruntime))
    except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf) as error:
        raise ValueError(f"{path} is not a usable ONNX model for '{model}' ({error}); replace it "
                         f"with a fresh copy of {model}.onnx") from None


def open_session(model: str, search_dirs=()):
    """A rembg session for `model` from weights found by find_weights; never downloads.

    Raises MissingDependency (with the pip command) without onnxruntime, FileNotFoundError naming
    the file and folder when there are no weights, ValueError naming the file when it is not a
    loadable ONNX model. Sessions are reused while the file is unchanged.
    """
    _check_model(model)
    rembg = load_rembg()
    path = find_weights(model, search_dirs)
    if path is None:
        raise _missing_weights(model, search_dirs)
    key = (model, str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _sessions:
        session = _build_session(rembg, model, path)
        while len(_sessions) >= _KEEP_SESSIONS:
            _sessions.pop(next(iter(_sessions)))
        _sessions[key] = session
    return _sessions[key]


def _rgb_bytes(image) -> np.ndarray:
    image = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"background removal needs an (H,W,3) or (H,W,4) image, got {tuple(image.shape)}")
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image too small for background removal ({width}x{height}); "
                         f"at least {MIN_SIDE}x{MIN_SIDE}")
    rgb = image[..., :3].clamp(0, 1).mul(255).round().to(torch.uint8)  # alpha is dropped
    return np.ascontiguousarray(rgb.numpy())


def remove_background(image, session) -> torch.Tensor:
    """The subject mask (H,W) float32 in [0,1], 1 = subject, of an (H,W,3) or (H,W,4) image in
    [0,1], through rembg's `remove` with the given session (never rembg's default model)."""
    rgb = _rgb_bytes(image)
    if (rgb == rgb[0, 0]).all():
        # A flat image has no subject. rembg rescales each prediction to span [0,1], which turns
        # a model's near-constant answer into a random mask, or divides by zero.
        return torch.zeros(rgb.shape[:2])
    rembg = load_rembg()
    mask = rembg.remove(Image.fromarray(rgb), session=session, only_mask=True, post_process_mask=False)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)


def cut_out(image, mask, background: str) -> torch.Tensor:
    """The (H,W,3) image with the area outside the subject replaced by a CUTOUT_BACKGROUNDS
    choice, blended by the soft mask."""
    if background not in CUTOUT_BACKGROUNDS:
        raise ValueError(f"cut-out background must be one of {list(CUTOUT_BACKGROUNDS)}, not {background!r}")
    colour = CUTOUT_BACKGROUNDS[background]
    if colour is None:
        return fill_background(image, mask, "original")
    return fill_background(image, mask, "colour", colour)
