"""ComfyUI node classes (V3 schema). Thin: they translate inputs into calls to training/ and
masking/ and report progress; ComfyUI itself is reached only through `host`."""

from comfy_api.latest import ComfyExtension, io

from . import host
from .dataset_from_images import DatasetFromImages
from .dataset_nodes import BalanceConcepts, CaptionTemplate, CompositePairs, LoadDataset, MergeDatasets
from .demo_model import DemoModel
from .loss_chart import LossChart
from .mask_nodes import DatasetMasks, RemoveBackground
from .train import Train
from .train_config import Network, Objective, Optimizer, Samples, Save

NODES: list[type[io.ComfyNode]] = [DemoModel, LoadDataset, DatasetFromImages, CaptionTemplate, BalanceConcepts,
                                   MergeDatasets, CompositePairs, RemoveBackground, DatasetMasks, Train, Network,
                                   Optimizer, Objective, Save, Samples, LossChart]


class LoRALabExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        for problem in host.check_host():
            host.log.warning("LoRA Lab: %s; some nodes may fail on this ComfyUI version", problem)
        host.register_routes()
        return NODES
