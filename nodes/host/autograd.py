"""Autograd through ComfyUI's modules: frozen weights usable in backward, per-block gradient
checkpointing, and safety against blocks that add into their inputs in place.

ComfyUI's blocks may update tensors in place (`x += …`) after autograd saved them (Flux's blocks
on 0.33, CLIP layers): plain backward then fails, and a checkpoint's recompute silently uses the
overwritten values. Both paths here give autograd private copies of what it saves, so a block is
as safe to recompute as to run the first time, whatever it does in place."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger("LoRALab")


def _detached(weight):
    return weight.detach()


def freeze_base_weights(patcher, root: str = "diffusion_model") -> None:
    """Frozen weights must be usable in backward without being trained: loader nodes make
    inference tensors (which autograd refuses to save), and ComfyUI parameters require grad.
    ComfyUI's cast layers get a weight wrapper that hands autograd a fresh detached copy; the few
    other parameters (norm scales) get patcher-scoped detached clones. Both are undone when the
    patcher is unloaded: the shared module itself is never changed."""
    from comfy.ops import CastWeightBiasOp

    top = patcher.model.get_submodule(root)
    for module_path, module in top.named_modules():
        for name, param in module.named_parameters(recurse=False):
            key = ".".join(part for part in (root, module_path, name) if part)
            if isinstance(module, CastWeightBiasOp) and name in ("weight", "bias"):
                patcher.add_weight_wrapper(key, _detached)
            else:
                patcher.add_object_patch(key, torch.nn.Parameter(param.detach().clone(), requires_grad=False))


def copies_of_saved_tensors():
    """Autograd keeps its own copy of every tensor it saves, so blocks that add into their
    inputs in place (`x += …`) cannot invalidate them."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)


def _current_saved_tensor_hooks():
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


class _CopyingRecompute:
    """The recompute context of a non-reentrant checkpoint: every tensor the recompute saves is
    copied before torch's checkpoint keeps it (torch keeps a view, which a later in-place add of
    the same recompute would overwrite without any error)."""

    def __enter__(self):
        hooks = _current_saved_tensor_hooks()  # torch's recomputation hooks, innermost now
        if hooks is None:
            raise RuntimeError("torch's checkpoint recompute hooks are not visible")
        pack, unpack = hooks
        self._hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: pack(t.detach().clone()), unpack)
        return self._hooks.__enter__()

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def _safe_contexts():
    return contextlib.nullcontext(), _CopyingRecompute()


def checkpointing_available() -> bool:
    """Safe checkpointing needs to see torch's recompute hooks (a private torch function, so it
    is detected, not assumed); without it blocks run un-checkpointed with copied saved tensors —
    correct, with more memory."""
    return hasattr(torch._C._autograd, "_top_saved_tensors_default_hooks")


def run_block(fn, *args, checkpoint: bool, **kwargs):
    """`fn(*args, **kwargs)` with gradients correct whatever the block does in place:
    checkpointed per block (use_reentrant=False, recompute on copies) or run with copies of
    every saved tensor."""
    if checkpoint and torch.is_grad_enabled() and checkpointing_available():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=_safe_contexts, **kwargs)
    if torch.is_grad_enabled():
        with copies_of_saved_tensors():
            return fn(*args, **kwargs)
    return fn(*args, **kwargs)


def _copied_inputs(value):
    """A block may add into its inputs in place: a checkpoint must recompute from the originals."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.clone()
    return value


def _wrapped_forward(module, checkpoint: bool):
    forward = type(module).forward.__get__(module)

    def run(*args, **kwargs):
        def call(*a, **k):
            return forward(*[_copied_inputs(v) for v in a], **{n: _copied_inputs(v) for n, v in k.items()})

        return run_block(call, *args, checkpoint=checkpoint, **kwargs)

    return run


def wrap_blocks(patcher, classes: tuple[str, ...], checkpoint: bool, keep_first: int = 0) -> None:
    """Every block of `classes` runs through `run_block` (checkpointed, or with copies of what
    autograd saves), as a patcher injection: the blocks' `forward` is replaced on the instances
    while this patcher is loaded and restored when it is unloaded — the shared module's other
    users never see it. Blocks nested in a wrapped block are left to it. With checkpointing, the
    first `keep_first` blocks (in module order, which is the order the families run them) keep
    their activations: no recompute for them, at the memory of their saved tensors."""
    from comfy.patcher_extension import PatcherInjection

    layers = []
    for module in patcher.model.diffusion_model.modules():
        if type(module).__name__ in classes and not any(module in set(outer.modules()) for outer in layers):
            layers.append(module)

    def inject(_):
        for index, layer in enumerate(layers):
            layer.forward = _wrapped_forward(layer, checkpoint and index >= keep_first)

    def eject(_):
        for layer in layers:
            layer.__dict__.pop("forward", None)

    patcher.set_injections("loralab_blocks", [PatcherInjection(inject=inject, eject=eject)])
