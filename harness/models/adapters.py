"""Family adapters: where a Hugging Face causal LM keeps its decoder blocks and their linears.

The engine never hard-codes an architecture: it asks the adapter for the blocks (an
`nn.ModuleList`), the modules that run before them (embeddings, rotary tables), the modules
after them (final norm, head) and, per block, the names of its `nn.Linear` layers grouped in
execution order for sequential quantization (layers of one group see the same input).

To support a new family, add one `FamilyAdapter(...)` line to `ADAPTERS` below (or call
`register_adapter` from your own code).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from harness.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: Longest default evaluation / calibration length (protocol: 4096 for LLaMA-2 style models).
MAX_DEFAULT_SEQLEN = 4096

_LLAMA_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
_OPT_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.out_proj",),
    ("fc1",),
    ("fc2",),
)


def _resolve(model: nn.Module, path: str) -> nn.Module | None:
    """`model.a.b.c` for path "a.b.c", or None if any step is missing or None."""
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


@dataclass(frozen=True)
class FamilyAdapter:
    """Attribute paths (from the `*ForCausalLM` module) of one model family's parts.

    blocks_path: the `nn.ModuleList` of decoder blocks, e.g. "model.layers".
    before_paths: modules run before the first block, in order (embeddings, positional
        embeddings, rotary tables, input projections); missing/None ones are skipped.
    final_norm_path: the norm after the last block (None if the family has none).
    after_paths: further modules between the final norm and the head (e.g. OPT-350m's project_out).
    groups: per block, names (relative to the block) of its linears in execution order,
        grouped as for sequential quantization.
    """

    name: str
    blocks_path: str
    before_paths: tuple[str, ...]
    final_norm_path: str | None
    groups: tuple[tuple[str, ...], ...]
    after_paths: tuple[str, ...] = ()
    lm_head_path: str = "lm_head"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks, in order."""
        blocks = _resolve(model, self.blocks_path)
        if not isinstance(blocks, nn.ModuleList):
            raise ModelLoadError(
                f"adapter '{self.name}': `{self.blocks_path}` is not an nn.ModuleList in "
                f"{type(model).__name__}; fix the adapter in harness/models/adapters.py."
            )
        return blocks

    def embeddings(self, model: nn.Module) -> list[nn.Module]:
        """Modules run before the blocks (token/position embeddings, rotary tables, projections)."""
        return [m for m in (_resolve(model, p) for p in self.before_paths) if m is not None]

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """The norm applied after the last block (None for families/configs without one)."""
        return _resolve(model, self.final_norm_path) if self.final_norm_path else None

    def lm_head(self, model: nn.Module) -> nn.Module:
        """The output projection to the vocabulary (may share its weight with the embeddings)."""
        head = _resolve(model, self.lm_head_path)
        if head is None:
            raise ModelLoadError(f"adapter '{self.name}': {type(model).__name__} has no `{self.lm_head_path}`.")
        return head

    def head_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules run after the blocks, in order: final norm, extra projections, lm head."""
        after = [self.final_norm(model)] + [_resolve(model, p) for p in self.after_paths]
        return [m for m in after if m is not None] + [self.lm_head(model)]

    def linear_groups(self, block: nn.Module) -> list[list[str]]:
        """Names (relative to `block`) of its nn.Linear layers, grouped in execution order."""
        return [list(group) for group in self.groups]

    def default_seqlen(self, config: Any) -> int:
        """Protocol default: the model's context length, capped at 4096 (2048 for OPT/LLaMA-1)."""
        return default_seqlen(config)


def default_seqlen(config: Any) -> int:
    """min(max_position_embeddings, 4096); 2048 when the config does not say."""
    context = getattr(config, "max_position_embeddings", None) or 2048
    return int(min(int(context), MAX_DEFAULT_SEQLEN))


def _llama_like(name: str) -> FamilyAdapter:
    return FamilyAdapter(
        name=name,
        blocks_path="model.layers",
        before_paths=("model.embed_tokens", "model.rotary_emb"),
        final_norm_path="model.norm",
        groups=_LLAMA_GROUPS,
    )


#: model_type (config.model_type) -> adapter.
ADAPTERS: dict[str, FamilyAdapter] = {
    **{t: _llama_like(t) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")},
    "opt": FamilyAdapter(
        name="opt",
        blocks_path="model.decoder.layers",
        before_paths=("model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.project_in"),
        final_norm_path="model.decoder.final_layer_norm",
        after_paths=("model.decoder.project_out",),
        groups=_OPT_GROUPS,
    ),
}


def register_adapter(model_type: str, adapter: FamilyAdapter) -> None:
    """Add (or replace) the adapter used for models whose `config.model_type` is `model_type`."""
    ADAPTERS[model_type] = adapter


def _block_linears(block: nn.Module) -> list[str]:
    return [name for name, m in block.named_modules() if isinstance(m, nn.Linear)]


def _structure_hint(model: nn.Module) -> str:
    """Where the blocks probably are: the longest nn.ModuleList and the weighted layers of its first block."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return "The model has no nn.ModuleList of blocks."
    name, blocks = max(lists, key=lambda item: len(item[1]))
    layers = [
        f"{n} ({type(m).__name__})"
        for n, m in blocks[0].named_modules()
        if n and getattr(m, "weight", None) is not None and not list(m.children())
    ]
    return f"Its blocks are probably `{name}` ({len(blocks)} blocks) with layers: {', '.join(layers[:12])}."


def get_adapter(model: nn.Module) -> FamilyAdapter:
    """The adapter for a loaded causal LM, checked against its first block.

    Raises ModelLoadError for an unsupported `model_type`, or when the adapter's linear names
    do not match the model (missing names, or nn.Linear layers no group covers).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(str(model_type))
    if adapter is None:
        raise ModelLoadError(
            f"model architecture '{model_type}' ({type(model).__name__}) has no family adapter. "
            f"Supported: {', '.join(sorted(ADAPTERS))}. An adapter states where the decoder blocks "
            f"live (an nn.ModuleList path such as `model.layers`), the modules before and after them, "
            f"and each block's nn.Linear names in execution order; add one to `ADAPTERS` in "
            f"harness/models/adapters.py (or call `register_adapter`). {_structure_hint(model)}"
        )
    blocks = adapter.blocks(model)
    if len(blocks):
        block = blocks[0]
        named = {n for group in adapter.linear_groups(block) for n in group}
        actual = set(_block_linears(block))
        missing = sorted(n for n in named if _resolve(block, n) is None)  # may already be quantized
        uncovered = sorted(actual - named)
        if missing or uncovered:
            raise ModelLoadError(
                f"adapter '{adapter.name}' does not match {type(model).__name__}: "
                f"{'layers not found in the block: ' + ', '.join(missing) + '. ' if missing else ''}"
                f"{'nn.Linear layers no group covers: ' + ', '.join(uncovered) + '. ' if uncovered else ''}"
                f"Fix its `groups` in harness/models/adapters.py."
            )
    return adapter


def iter_block_linears(model: nn.Module, adapter: FamilyAdapter) -> Iterator[tuple[str, int, nn.Linear]]:
    """(full name from the model root, block index, module) for every nn.Linear inside the blocks."""
    for index, block in enumerate(adapter.blocks(model)):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                yield f"{adapter.blocks_path}.{index}.{name}", index, module
