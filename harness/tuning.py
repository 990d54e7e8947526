"""Tuning helpers shared by block fine-tuning (methods) and end-to-end fine-tuning
(`harness.finetune_e2e`): which tensors are trainable, and what state a run ends in."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from harness.quantizer import QuantizedLinear

__all__ = ["restore_state", "tunable_parameters"]


def _is_norm(module: nn.Module) -> bool:
    return "Norm" in type(module).__name__


@contextlib.contextmanager
def tunable_parameters(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Inside the context, every quantized layer's `trainable_buffers()` are float32 parameters
    and every norm module's weights are float32 and require grad; all other parameters are
    frozen. Yields the trainable parameters. On exit (also on error) the buffers are buffers
    again in their original dtype and order (layers are told through `buffers_changed()`),
    norm weights get back their dtype and every parameter its `requires_grad`."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear) and m.trainable_buffers()]
    saved: list[tuple[QuantizedLinear, list[str], dict[str, torch.dtype]]] = []
    norms: list[tuple[nn.Parameter, torch.dtype]] = []
    params: list[nn.Parameter] = []
    try:
        for layer in layers:
            order, dtypes = list(layer._buffers), {}
            saved.append((layer, order, dtypes))
            for name in layer.trainable_buffers():
                value = layer._buffers.pop(name)
                dtypes[name] = value.dtype
                layer.register_parameter(name, nn.Parameter(value.detach().float()))
                params.append(getattr(layer, name))
        for module in model.modules():
            if _is_norm(module):
                for p in module.parameters(recurse=False):
                    norms.append((p, p.dtype))
                    p.data = p.data.float()
                    p.requires_grad_(True)
                    params.append(p)
        yield params
    finally:
        for layer, order, dtypes in saved:
            for name, dtype in dtypes.items():
                if name in layer._parameters:
                    layer._buffers[name] = layer._parameters.pop(name).detach().to(dtype)
            buffers = dict(layer._buffers)
            layer._buffers.clear()
            layer._buffers.update({k: buffers[k] for k in order if k in buffers})
            layer.buffers_changed()
        for p, dtype in norms:
            p.data = p.data.to(dtype)
            p.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)


def restore_state(
    params: list[nn.Parameter],
    *,
    snapshot: list[torch.Tensor],
    best_state: list[torch.Tensor],
    validated: bool,
    keep_best: bool,
    diverged: bool,
) -> None:
    """End of a fine-tuning run: put back the best validated state (when there is a validation
    split and `keep_best`, or the run diverged), else the starting `snapshot` if the run
    diverged without validation; otherwise keep the parameters as trained."""
    restore = best_state if validated and (keep_best or diverged) else snapshot if diverged else None
    if restore is not None:
        with torch.no_grad():
            for p, value in zip(params, restore):
                p.copy_(value)
