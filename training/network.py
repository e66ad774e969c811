"""Adapter networks built with lycoris-lora and attached in bypass mode through forward hooks.

The frozen layers are never modified: each hook adds its adapter's output to the layer's output,
and removing the hooks restores the layers exactly. This keeps a shared base model (ComfyUI
clones share one torch module) untouched, and avoids building a full-size ΔW every step.
Only algorithms whose bypass form is a pure addition are offered here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .optional_deps import import_optional

# name -> lycoris module class name; each one's bypass form is the base output plus a difference.
# Diag-OFT keeps lycoris' defaults of no constraint and no rescale: the only form ComfyUI's
# stock loader applies correctly.
ALGORITHMS = {"LoRA": "LoConModule", "LoCon": "LoConModule", "LoHa": "LohaModule", "LoKr": "LokrModule",
              "GLoRA": "GLoRAModule", "Diag-OFT": "DiagOFTModule", "DoRA": "LoConModule"}
# DoRA's magnitude is kept per input column (wd_on_output=False): the form ComfyUI's loader applies.
MODULE_OPTIONS = {"DoRA": {"weight_decompose": True, "wd_on_out": False}}
# ss_network_module / ss_network_args that kohya-compatible tools read from the metadata.
NETWORK_MODULE = {name: "lycoris.kohya" for name in ALGORITHMS} | {"LoRA": "networks.lora"}
LYCORIS_ALGO = {"LoCon": "locon", "LoHa": "loha", "LoKr": "lokr", "GLoRA": "glora", "Diag-OFT": "diag-oft",
                "DoRA": "locon"}
EXTRA_NETWORK_ARGS = {"DoRA": {"dora_wd": "True", "wd_on_output": "False"}}


@dataclass(frozen=True)
class NetworkConfig:
    algorithm: str = "LoRA"
    rank: int = 16
    alpha: float = 16.0
    conv_rank: int = 0  # 0: convolutions with a kernel larger than 1x1 are not adapted
    conv_alpha: float = 1.0
    dropout: float = 0.0

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, not {self.rank}")
        if self.algorithm == "LoRA" and self.conv_rank:
            raise ValueError("LoRA adapts linear (and 1x1) layers only: set conv_rank to 0, or choose LoCon")
        if self.conv_rank < 0 or self.alpha <= 0 or self.conv_alpha <= 0:
            raise ValueError("conv_rank must be >= 0 and alpha, conv_alpha > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")


def is_spatial_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def _rank_for(module: nn.Module, config: NetworkConfig) -> tuple[int, float]:
    return (config.conv_rank, config.conv_alpha) if is_spatial_conv(module) else (config.rank, config.alpha)


def _largest_rank(module: nn.Module) -> int:
    if not isinstance(module, nn.Conv2d):  # a Linear, or a quantized linear layer of its shape
        return min(module.in_features, module.out_features)
    return min(module.out_channels, module.in_channels * module.kernel_size[0] * module.kernel_size[1])


def _add_adapter_output(adapter, module, args, output):
    return output + adapter.bypass_forward_diff(args[0], scale=adapter.multiplier).to(output.dtype)


def _bias(module: nn.Module, output: torch.Tensor) -> torch.Tensor | None:
    """The layer's bias shaped to broadcast over its output (a fresh copy: autograd may save it)."""
    if getattr(module, "bias", None) is None:
        return None
    bias = module.bias.detach().clone().to(output)
    return bias.view(-1, *([1] * (output.ndim - 2))) if isinstance(module, nn.Conv2d) else bias


def _add_glora_output(adapter, module, args, output):
    # lycoris' GLoRA difference runs the base layer on A(x) and so adds the bias a second time;
    # ComfyUI's loader merges W + W·A + B, which leaves the bias as it was.
    diff = adapter.bypass_forward_diff(args[0], scale=adapter.multiplier).to(output.dtype)
    bias = _bias(module, output)
    return output + (diff if bias is None else diff - bias)


def _add_oft_output(adapter, module, args, output):
    # lycoris rotates the whole output, bias included; ComfyUI's loader rotates the weight only.
    diff = adapter.bypass_forward_diff(args[0], scale=adapter.multiplier).to(output.dtype)
    bias = _bias(module, output)
    if bias is None:
        return output + diff
    flat = bias.reshape(adapter.block_num, adapter.block_size).float()
    rotated = torch.einsum("k n m, k n -> k m", adapter.get_r().to(flat), flat).reshape(bias.shape).to(output)
    return output + diff - (rotated - bias)


def _dora_output(adapter, module, args, output):
    # DoRA rescales the merged weight's columns, which no added difference can express: the
    # layer is recomputed with the decomposed weight (a full-size weight per step, as DoRA costs).
    x = args[0]
    merged = adapter.get_merged_weight(shape=adapter.shape, device=x.device)[0].to(x.dtype)
    bias = None if getattr(module, "bias", None) is None else module.bias.detach().to(x)
    return adapter.op(x, merged, bias, **adapter.kw_dict)


_HOOKS = {"GLoRA": _add_glora_output, "Diag-OFT": _add_oft_output, "DoRA": _dora_output}


# Algorithms whose bypass difference needs nothing of the base layer but its shape: the only ones
# trained on layers that are not a torch.nn.Linear (ComfyUI's quantized linear layers).
SHAPE_ONLY = ("LoRA", "LoCon", "LoHa", "LoKr")


