"""The pack's own socket types (namespaced so they never meet another pack's)."""

from comfy_api.latest import io

Dataset = io.Custom("LORALAB_DATASET")
NetworkConfig = io.Custom("LORALAB_NETWORK")
OptimizerConfig = io.Custom("LORALAB_OPTIMIZER")
ObjectiveConfig = io.Custom("LORALAB_OBJECTIVE")
SaveConfig = io.Custom("LORALAB_SAVE")
SampleConfig = io.Custom("LORALAB_SAMPLES")
LossHistory = io.Custom("LORALAB_LOSS_HISTORY")
