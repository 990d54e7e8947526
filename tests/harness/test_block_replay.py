"""Block-by-block replay through the pipeline's own path gives the full model's logits.

For every family the adapters support (tiny random configs) and for both embedded models, the
calibration pipeline's path — `capture_block_inputs`, then each block run on the previous
block's outputs with `BlockData.for_block(i)`'s call arguments (`propagate`), then the head —
must reproduce the logits of one plain forward pass. This is the check that catches a family
whose masks, rotary tables or positions the pipeline gets wrong: before per-block arguments,
Gemma 3's sliding and global layers were all replayed with the first block's (off by ~0.3).

Measured max |replay - full| in float32 (CPU, torch 2.13, transformers 5.25): 0.0 for every
tiny config (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, opt; max |logit| 4.2-5.9) and
for both embedded models (the replay runs the same kernels on the same inputs); the tolerances
below leave room for other BLAS builds. Replaying with block 0's arguments instead is off by
1.2 (tiny gemma3), 5.1 (tiny gemma2) and 12.6 (gemma3-270m, 600 tokens).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
    Qwen3Config,
)

from harness.models import get_adapter
from harness.calibration import capture_block_inputs, propagate

SEQLEN = 64
_COMMON = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
)
#: Tiny random configs per family; the sliding-window ones use a window of 8 < SEQLEN tokens.
CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(sliding_window=8, **_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(head_dim=8, **_COMMON),
    "gemma": lambda: GemmaConfig(head_dim=8, **_COMMON),
    "gemma2": lambda: Gemma2Config(head_dim=8, sliding_window=8, **_COMMON),
    # 5 sliding-window layers + 1 global, two rotary bases, one KV head: Gemma 3's layout
    "gemma3": lambda: Gemma3TextConfig(
        head_dim=8, sliding_window=8, **{**_COMMON, "num_key_value_heads": 1}
    ),
    "opt": lambda: OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=6, num_attention_heads=4,
                             vocab_size=128, max_position_embeddings=256, word_embed_proj_dim=32),
}
#: Max |replay - full| allowed, float32.
TOLERANCE_TINY = 1e-5
TOLERANCE_EMBEDDED = 1e-3


def _tiny(family: str) -> nn.Module:
    torch.manual_seed(0)  # test-only: from_config draws the random weights from the global generator
    model = AutoModelForCausalLM.from_config(CONFIGS[family](), dtype=torch.float32).eval()
    with torch.no_grad():  # larger weights than the init's 0.02, so that errors would show in the logits
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.2)
    return model


@torch.inference_mode()
def replay_logits(
    model: nn.Module, ids: torch.Tensor, *, batch_size: int, first_block_args: bool = False, keep: int = 0
) -> torch.Tensor:
    """Logits of `ids` computed block by block through the pipeline's capture and propagate.

    first_block_args: replay every block with block 0's call arguments (the old behaviour).
    keep: only the logits of the last `keep` positions (0: all).
    """
    adapter = get_adapter(model)
    data = capture_block_inputs(model, adapter, ids, batch_size=batch_size, storage=torch.device("cpu"))
    for index, block in enumerate(adapter.blocks(model)):
        propagate(block, data.for_block(0 if first_block_args else index))
    hidden = data.hidden[:, -keep:]
    for module in adapter.head_modules(model):
        hidden = module(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(hidden / cap) * cap if cap else hidden


@torch.inference_mode()
def _full_logits(model: nn.Module, ids: torch.Tensor, keep: int = 0) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_replay_matches_full_forward(family: str) -> None:
    model = _tiny(family)
    ids = torch.randint(0, 128, (3, SEQLEN), generator=torch.Generator().manual_seed(0))
    full = _full_logits(model, ids)
    replay = replay_logits(model, ids, batch_size=2)  # two batches of unequal size
    diff = (replay - full).abs().max().item()
    assert diff <= TOLERANCE_TINY, f"{family}: max |replay - full| = {diff:.3g} (max |logit| {full.abs().max():.3g})"


def test_first_block_arguments_are_wrong_for_gemma3() -> None:
    """The test above is sensitive: Gemma 3 replayed with block 0's (sliding) arguments differs."""
    model = _tiny("gemma3")
    ids = torch.randint(0, 128, (2, SEQLEN), generator=torch.Generator().manual_seed(0))
    wrong = replay_logits(model, ids, batch_size=2, first_block_args=True)
    assert (wrong - _full_logits(model, ids)).abs().max().item() > 1e-2


def _embedded_text_ids(tokenizer, n_tokens: int) -> torch.Tensor:
    from harness.data.sources import embedded_text

    ids = tokenizer(embedded_text()[:20000], return_tensors="pt").input_ids[:, :n_tokens]
    assert ids.shape[1] == n_tokens
    return ids


def test_replay_matches_full_forward_smollm2(embedded_smollm2) -> None:
    embedded = embedded_smollm2
    ids = _embedded_text_ids(embedded.tokenizer, 96)
    full = _full_logits(embedded.model, ids)
    diff = (replay_logits(embedded.model, ids, batch_size=1) - full).abs().max().item()
    assert diff <= TOLERANCE_EMBEDDED, f"smollm2-135m: max |replay - full| = {diff:.3g}"


def test_replay_matches_full_forward_gemma3(embedded_gemma) -> None:
    """600 tokens: longer than Gemma 3's sliding window (512), so the two masks differ; the
    logits of the last 64 positions (those the window limits) are compared (the 262k-word head
    is the costly part)."""
    model = embedded_gemma.model
    assert model.config.sliding_window < 600 and len(set(model.config.layer_types)) == 2
    ids = _embedded_text_ids(embedded_gemma.tokenizer, 600)
    full = _full_logits(model, ids, keep=64)
    diff = (replay_logits(model, ids, batch_size=1, keep=64) - full).abs().max().item()
    assert diff <= TOLERANCE_EMBEDDED, f"gemma3-270m: max |replay - full| = {diff:.3g}"
