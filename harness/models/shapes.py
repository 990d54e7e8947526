"""Shapes-only models: a model's architecture on the meta device, built from its config alone.

Bits accounting of large models (`harness bits`) needs every linear's shape, not its weights.
`resolve_config` finds a config from, in order: a built-in shape preset (`SHAPE_PRESETS`,
published configs written in code, e.g. "llama2-7b"), the embedded alias, a path to a
config.json or a model directory, a hub id whose config is already in the local Hugging
Face cache (never downloaded), or the preset of a known hub id (`HUB_PRESETS`). `meta_model` builds the model on the meta device (no memory,
no weights).
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ModelLoadError

logger = logging.getLogger(__name__)

__all__ = ["HUB_PRESETS", "SHAPE_PRESETS", "meta_model", "resolve_config"]


def _llama(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
           context: int, rope_theta: float = 10000.0) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=context,
            rms_norm_eps=1e-5, rope_theta=rope_theta, tie_word_embeddings=False,
        )
    return build


def _opt(hidden: int, ffn: int, layers: int, heads: int, *, proj: int | None = None,
         norm_before: bool = True) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import OPTConfig

        return OPTConfig(
            vocab_size=50272, hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=2048, do_layer_norm_before=norm_before,
            word_embed_proj_dim=proj or hidden, enable_bias=True, tie_word_embeddings=True,
        )
    return build


#: Preset name -> a function building the published config (shapes only; no download).
SHAPE_PRESETS: dict[str, Callable[[], Any]] = {
    "llama2-7b": _llama(4096, 11008, 32, 32, 32, 32000, 4096),
    "llama2-13b": _llama(5120, 13824, 40, 40, 40, 32000, 4096),
    "llama2-70b": _llama(8192, 28672, 80, 64, 8, 32000, 4096),
    "llama3-8b": _llama(4096, 14336, 32, 32, 8, 128256, 8192, rope_theta=500000.0),
    "llama3-70b": _llama(8192, 28672, 80, 64, 8, 128256, 8192, rope_theta=500000.0),
    "opt-125m": _opt(768, 3072, 12, 12),
    "opt-350m": _opt(1024, 4096, 24, 16, proj=512, norm_before=False),
    "opt-1.3b": _opt(2048, 8192, 24, 32),
    "opt-2.7b": _opt(2560, 10240, 32, 32),
    "opt-6.7b": _opt(4096, 16384, 32, 32),
    "opt-13b": _opt(5120, 20480, 40, 40),
    "opt-30b": _opt(7168, 28672, 48, 56),
    "opt-66b": _opt(9216, 36864, 64, 72),
}


#: Hub ids whose published config a preset reproduces: `resolve_config` falls back to the preset
#: when the hub id's config is not in the local cache (offline dry runs of paper suites).
HUB_PRESETS: dict[str, str] = {
    "meta-llama/Llama-2-7b-hf": "llama2-7b",
    "meta-llama/Llama-2-13b-hf": "llama2-13b",
    "meta-llama/Llama-2-70b-hf": "llama2-70b",
    "meta-llama/Meta-Llama-3-8B": "llama3-8b",
    "meta-llama/Meta-Llama-3-70B": "llama3-70b",
    **{f"facebook/opt-{size}": f"opt-{size}" for size in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")},
}


def _from_path(path: Path) -> Any:
    """The config of a model directory (its config.json) or of a config JSON file."""
    from transformers import AutoConfig

    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json in this directory; give a model directory or its config.json")
    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def _from_hub_cache(model_id: str) -> Any:
    from transformers import AutoConfig

    from harness.models.hub import offline_mode

    with offline_mode(True):
        return AutoConfig.from_pretrained(model_id, local_files_only=True)


def resolve_config(model: str) -> tuple[Any, str]:
    """(transformers config, where it came from) for `model`: a shape preset name, the embedded
    alias, a path to a config.json or model directory, or a hub id whose config is in the local
    Hugging Face cache. Raises ModelLoadError naming the presets otherwise."""
    from harness.models.embedded import EMBEDDED_MODELS, ensure_embedded_cache

    if model in SHAPE_PRESETS:
        return SHAPE_PRESETS[model](), f"preset '{model}'"
    if model in EMBEDDED_MODELS:
        return _from_path(ensure_embedded_cache(model)), f"embedded '{model}'"
    path = Path(model).expanduser()
    if path.exists():
        try:
            return _from_path(path), f"config {path}"
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{path}: could not read a transformers config ({type(exc).__name__}: {exc})") from exc
    try:
        return _from_hub_cache(model), f"hub id '{model}' (local cache)"
    except Exception as exc:
        preset = {k.lower(): v for k, v in HUB_PRESETS.items()}.get(model.lower())
        if preset is not None:
            return SHAPE_PRESETS[preset](), f"preset '{preset}' (for hub id '{model}', not in the local cache)"
        close = difflib.get_close_matches(model.lower(), SHAPE_PRESETS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelLoadError(
            f"model '{model}' is not a shape preset, not an existing config.json or model directory, and "
            f"no config for a hub id '{model}' is in the local Hugging Face cache (never downloaded here).{hint} "
            f"Shape presets: {', '.join(SHAPE_PRESETS)}. Or give the path of the model's config.json "
            f"(for a hub model: `hf download {model} config.json` where the hub is reachable)."
        ) from exc


def meta_model(config: Any) -> nn.Module:
    """The causal LM of `config` on the meta device (shapes only: no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise ModelLoadError(
            f"could not build a '{getattr(config, 'model_type', '?')}' model from its config on the meta "
            f"device ({type(exc).__name__}: {exc})"
        ) from exc
