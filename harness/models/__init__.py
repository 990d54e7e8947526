"""Model loading (embedded models, local directory, GGUF file, hub id) and family adapters."""
from harness.models.adapters import (
    ADAPTERS,
    FamilyAdapter,
    default_seqlen,
    get_adapter,
    iter_block_linears,
    register_adapter,
)
from harness.models.embedded import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    cache_root,
    embedded_gguf_path,
    embedded_model,
    ensure_embedded_cache,
)
from harness.models.loading import LoadedModel, load_model, resolve_model_path

__all__ = [
    "ADAPTERS",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "FamilyAdapter",
    "LoadedModel",
    "cache_root",
    "default_seqlen",
    "embedded_gguf_path",
    "embedded_model",
    "ensure_embedded_cache",
    "get_adapter",
    "iter_block_linears",
    "load_model",
    "register_adapter",
    "resolve_model_path",
]
