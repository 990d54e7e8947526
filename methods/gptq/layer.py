"""The packed GPTQ layer and the standard GPTQ checkpoint (export and reload).

`GPTQLinear` is `GroupIntLinear` (the GPTQ tensor layout) plus a constructor from the standard
tensor dict. A checkpoint directory written by `export_gptq_checkpoint` holds:

  model.safetensors    per quantized linear `<name>.qweight` int32 [ceil(in*bits/32), out],
                       `<name>.qzeros` int32 [G, ceil(out*bits/32)], `<name>.scales` float16 [G, out],
                       `<name>.g_idx` int32 [in] (always written, as the format requires) and
                       `<name>.bias`; every other tensor of the model as it is
  config.json          the model config (when the model has one) with `quantization_config`
  quantize_config.json the same quantization config (the AutoGPTQ / GPTQModel file)

`checkpoint_format` "gptq" is AutoGPTQ's v1 (qzeros hold zero-1; what transformers/optimum and
most tools read), "gptq_v2" is GPTQModel's (true zeros). v1 cannot hold a zero point of 0, which
an asymmetric group with no negative weight has; the default picks v1 when every zero point fits.
Biases keep their dtype so that a reload is bit-exact (loaders cast them on load).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from methods.common.intlayer import GroupIntLinear
from methods.common.packing import pack_rows, unpack_rows

logger = logging.getLogger(__name__)

__all__ = [
    "GPTQLinear",
    "export_gptq_checkpoint",
    "gptq_quantization_config",
    "load_gptq_checkpoint",
]

CheckpointFormat = Literal["gptq", "gptq_v2"]
WEIGHTS_FILE = "model.safetensors"
_FORMATS = ("gptq", "gptq_v2")


class GPTQLinear(GroupIntLinear):
    """A GPTQ-quantized linear layer; storage, bits and compute path are `GroupIntLinear`'s.

    `g_idx` is stored (and counted in the bits) only when act-order made the group of a column
    depend on the permutation; `to_gptq_state_dict` always writes it.
    """

    @classmethod
    def bits_per_weight(cls, shape: tuple[int, int], config: Any) -> tuple[float, float]:
        """`GroupIntLinear.group_int_bits` with g_idx when act-order stores it
        (`GPTQConfig.stores_g_idx`); the paper counts the same."""
        value = cls.group_int_bits(*shape, config.bits, config.group_size, config.stores_g_idx(shape[1]))
        return value, value

    @classmethod
    def from_gptq_state_dict(
        cls,
        tensors: dict[str, torch.Tensor],
        *,
        bits: int,
        group_size: int,
        symmetric: bool,
        checkpoint_format: CheckpointFormat = "gptq",
        act_order: bool = False,
    ) -> "GPTQLinear":
        """Build a layer from one module's standard GPTQ tensors (qweight, qzeros, scales, g_idx,
        optional bias). `g_idx` is kept when it differs from `i // group_size`, and with
        `act_order` (desc_act without static groups) whenever the layer has several groups — the
        rule `GPTQConfig.stores_g_idx` applies when quantizing, so a reload counts the same bits.
        Raises ValueError for inconsistent shapes or a v1 zero point that does not fit `bits`.
        """
        if checkpoint_format not in _FORMATS:
            raise ValueError(f"checkpoint_format must be one of {_FORMATS}, got {checkpoint_format!r}")
        qweight, scales = tensors["qweight"], tensors["scales"]
        out_features = int(scales.shape[1])
        in_features = int(tensors["g_idx"].numel()) if "g_idx" in tensors else qweight.shape[0] * 32 // bits
        bias = tensors.get("bias")
        layer = cls(
            in_features, out_features, bits=bits, group_size=group_size, symmetric=symmetric,
            has_g_idx=False, bias=bias,
        )
        if tuple(qweight.shape) != tuple(layer.qweight.shape) or tuple(scales.shape) != tuple(layer.scales.shape):
            raise ValueError(
                f"GPTQ tensors do not match a {bits}-bit layer [{out_features}x{in_features}] with "
                f"group_size={group_size}: qweight {list(qweight.shape)} (expected "
                f"{list(layer.qweight.shape)}), scales {list(scales.shape)} (expected {list(layer.scales.shape)})"
            )
        zeros = unpack_rows(tensors["qzeros"].to(torch.int32), bits, out_features, dim=1)
        if checkpoint_format == "gptq":
            zeros = zeros + 1
            if bool((zeros >= 1 << bits).any()):
                raise ValueError(
                    f"a v1 ('gptq') checkpoint stores a zero point of {1 << bits}, which does not fit "
                    f"{bits} bits; this layer cannot be represented exactly"
                )
        layer.qweight = qweight.to(torch.int32).contiguous()
        layer.qzeros = pack_rows(zeros, bits, dim=1)
        layer.scales = scales.to(torch.float16).contiguous()
        g_idx = tensors.get("g_idx")
        if g_idx is not None:
            trivial = torch.arange(in_features, device=g_idx.device) // layer.effective_group_size
            permuted = not torch.equal(g_idx.long(), trivial)
            if permuted or (act_order and layer.num_groups > 1):
                if int(g_idx.min()) < 0 or int(g_idx.max()) >= layer.num_groups:
                    raise ValueError(f"g_idx entries must lie in [0, {layer.num_groups}), got "
                                     f"[{int(g_idx.min())}, {int(g_idx.max())}]")
                layer.has_g_idx = True
                layer.g_idx = g_idx.to(torch.int32).contiguous()
        return layer


def _quantized_layers(model: nn.Module) -> dict[str, GroupIntLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, GroupIntLinear)}


def gptq_quantization_config(
    layers: dict[str, GroupIntLinear],
    *,
    checkpoint_format: CheckpointFormat,
    damp: float | None = None,
    static_groups: bool = False,
) -> dict[str, Any]:
    """The HF `quantization_config` dict (`quant_method: gptq`) describing `layers`.

    Every layer must share bits, group_size and symmetry (the format has one global setting).
    `desc_act` is True when any layer stores a non-trivial `g_idx`.
    """
    if not layers:
        raise ValueError("the model has no GPTQ-layout (GroupIntLinear) layers to export")
    keys = {(m.bits, m.group_size, m.symmetric) for m in layers.values()}
    if len(keys) != 1:
        raise ValueError(
            f"a GPTQ checkpoint has one (bits, group_size, sym) setting, but the layers use {sorted(keys)}"
        )
    bits, group_size, sym = keys.pop()
    config: dict[str, Any] = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": any(m.has_g_idx for m in layers.values()),
        "static_groups": static_groups,
        "sym": sym,
        "true_sequential": True,
        "checkpoint_format": checkpoint_format,
        "meta": {"quantizer": ["ptq-harness"]},
    }
    if damp is not None:
        config["damp_percent"] = damp
    return config


def _zeros_fit_v1(layers: dict[str, GroupIntLinear]) -> bool:
    return all(bool((m.zeros() > 0).all()) for m in layers.values())


def export_gptq_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    checkpoint_format: CheckpointFormat | None = None,
    damp: float | None = None,
    static_groups: bool = False,
) -> dict[str, Any]:
    """Write `model` (with its quantized linears) as a GPTQ checkpoint directory at `path`.

    checkpoint_format: "gptq" (v1), "gptq_v2", or None to use v1 when every zero point is
    representable and v2 otherwise. damp / static_groups are recorded in the config only.
    Tensors sharing storage (tied embeddings) are written once. Returns the quantization config.
    """
    layers = _quantized_layers(model)
    if checkpoint_format is None:
        checkpoint_format = "gptq" if _zeros_fit_v1(layers) else "gptq_v2"
        if checkpoint_format == "gptq_v2":
            logger.warning("GPTQ export: a zero point of 0 does not fit v1; writing checkpoint_format gptq_v2")
    elif checkpoint_format not in _FORMATS:
        raise ValueError(f"checkpoint_format must be one of {_FORMATS}, got {checkpoint_format!r}")
    qconfig = gptq_quantization_config(
        layers, checkpoint_format=checkpoint_format, damp=damp, static_groups=static_groups
    )
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        state = layer.to_gptq_state_dict(v1=checkpoint_format == "gptq")
        if layer.bias is not None:
            state["bias"] = layer.bias
        tensors.update({f"{name}.{key}": value for key, value in state.items()})
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for key, value in model.state_dict().items():
        if key.rpartition(".")[0] in layers:
            continue
        ident = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if ident in seen and value.numel():
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt", "aliases": json.dumps(aliases)})
    model_config = getattr(model, "config", None)
    if model_config is not None and hasattr(model_config, "to_dict"):
        full = model_config.to_dict()
        full["quantization_config"] = qconfig
        (out / "config.json").write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
    (out / "quantize_config.json").write_text(json.dumps(qconfig, indent=2), encoding="utf-8")
    return qconfig


def _read_quantization_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if config_file.exists():
        qconfig = json.loads(config_file.read_text(encoding="utf-8")).get("quantization_config")
        if qconfig is not None:
            return qconfig
    qfile = path / "quantize_config.json"
    if qfile.exists():
        return json.loads(qfile.read_text(encoding="utf-8"))
    raise ValueError(f"{path}: neither config.json (quantization_config) nor quantize_config.json found")


def load_gptq_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a GPTQ checkpoint directory into `model` (same architecture, dense or quantized).

    Every module with a `<name>.qweight` tensor is replaced by a `GPTQLinear` on that module's
    device; every other tensor is loaded into the model. Returns `model` (modified in place).
    Raises ValueError when the checkpoint is not 2/3/4/8-bit GPTQ or does not fit the model.
    """
    src = Path(path)
    qconfig = _read_quantization_config(src)
    if qconfig.get("quant_method", "gptq") != "gptq":
        raise ValueError(f"{src}: quant_method is {qconfig.get('quant_method')!r}, not 'gptq'")
    fmt = qconfig.get("checkpoint_format", qconfig.get("format", "gptq"))
    if fmt not in _FORMATS:
        raise ValueError(f"{src}: checkpoint_format {fmt!r} is not one of {_FORMATS}")
    bits, group_size, sym = int(qconfig["bits"]), int(qconfig["group_size"]), bool(qconfig.get("sym", True))
    desc_act = bool(qconfig.get("desc_act", False)) and not bool(qconfig.get("static_groups", False))
    weights_file = src / WEIGHTS_FILE
    tensors = load_file(weights_file)
    with open(weights_file, "rb") as fh:  # the header's metadata (tied-tensor aliases)
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    aliases = json.loads(header.get("__metadata__", {}).get("aliases", "{}"))
    names = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    for name in names:
        old = model.get_submodule(name)
        keys = ("qweight", "qzeros", "scales", "g_idx", "bias")
        parts = {k: tensors.pop(f"{name}.{k}") for k in keys if f"{name}.{k}" in tensors}
        layer = GPTQLinear.from_gptq_state_dict(
            parts, bits=bits, group_size=group_size, symmetric=sym, checkpoint_format=fmt,
            act_order=desc_act,
        )
        if (layer.in_features, layer.out_features) != (old.in_features, old.out_features):
            raise ValueError(
                f"{src}: '{name}' is [{layer.out_features}x{layer.in_features}] in the checkpoint "
                f"but [{old.out_features}x{old.in_features}] in the model"
            )
        device = next(iter(old.buffers() if isinstance(old, GroupIntLinear) else old.parameters())).device
        model.set_submodule(name, layer.to(device))
    for alias, target in aliases.items():
        tensors[alias] = tensors[target]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    quantized = set(names)
    missing = [k for k in missing if k.rpartition(".")[0] not in quantized]
    if missing or unexpected:
        raise ValueError(f"{src}: checkpoint does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model
