"""The AQLM layer reference: W and H of `model.layers.10.self_attn.q_proj` of the embedded model
(and of the other block-10 linears of the fidelity test, `LAYERS`).

H = mean over tokens of x xᵀ (float64) over that layer's inputs when the full-precision
embedded model reads the first 64 x 512 tokens of the embedded calibration text
(`token_stream("embedded", tokenizer, "calibration")`, cut into 64 sequences of 512).
Computing it runs 11 of the 30 blocks over 32k tokens (about a minute on 2 cores), so the
result is cached under `harness.models.embedded.cache_root()/fixtures/`, keyed by the name,
the token count and the embedded model's cache directory name (which changes with the GGUF).
One pass computes every layer of `LAYERS` (block 10 is run to its down_proj).

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
#: The block-10 linears of the per-layer fidelity test (tests/methods/test_published_fidelity.py):
#: q_proj and v_proj share their input (and so H); gate_proj reads the MLP's input, down_proj
#: act(gate) * up. Listed in the order the block runs them.
LAYERS = (
    "model.layers.10.self_attn.q_proj", "model.layers.10.self_attn.v_proj",
    "model.layers.10.mlp.gate_proj", "model.layers.10.mlp.down_proj",
)


def _cache_path(layer: str = LAYER) -> Path:
    from harness.models.embedded import cache_root, embedded_cache_dir

    tag = f"{layer}-{NUM_SEQUENCES}x{SEQLEN}-{embedded_cache_dir().name}"
    return cache_root() / "fixtures" / f"aqlm-layer-{tag}.safetensors"


def cached_reference_exists(layer: str = LAYER) -> bool:
    """Whether the reference of `layer` is already in the cache (no model needs loading)."""
    return _cache_path(layer).is_file()


class _Stop(Exception):
    pass


@torch.inference_mode()
def _compute(loaded, layers: tuple[str, ...] = LAYERS) -> dict[str, dict[str, torch.Tensor]]:
    from harness.data.sources import token_stream

    model, tokenizer = loaded.model, loaded.tokenizer
    ids = token_stream("embedded", tokenizer, "calibration")
    needed = NUM_SEQUENCES * SEQLEN
    if ids.numel() < needed:
        raise ValueError(f"the embedded calibration text has {ids.numel()} tokens, fewer than {needed}")
    batches = ids[:needed].view(NUM_SEQUENCES, SEQLEN)
    linears = {name: model.get_submodule(name) for name in layers}
    totals = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in linears.items()}
    counts = dict.fromkeys(layers, 0)
    last = layers[-1]  # the last to run: stop the forward there

    def make_hook(name: str):
        def hook(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            totals[name] += x.T @ x
            counts[name] += x.shape[0]
            if name == last:
                raise _Stop
        return hook

    handles = [m.register_forward_pre_hook(make_hook(name)) for name, m in linears.items()]
    try:
        for start in range(0, NUM_SEQUENCES, 8):
            try:
                model(input_ids=batches[start : start + 8], use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: {
            "H": (totals[name] / counts[name]).contiguous(),
            "W": m.weight.detach().float().clone().contiguous(),
            "num_samples": torch.tensor([counts[name]]),
        }
        for name, m in linears.items()
    }


def layer_reference(loaded=None, layer: str = LAYER) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(W [out, in] float32, H [in, in] float64, num_samples) of `layer` (default the reference
    layer, q_proj [576, 576]; any name of `LAYERS`).

    loaded: the embedded `LoadedModel` (loaded here if None and the cache is cold).
    """
    if layer not in LAYERS:
        raise ValueError(f"layer_reference: {layer!r} is not one of {LAYERS}")
    path = _cache_path(layer)
    if not path.is_file():
        if loaded is None:
            from harness.models import load_model

            loaded = load_model("smollm2-135m", dtype=torch.float32, device=torch.device("cpu"), progress=False)
        for name, tensors in _compute(loaded).items():
            target = _cache_path(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, target)
    tensors = load_file(str(path))
    return tensors["W"], tensors["H"], int(tensors["num_samples"][0])
