"""`GPTQQuantizer`: GPTQ per linear layer, native or through an external implementation.

Backends (see methods/gptq/BACKENDS.md for what was tried and why):
- "native": `methods.gptq.algorithm.gptq_quantize` (default).
- "gptqmodel": GPTQModel's per-layer `GPTQ` on the same H, in float32 as GPTQModel runs it
  (verified with gptqmodel 7.6.0; 7.7.0+ needs torch>=2.14.1). Its integer codes are recovered
  exactly from its dequantized weight; the packed layer stores its scales as float16, which is
  what GPTQModel's own packing does.
- "auto-gptq": not usable with this project's pins; selecting it raises ImportError with the
  reason when the quantizer is built, before any model is loaded.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from harness.plugin import LayerStats, QuantContext, Quantizer, relative_output_error
from methods.gptq.algorithm import GPTQResult, gptq_quantize
from methods.gptq.config import GPTQConfig
from methods.gptq.layer import GPTQLinear

#: Nominal bit budget -> params. Group 64 at every budget, like RTN's presets: it divides the
#: hidden size of every LLaMA-family model including SmolLM2-135M (576 = 9 x 64, which 128 does
#: not divide), and a GPTQ cell then stores exactly what the RTN cell of the same budget stores,
#: so the pair isolates the algorithm. Bits: 2 + 18/64 = 2.28, 3 + 19/64 = 3.30, 4 + 20/64 = 4.31;
#: 8 bits uses one group per row (8 + 24/in). The GPTQ paper's 4-bit group 128 is available via
#: `params` (on a 576-wide layer: 5 groups, the last one 64 wide, 4 + 20*5/576 = 4.17 bits).
_PRESETS: dict[int, dict[str, Any]] = {
    2: {"bits": 2, "group_size": 64},
    3: {"bits": 3, "group_size": 64},
    4: {"bits": 4, "group_size": 64},
    8: {"bits": 8, "group_size": -1},
}

AUTO_GPTQ_REASON = (
    "auto-gptq 0.7.1 (its last release; the project is archived) installs from PyPI but cannot run "
    "here: (1) `import auto_gptq` fails with transformers 5 (ImportError: cannot import name "
    "'no_init_weights' from 'transformers.modeling_utils'; next 'create_commit' from "
    "'transformers.utils.hub', then 'PEFT_TYPE_TO_MODEL_MAPPING' from current peft); (2) even with "
    "those patched, GPTQ.fasterquant calls torch.cuda.synchronize() unconditionally, so it fails on "
    "a CPU build of torch ('Torch not compiled with CUDA enabled'); its prebuilt kernels need "
    "libcudart.so.12. Use backend 'gptqmodel' (its maintained successor) or 'native'."
)
GPTQMODEL_INSTALL = (
    "pip install 'gptqmodel==7.6.0' (7.7.0+ requires torch>=2.14.1; 7.6.0 pins numpy==2.2.6, so "
    "install it into a virtual environment created with --system-site-packages)"
)


def _check_backend(backend: str) -> None:
    """Raise ImportError when `backend` cannot run in this environment."""
    if backend == "auto-gptq":
        # Not imported: a successful import would set global TF32 flags (auto_gptq.quantization).
        try:
            detail = f"auto-gptq {importlib.metadata.version('auto-gptq')} is installed here"
        except importlib.metadata.PackageNotFoundError:
            detail = "auto-gptq is not installed here"
        raise ImportError(f"gptq backend 'auto-gptq' is unavailable ({detail}): {AUTO_GPTQ_REASON}")
    if backend == "gptqmodel" and importlib.util.find_spec("gptqmodel") is None:
        raise ImportError(f"gptq backend 'gptqmodel' needs the package 'gptqmodel': {GPTQMODEL_INSTALL}")


@contextlib.contextmanager
def _restored_environ() -> Iterator[None]:
    """Undo environment variables set meanwhile (importing gptqmodel sets HF_HOME, HF_HUB_CACHE,
    TRANSFORMERS_CACHE, PYTORCH_ALLOC_CONF, CUDA_DEVICE_ORDER, ...)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def gptqmodel_quantize(W: torch.Tensor, H: torch.Tensor, num_samples: int, cfg: GPTQConfig) -> GPTQResult:
    """GPTQModel's GPTQ on `W [out, in]` with the given `H [in, in]`, as a `GPTQResult`.

    Plain GPTQ: GPTQModel's act-group-aware reordering is switched off (its default is on),
    and so are its disk offload and RTN fallback. `dequantized` is GPTQModel's weight (float32
    scales); `scales` are returned as float32 for packing to float16.
    """
    with _restored_environ():
        from gptqmodel import QuantizeConfig
        from gptqmodel.quantization.gptq import GPTQ

        qcfg = QuantizeConfig(
            bits=cfg.bits, group_size=cfg.group_size, sym=cfg.symmetric, desc_act=cfg.act_order,
            act_group_aware=False, static_groups=cfg.static_groups, damp_percent=cfg.damp,
            offload_to_disk=False, fallback=None,
        )
    rows, cols = W.shape
    layer = nn.Linear(cols, rows, bias=False, device=W.device)
    with torch.no_grad():
        layer.weight.copy_(W)
    gptq = GPTQ(layer, qcfg)
    gptq.quantizer.configure(perchannel=True)
    gptq.H = H.to(device=W.device, dtype=torch.float32).clone()  # scale of H does not matter
    gptq.nsamples = max(int(num_samples), 1)
    num_dead = int((H.diagonal() == 0).sum())
    Q, scale, zero, g_idx, _secs, _loss, damp_used, _n = gptq.quantize(blocksize=cfg.block_size)
    g = g_idx.long().to(W.device)
    scale_f, zero_f = scale.float().to(W.device), zero.float().to(W.device)
    Q = Q.float().to(W.device)
    codes = torch.round(Q / scale_f[:, g] + zero_f[:, g]).clamp_(0, 2**cfg.bits - 1).to(torch.int32)
    return GPTQResult(
        codes=codes, scales=scale_f.t().contiguous(), zeros=zero_f.round().t().to(torch.int32).contiguous(),
        g_idx=g.to(torch.int32), perm=None, dequantized=Q, damp=float(damp_used), num_dead=num_dead,
    )