def _lycoris_view(module: nn.Module, algorithm: str, name: str) -> nn.Module:
    """The layer lycoris builds its adapter for: the layer itself, or for a linear layer that is
    not a torch.nn.Linear (a quantized one) a weightless Linear of its shape."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return module
    if algorithm not in SHAPE_ONLY:
        raise ValueError(f"{algorithm} needs the base weight of layer {name}, which is quantized "
                         f"({type(module).__module__}); train {', '.join(SHAPE_ONLY)} on it")
    return nn.Linear(module.in_features, module.out_features, bias=getattr(module, "bias", None) is not None,
                     device="meta")


class AdapterNetwork(nn.Module):
    """One lycoris module per target layer, keyed by its file name prefix (e.g. `lora_unet_…`)."""

    def __init__(self, targets: dict[str, nn.Module], config: NetworkConfig, seed: int = 0):
        super().__init__()
        config.validate()
        modules = import_optional("lycoris.modules", f"{config.algorithm} adapters", "pip install lycoris-lora")
        module_class = getattr(modules, ALGORITHMS[config.algorithm])
        self.config = config
        self._targets: dict[str, nn.Module] = {}
        self._handles: list = []
        adapters = {}
        with torch.random.fork_rng(devices=[]):  # lycoris initialises with the global RNG
            torch.manual_seed(seed)
            for name, module in targets.items():
                rank, alpha = _rank_for(module, config)
                if rank == 0:
                    continue
                if config.algorithm in ("LoRA", "LoCon", "DoRA") and rank > _largest_rank(module):
                    raise ValueError(f"rank {rank} is larger than layer {name} allows ({_largest_rank(module)})")
                adapters[name] = module_class(name, _lycoris_view(module, config.algorithm, name), multiplier=1.0, lora_dim=rank, alpha=alpha,
                                              dropout=config.dropout, bypass_mode=True,
                                              **MODULE_OPTIONS.get(config.algorithm, {}))
                self._targets[name] = module
        if not adapters:
            raise ValueError("the network has no layer to adapt: check the target preset and ranks")
        self.adapters = nn.ModuleDict(adapters)

    # --- attaching -----------------------------------------------------------------------------
    def attach(self) -> None:
        if self._handles:
            return
        hook = _HOOKS.get(self.config.algorithm, _add_adapter_output)
        for name, adapter in self.adapters.items():
            self._handles.append(self._targets[name].register_forward_hook(partial(hook, adapter)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # --- files ---------------------------------------------------------------------------------
    def file_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Tensors under the names LoRA files use (`<prefix>.lora_up.weight`, `.alpha`, ...)."""
        out = {}
        for name, adapter in self.adapters.items():
            for key, value in adapter.state_dict().items():
                value = value.detach()
                out[f"{name}.{key}"] = (value if key == "alpha" else value.to(dtype)).contiguous().cpu()
        return out

    def load_file_state_dict(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Continues from a saved adapter: every layer of this network must be in the file."""
        missing = []
        for name, adapter in self.adapters.items():
            own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            if not own:
                missing.append(name)
                continue
            expected = adapter.state_dict()
            wrong = [k for k in expected if k in own and own[k].shape != expected[k].shape]
            if wrong:
                key = wrong[0]
                raise ValueError(f"{source}: layer {name} was saved with another algorithm or rank: its {key} is "
                                 f"{list(own[key].shape)} in the file, {list(expected[key].shape)} in this network"
                                 f"{_rank_words(own[key].shape, expected[key].shape)}; set rank (and algorithm) to "
                                 f"the file's to continue it")
            if (set(own) ^ set(expected)) - {"alpha"}:
                raise ValueError(f"{source}: layer {name} was saved with another algorithm or rank "
                                 f"(its keys {sorted(own)}, this network's {sorted(expected)})")
            # lycoris fixes its scale (alpha / rank) when the module is built: a file alpha loaded
            # into the buffer would be saved again but never used in training.
            alpha = own.pop("alpha", None)
            if alpha is not None and not math.isclose(float(alpha), float(expected["alpha"]), rel_tol=5e-3):
                raise ValueError(f"{source}: layer {name} was saved with alpha {float(alpha):g}, this network "
                                 f"uses {float(expected['alpha']):g}: set alpha (conv_alpha for convolutions) "
                                 f"to the file's to continue it")
            with torch.no_grad():
                adapter.load_state_dict({k: v.to(expected[k].dtype) for k, v in own.items()}, strict=False)
        if missing:
            raise ValueError(f"{source} has no weights for {len(missing)} of this network's layers "
                             f"(e.g. {missing[0]}): it was trained with other targets or another model")

    def apply_max_norm(self, max_norm: float) -> int:
        """kohya's scale_weight_norms: rescales adapters whose ΔW norm exceeds max_norm."""
        scaled = 0
        for adapter in self.adapters.values():
            was_scaled, _ = adapter.apply_max_norm(max_norm)
            scaled += int(bool(was_scaled))
        return scaled


class AdapterSet(nn.ModuleDict):
    """The networks of one run (the diffusion model's, and the text encoder's when it is
    trained), saved together in one file and one training state."""

    def file_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        out = {}
        for network in self.values():
            out.update(network.file_state_dict(dtype))
        return out

    def apply_max_norm(self, max_norm: float) -> int:
        return sum(network.apply_max_norm(max_norm) for network in self.values())


def _rank_words(saved, expected) -> str:
    """" (rank 16 in the file, 8 here)" when the shapes differ only in one dimension."""
    if len(saved) == len(expected):
        differ = [(a, b) for a, b in zip(saved, expected) if a != b]
        if len(differ) == 1:
            return f" (rank {differ[0][0]} in the file, {differ[0][1]} here)"
    return ""
