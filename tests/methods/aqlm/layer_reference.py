"""The AQLM layer reference: W and H of `model.layers.10.self_attn.q_proj` of the embedded model.

H = mean over tokens of x xᵀ (float64) over that layer's inputs when the full-precision
embedded model reads the first 64 x 512 tokens of the embedded calibration text
(`token_stream("embedded", tokenizer, "calibration")`, cut into 64 sequences of 512).
Computing it runs 11 of the 30 blocks over 32k tokens (about a minute on 2 cores), so the
result is cached under `harness.models.embedded.cache_root()/fixtures/`, keyed by the name,
the token count and the embedded model's cache directory name (which changes with the GGUF).

Reference (issue AQLM, P3): the published AQLM algorithm, 1 codebook x 8 bits, group 8, no
fine-tuning, lr 1e-4, 100 Adam steps per epoch, at most 50 epochs, tolerance 0.01, reaches a
relative output error of 0.0301 in 12.6 s on the 2-core development machine.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LAYER = "model.layers.10.self_attn.q_proj"
NUM_SEQUENCES = 64
SEQLEN = 512
REFERENCE_REL_ERROR = 0.0301
REFERENCE_SECONDS = 12.6


def _cache_path() -> Path:
    from harness.models.embedded import cache_root, embedded_cache_dir

    tag = f"{LAYER}-{NUM_SEQUENCES}x{SEQLEN}-{embedded_cache_dir().name}"
    return cache_root() / "fixtures" / f"aqlm-layer-{tag}.safetensors"


def cached_reference_exists() -> bool:
    """Whether the reference is already in the cache (no model needs loading)."""
    return _cache_path().is_file()


class _Stop(Exception):
    pass


@torch.inference_mode()
def _compute(loaded) -> dict[str, torch.Tensor]:
    from harness.data.sources import token_stream

    model, tokenizer = loaded.model, loaded.tokenizer
    ids = token_stream("embedded", tokenizer, "calibration")
    needed = NUM_SEQUENCES * SEQLEN
    if ids.numel() < needed:
        raise ValueError(f"the embedded calibration text has {ids.numel()} tokens, fewer than {needed}")
    batches = ids[:needed].view(NUM_SEQUENCES, SEQLEN)
    linear = model.get_submodule(LAYER)
    total = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64)
    count = 0

    def hook(module, args):
        nonlocal total, count
        x = args[0].reshape(-1, args[0].shape[-1]).double()
        total += x.T @ x
        count += x.shape[0]
        raise _Stop

    handle = linear.register_forward_pre_hook(hook)
    try:
        for start in range(0, NUM_SEQUENCES, 8):
            try:
                model(input_ids=batches[start : start + 8], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return {
        "H": (total / count).contiguous(),
        "W": linear.weight.detach().float().clone().contiguous(),
        "num_samples": torch.tensor([count]),
    }


def layer_reference(loaded=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(W [576, 576] float32, H [576, 576] float64, num_samples) of the reference layer.

    loaded: the embedded `LoadedModel` (loaded here if None and the cache is cold).
    """
    path = _cache_path()
    if not path.is_file():
        if loaded is None:
            from harness.models import load_model

            loaded = load_model("smollm2-135m", dtype=torch.float32, device=torch.device("cpu"), progress=False)
        tensors = _compute(loaded)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    tensors = load_file(str(path))
    return tensors["W"], tensors["H"], int(tensors["num_samples"][0])