class GPTQQuantizer(Quantizer):
    """GPTQ: quantize columns one at a time, compensating each error through H⁻¹."""

    name: ClassVar[str] = "gptq"
    Config: ClassVar[type[GPTQConfig]] = GPTQConfig
    layer_class: ClassVar[type[GPTQLinear]] = GPTQLinear
    requires_calibration: ClassVar[bool] = True
    budget_presets: ClassVar[dict[int, dict[str, Any]]] = _PRESETS
    preset_hint: ClassVar[str] = "the GPTQ format stores 2, 3, 4 or 8-bit codes"
    config: GPTQConfig

    def __init__(self, config: GPTQConfig):
        super().__init__(config)
        _check_backend(config.backend)

    def flops_for_shape(self, out_features: int, in_features: int) -> float:
        """Cholesky and inverse of H (~in³) plus the column-wise error propagation (2·out·in²)."""
        return float(in_features) ** 3 + 2.0 * out_features * in_features**2

    def quantize_linear(self, linear: nn.Linear, stats: LayerStats | None, ctx: QuantContext) -> GPTQLinear:
        """Quantize `linear.weight [out, in]` given `stats.H [in, in]`; returns a `GPTQLinear` on
        the weight's device. The math runs on `ctx.device`. Appends {rel_error, num_dead, damp,
        backend} to `ctx.log`; rel_error = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) of the stored layer.
        """
        cfg = self.config
        if stats is None:
            raise ValueError(f"gptq: layer '{ctx.layer_name}' needs calibration statistics (stats.H)")
        W = linear.weight.detach().to(device=ctx.device, dtype=torch.float32)
        H = stats.H.detach().to(device=ctx.device, dtype=torch.float64)
        try:
            if cfg.backend == "gptqmodel":
                result = gptqmodel_quantize(W, H, stats.num_samples, cfg)
            else:
                result = gptq_quantize(
                    W, H, bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric,
                    act_order=cfg.act_order, static_groups=cfg.static_groups, damp=cfg.damp,
                    block_size=cfg.block_size,
                )
        except ValueError as exc:
            raise ValueError(f"gptq: layer '{ctx.layer_name}': {exc}") from exc
        if not bool(torch.isfinite(result.scales).all()) or float(result.scales.max()) > 65504.0:
            raise ValueError(
                f"gptq: layer '{ctx.layer_name}' has a group range too large for a float16 scale "
                f"(max |w| = {W.abs().max().item():.3g})"
            )
        in_features = W.shape[1]
        trivial = torch.arange(in_features, device=W.device) // (
            in_features if cfg.group_size == -1 else cfg.group_size
        )
        keep_g_idx = cfg.stores_g_idx(in_features) or not torch.equal(result.g_idx.long(), trivial)
        bias = None if linear.bias is None else linear.bias.detach()
        layer = GPTQLinear.from_codes(
            result.codes, result.scales, result.zeros, bits=cfg.bits, group_size=cfg.group_size,
            symmetric=cfg.symmetric, g_idx=result.g_idx if keep_g_idx else None, bias=bias,
        )
        rel_error = relative_output_error(W, layer.dequantize(), H)
        ctx.log.append({
            "rel_error": rel_error,
            "num_dead": result.num_dead,
            "damp": result.damp,
            "backend": cfg.backend,
        })
        return layer.to(linear.weight.device)
