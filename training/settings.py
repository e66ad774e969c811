"""What the small config nodes hand to the train node: plain frozen values with the defaults a
user gets when a config node is not connected."""

from __future__ import annotations

from dataclasses import dataclass, field

from .network import NetworkConfig
from .objective import FlowTimesteps, SnrWeighting

TARGET_PRESETS = ("attention", "attention+mlp", "all")
# Where the frozen weights live while training (ComfyUI's model management loads them):
# auto: fully loaded when they fit beside the training memory, partially otherwise (weights of
# the rest streamed per layer, as ComfyUI samples); full: always fully loaded; offload: partially
# loaded on purpose, as ComfyUI's built-in trainer's `offloading` does (least VRAM, slower).
MEMORY_MODES = ("auto", "full", "offload")


@dataclass(frozen=True)
class NetworkSettings:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    preset: str = "attention+mlp"
    continue_from: str | None = None  # a file in ComfyUI's loras folders

    def __post_init__(self):
        self.network.validate()
        if self.preset not in TARGET_PRESETS:
            raise ValueError(f"target preset must be one of {', '.join(TARGET_PRESETS)}, not {self.preset!r}")


def network_notes(settings: NetworkSettings, family: str | None = None, has_convolutions: bool = True) -> list[str]:
    """Network settings that cannot take effect, to say so rather than train without them.
    `family`, when known: the model family's name, and whether its blocks hold convolutions."""
    network = settings.network
    if not network.conv_rank:
        return []
    if family is not None and not has_convolutions:
        return [f"conv_rank {network.conv_rank} has no effect: {family}'s blocks have no convolutions"]
    if settings.preset != "all":
        return [f"conv_rank {network.conv_rank} has no effect: the {settings.preset!r} preset adapts no "
                f"convolutions (choose target_preset 'all' to train them)"]
    return []


@dataclass(frozen=True)
class OptimizerSettings:
    optimizer: str = "AdamW"
    optimizer_args: str = ""
    scheduler: str = "constant"
    warmup_steps: int = 0
    num_cycles: int = 1
    batch_size: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    scale_weight_norms: float = 0.0
    gradient_checkpointing: bool = True
    text_encoder_lr: float = 0.0  # 0: the text encoder stays frozen (its encodings are cached)
    memory_mode: str = "auto"  # one of MEMORY_MODES
    keep_activations_blocks: int = 0  # with checkpointing: the first N blocks keep their activations

    def __post_init__(self):
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, not {self.memory_mode!r}")
        if self.keep_activations_blocks < 0:
            raise ValueError(f"keep_activations_blocks must be >= 0, not {self.keep_activations_blocks}")


@dataclass(frozen=True)
class ObjectiveSettings:
    loss: str = "mse"
    huber_delta: float = 1.0
    reduction: str = "normalized"
    unmasked_weight: float = 0.0
    snr: SnrWeighting = field(default_factory=SnrWeighting)
    noise_offset: float = 0.0
    flow_timesteps: FlowTimesteps = field(default_factory=FlowTimesteps)
    training_guidance: float = 1.0  # Flux-dev; ignored by models without a guidance embedding


@dataclass(frozen=True)
class SaveSettings:
    every_n_steps: int = 0  # 0: not by steps
    every_n_epochs: int = 0  # 0: not by epochs
    keep_last: int = 0  # 0: keep every periodic save
    precision: str = "bf16"
    subfolder: str = "loralab"
    overwrite: bool = False
    save_state: bool = True  # a .trainstate beside each periodic and interrupted save, for resume
    resume_from: str | None = None  # a .trainstate file in the loras folders

    def due(self, step: int, epoch_done: bool, epoch: int) -> bool:
        """A periodic save after `step`: on the step cadence, or when an epoch just ended."""
        by_steps = self.every_n_steps > 0 and step % self.every_n_steps == 0
        by_epochs = self.every_n_epochs > 0 and epoch_done and (epoch + 1) % self.every_n_epochs == 0
        return by_steps or by_epochs


@dataclass(frozen=True)
class SampleSettings:
    """Sample images taken during training with the adapter as it is at that step."""

    prompts: tuple[str, ...] = ("{trigger}",)
    negative: str = ""
    sampler: str = "euler"
    scheduler: str = "simple"
    steps: int = 20
    cfg: float = 1.0
    guidance: float = 3.5  # Flux sampling guidance, separate from the training guidance
    seed: int = 42
    width: int = 512
    height: int = 512
    every_n_steps: int = 0  # 0: with each save
    at_start: bool = True  # a sample before training, to compare against

    def __post_init__(self):
        if not self.prompts:
            raise ValueError("prompts: give at least one sample prompt (one per line)")
        if self.width % 16 or self.height % 16:
            raise ValueError(f"sample size {self.width}x{self.height} must be a multiple of 16")

    def resolved_prompts(self, trigger: str) -> list[str]:
        return [p.replace("{trigger}", trigger).strip() for p in self.prompts]

    def due(self, step: int, saved_now: bool, final: bool = False) -> bool:
        """Samples after `step`: on the step cadence, else with each save; and always after the
        final step, whose checkpoint is compared with the others."""
        return final or (step % self.every_n_steps == 0 if self.every_n_steps > 0 else saved_now)
