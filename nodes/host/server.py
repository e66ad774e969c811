"""The running ComfyUI server: progress on a node, `loralab.progress` events, the run-history
routes the canvas chart re-fetches, and images shown on a node."""

from __future__ import annotations

from pathlib import Path

import torch


class Progress:
    """ComfyUI's progress bar (with an optional preview image) and progress text on a node."""

    def __init__(self, total: int, node_id: str | None):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.node_id = node_id

    def update(self, step: int, preview=None) -> None:
        self.bar.update_absolute(step, preview=("JPEG", preview, 512) if preview is not None else None)

    def text(self, text: str) -> None:
        from server import PromptServer

        if self.node_id is not None and getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)


_routes_registered = False


def register_routes() -> None:
    """GET /loralab/runs (the recent runs) and /loralab/runs/{node_id} (the latest run of a node,
    every step): the canvas chart re-fetches these after a reload or in a second tab."""
    global _routes_registered
    if _routes_registered:
        return
    from aiohttp import web
    from server import PromptServer

    from .. import run_log

    if getattr(PromptServer, "instance", None) is None:
        return
    routes = PromptServer.instance.routes

    @routes.get("/loralab/runs")
    async def runs(request):
        return web.json_response(run_log.all_runs())

    @routes.get("/loralab/runs/{node_id}")
    async def run(request):
        log = run_log.latest(request.match_info["node_id"])
        return web.json_response(log.as_dict() if log else None)

    _routes_registered = True


def emit(payload: dict) -> None:
    """A `loralab.progress` event to every connected page (a second tab follows the run too)."""
    from server import PromptServer

    from ..run_log import EVENT

    if getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.send_sync(EVENT, payload, None)


def save_temp_images(images: torch.Tensor, prefix: str) -> list[dict]:
    """PNG files in ComfyUI's temp folder, as the {filename, subfolder, type} entries the
    frontend shows on a node (they stay visible after the run)."""
    import numpy as np
    from PIL import Image

    import folder_paths

    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_temp_directory(),
                                                                           images.shape[2], images.shape[1])
    entries = []
    for image in images:
        filename = f"{name}_{counter:05}_.png"
        Image.fromarray((image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(Path(folder) / filename)
        entries.append({"filename": filename, "subfolder": subfolder, "type": "temp"})
        counter += 1
    return entries
