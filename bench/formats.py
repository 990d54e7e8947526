"""Quantized variants of a model for throughput benchmarks, without calibration.

Decode speed depends on a format's layout, not on how well its codes were fitted, so every
format here is built in seconds: RTN is quantized for real (data-free); GPTQ, AQLM and CRVQ get
their packed layers with the method's exact layout (act-order `g_idx`, codebooks, extended
codebooks on the critical channels, permutation) filled with seeded random codes whose
dequantized weights have the dense layer's per-row scale. Each variant shares the dense model's
embeddings, norms and head (no copy); only its block linears are its own.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from harness.models.adapters import get_adapter, iter_block_linears
from harness.quantizer import QuantContext, QuantizedLinear
from methods.aqlm.layer import AQLMLinear
from methods.crvq.layer import CRVQLinear
from methods.gptq.layer import GPTQLinear
from methods.rtn.quantizer import RTNQuantizer

__all__ = ["FORMATS", "build_variant"]


def _generator(name: str, seed: int, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded from (seed, layer name): random codes are drawn where the
    layer lives (a 7B-shaped model builds in seconds on a GPU)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _randint(high: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=gen, device=gen.device)


def _rand(shape: tuple[int, ...], gen: torch.Generator, normal: bool = False) -> torch.Tensor:
    return (torch.randn if normal else torch.rand)(shape, generator=gen, device=gen.device)


def _rtn(bits: int, group: int) -> Callable[[nn.Linear, torch.Generator], QuantizedLinear]:
    quantizer = RTNQuantizer(RTNQuantizer.Config(bits=bits, group_size=group))

    def build(linear: nn.Linear, gen: torch.Generator) -> QuantizedLinear:
        ctx = QuantContext(layer_name="bench", block_index=0, generator=gen, device=linear.weight.device, progress=False)
        return quantizer.quantize_linear(linear, None, ctx)

    return build


def _gptq(bits: int, group: int) -> Callable[[nn.Linear, torch.Generator], QuantizedLinear]:
    """Act-order GPTQ layout: a random column order decides the groups (`g_idx`)."""

    def build(linear: nn.Linear, gen: torch.Generator) -> QuantizedLinear:
        out, inp = linear.weight.shape
        G = inp // group
        scale = linear.weight.detach().float().std() * 2 / (1 << bits)
        codes = _randint(1 << bits, (out, inp), gen)
        zeros = torch.full((G, out), (1 << bits) // 2, device=gen.device)
        scales = (scale * (0.5 + _rand((G, out), gen))).half().float()
        g_idx = (torch.argsort(torch.argsort(_rand((inp,), gen))) // group).int()
        return GPTQLinear.from_codes(codes, scales, zeros, bits=bits, group_size=group, g_idx=g_idx)

    return build


def _codebooks(nbits: list[int], g: int, std: float, gen: torch.Generator) -> list[torch.Tensor]:
    return [_rand((1 << b, g), gen, normal=True) * std / len(nbits) ** 0.5 for b in nbits]


def _aqlm(num_codebooks: int, nbits: int, g: int = 8) -> Callable[[nn.Linear, torch.Generator], QuantizedLinear]:
    def build(linear: nn.Linear, gen: torch.Generator) -> QuantizedLinear:
        out, inp = linear.weight.shape
        books = _codebooks([nbits] * num_codebooks, g, 1.0, gen)
        codes = [_randint(1 << nbits, (out, inp // g), gen) for _ in range(num_codebooks)]
        scales = linear.weight.detach().float().std(dim=1)
        return AQLMLinear.from_result(books, codes, [None] * num_codebooks, [nbits] * num_codebooks, scales,
                                      in_features=inp)

    return build


def _crvq(nbits: int = 8, extended: int = 3, ratio: float = 0.02, g: int = 8) -> Callable[[nn.Linear, torch.Generator], QuantizedLinear]:
    """CRVQ's default: a 1x8 basic codebook plus 3 extended 8-bit codebooks on 2% of the inputs."""

    def build(linear: nn.Linear, gen: torch.Generator) -> QuantizedLinear:
        out, inp = linear.weight.shape
        n_crit = max(1, int(inp * ratio) // g)
        books = _codebooks([nbits] * (1 + extended), g, 1.0, gen)
        codes = [_randint(1 << nbits, (out, inp // g), gen)]
        codes += [_randint(1 << nbits, (out, n_crit), gen) for _ in range(extended)]
        scales = linear.weight.detach().float().std(dim=1)
        perm = torch.argsort(_rand((inp,), gen))
        return CRVQLinear.from_crvq(books, codes, [nbits] * (1 + extended), scales, perm, n_crit, in_features=inp)

    return build


#: Format name -> builder of one packed layer from a dense linear.
FORMATS: dict[str, Callable[[nn.Linear, torch.Generator], QuantizedLinear]] = {
    "rtn-4b-g64": _rtn(4, 64),
    "rtn-4b-g128": _rtn(4, 128),
    "rtn-3b-g64": _rtn(3, 64),
    "rtn-2b-g64": _rtn(2, 64),
    "rtn-2b-g128": _rtn(2, 128),
    "gptq-4b-g64-actorder": _gptq(4, 64),
    "gptq-4b-g128-actorder": _gptq(4, 128),
    "gptq-2b-g64-actorder": _gptq(2, 64),
    "gptq-2b-g128-actorder": _gptq(2, 128),
    "aqlm-1x8": _aqlm(1, 8),
    "aqlm-2x8": _aqlm(2, 8),
    "aqlm-1x16": _aqlm(1, 16),
    "crvq-1x8+3x8": _crvq(),
}


def build_variant(dense: nn.Module, fmt: str, *, seed: int = 0) -> nn.Module:
    """A model sharing `dense`'s non-linear tensors whose block linears are `fmt` packed layers
    (on `dense`'s device; the layers keep their stored dtypes, the rest follows `dense`)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    build = FORMATS[fmt]
    adapter = get_adapter(dense)
    embed = dense.get_input_embeddings().weight
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(dense.config, dtype=embed.dtype)
    linears = {name: linear for name, _, linear in iter_block_linears(dense, adapter)}
    for name, linear in linears.items():
        fp32 = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device=embed.device)
        with torch.no_grad():
            fp32.weight.copy_(linear.weight.detach())
            if linear.bias is not None:
                fp32.bias.copy_(linear.bias.detach())
        layer = build(fp32, _generator(name, seed, embed.device))
        model.set_submodule(name, layer.to(embed.device))
    state = {k: v for k, v in dense.state_dict().items() if k.rpartition(".")[0] not in linears}
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(dense.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(embed.device).eval()  # shared tensors are already there (no copy)
