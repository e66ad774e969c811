"""LoRA Lab: train LoRA and LyCORIS adapters inside ComfyUI graphs.

ComfyUI imports this file at start-up, so it stays cheap: the node modules (and through them
ComfyUI's node API) are imported only when ComfyUI asks for the node list, and heavy libraries
(lycoris, bitsandbytes, rembg) only when a node runs.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import LoRALabExtension

    return LoRALabExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
