"""Fast path vs dequantized reference: do the packed kernels compute the model they claim?

`logit_agreement` decodes a short fixed token sequence one token at a time through a static KV
cache, batch 1 — exactly the calls that decode throughput times, so every packed layer takes its
decode kernel — and compares the logits with one forward pass of the same model in which every
`QuantizedLinear` computes `reference_forward` (x times its `dequantize()`d weight). Perplexity
and zero-shot numbers come from the same layers in the same modules, so a disagreement here means
the measured speed and the measured quality belong to different models.
"""
from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from harness.quantizer import QuantizedLinear

logger = logging.getLogger(__name__)

__all__ = [
    "cache_kwarg", "dequantized_reference", "layer_paths", "logit_agreement", "quantized_layers", "tolerance_for",
]

#: Largest max-relative logit difference accepted in float32 (and float64); reported for
#: float16/bfloat16, where agreement is judged layer by layer (see `logit_agreement`).
_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 5e-2, torch.float16: 2e-2}


def tolerance_for(dtype: torch.dtype) -> float:
    return _TOLERANCE.get(dtype, 5e-2)


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def layer_paths(model: nn.Module) -> dict[str, str]:
    """Compute path of the most recent call of every quantized layer, by module name."""
    return {name: m.path_used() for name, m in quantized_layers(model).items()}


@contextmanager
def dequantized_reference(model: nn.Module) -> Iterator[None]:
    """Inside the context every `QuantizedLinear` of `model` computes `reference_forward`."""
    layers = list(quantized_layers(model).values())
    try:
        for layer in layers:
            layer.forward = layer.reference_forward  # instance attribute shadows the method
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def fixed_tokens(vocab_size: int, length: int, *, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids [batch, length] int64 drawn from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    embed = model.get_input_embeddings().weight
    return embed.device, embed.dtype


def _decode_logits(model: nn.Module, ids: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Logits [T, vocab] float32 of decoding ids [1, T] one token at a time through a static
    cache; `inputs` (if given) receives each quantized layer's input of the last step."""
    from transformers import StaticCache

    cache = {cache_kwarg(model): StaticCache(config=model.config, max_cache_len=ids.shape[1])}
    logits = [model(input_ids=ids[:, t:t + 1], use_cache=True, **cache).logits[0, -1:].float()
              for t in range(ids.shape[1] - 1)]
    hooks = [layer.register_forward_hook(lambda mod, args, out, name=name: inputs.__setitem__(name, args[0]))
             for name, layer in quantized_layers(model).items()] if inputs is not None else []
    try:
        logits.append(model(input_ids=ids[:, -1:], use_cache=True, **cache).logits[0, -1:].float())
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(logits)


def cache_kwarg(model: nn.Module) -> str:
    """Name of the KV-cache argument of the model's decoder: `cache` where its forward takes it
    (transformers >= 5.25; `past_key_values` is deprecated there and removed in 5.40), else
    `past_key_values`."""
    decoder = getattr(model, "model", model)
    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).abs().max()) / max(float(ref.float().abs().max()), 1e-30)


def _layer_errors(model: nn.Module, inputs: dict[str, torch.Tensor], slack: float) -> tuple[str, float, float]:
    """On each layer's real decode input x: the fast path's and the same-dtype reference's max
    relative error against float32 truth (x and the dequantized weight in float32). Returns the
    layer where the fast path exceeds twice the reference's error + `slack` the most: (name,
    fast error, reference error)."""
    worst = ("", 0.0, 0.0, float("-inf"))
    for name, layer in quantized_layers(model).items():
        x = inputs[name]
        truth = torch.nn.functional.linear(x.float(), layer.dequantize().to(x.device),
                                           None if layer.bias is None else layer.bias.float())
        fast, ref = _rel_diff(layer(x), truth), _rel_diff(layer.reference_forward(x), truth)
        excess = fast - (2 * ref + slack)
        if excess > worst[3]:
            worst = (name, fast, ref, excess)
    return worst[:3]


@torch.inference_mode()
def logit_agreement(model: nn.Module, *, tokens: int = 16, seed: int = 0) -> dict[str, Any] | None:
    """Compare the decode path's logits with the dequantized reference's on `tokens` fixed tokens.

    Returns None when the model has no `QuantizedLinear`, else {tokens, dtype, max_abs_diff,
    max_rel_diff (max |fast - ref| / max |ref| over all positions and vocabulary entries),
    argmax_match (fraction of positions with the same greedy token), tolerance, agree, paths
    ({path: layer count} of the decode calls), worst_layer {name, fast_rel_err, ref_rel_err}}.

    float32: agree iff max_rel_diff <= 1e-3. In float16/bfloat16 rounding alone moves the logits
    of a degraded model a lot (the reference's own bfloat16 forward differs from its float32 one
    by tens of percent on 2-bit RTN), so agreement is judged layer by layer instead: on every
    layer's real decode input, the fast path's error against float32 truth must stay within
    twice the same-dtype reference's error + the dtype's epsilon (`worst_layer` reports the
    closest call; torch's int4 CPU kernel in bfloat16 is ~1 ulp, a bfloat16 matmul ~0.5).
    Logs a warning when the two disagree.
    """
    if not quantized_layers(model):
        return None
    device, dtype = _model_device_dtype(model)
    ids = fixed_tokens(model.config.vocab_size, tokens, seed=seed).to(device)
    inputs: dict[str, torch.Tensor] = {}
    fast = _decode_logits(model, ids, inputs)
    paths = Counter(layer_paths(model).values())
    with dequantized_reference(model):
        reference = model(input_ids=ids, use_cache=False).logits[0].float()
    max_rel = _rel_diff(fast, reference)
    tolerance = tolerance_for(dtype)
    slack = float(torch.finfo(dtype).eps)  # one unit of the dtype's last place
    name, fast_err, ref_err = _layer_errors(model, inputs, slack)
    layerwise_ok = fast_err <= 2 * ref_err + slack
    result = {
        "tokens": tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "max_abs_diff": float((fast - reference).abs().max()),
        "max_rel_diff": max_rel,
        "argmax_match": float((fast.argmax(-1) == reference.argmax(-1)).float().mean()),
        "tolerance": tolerance,
        "agree": max_rel <= tolerance if dtype in (torch.float32, torch.float64) else layerwise_ok,
        "paths": dict(sorted(paths.items())),
        "worst_layer": {"name": name, "fast_rel_err": fast_err, "ref_rel_err": ref_err},
    }
    if not result["agree"]:
        logger.warning(
            "fast path and dequantized reference disagree (%s): max relative logit difference %.3g (tolerance %.3g); "
            "worst layer %s: fast %.3g vs reference %.3g against float32 (paths %s)",
            result["dtype"], max_rel, tolerance, name, fast_err, ref_err, result["paths"],
        )
    return result
