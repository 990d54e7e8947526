"""Text sources (wikitext2, c4, ptb, redpajama, local files, the embedded corpus), evaluation
windows and the calibration sampler."""
from harness.data.sources import (
    EMBEDDED,
    HUB_DATASETS,
    clear_caches,
    embedded_text,
    token_stream,
    tokenize,
)
from harness.data.windows import calibration_batch, eval_windows, token_hash

__all__ = [
    "EMBEDDED",
    "HUB_DATASETS",
    "calibration_batch",
    "clear_caches",
    "embedded_text",
    "eval_windows",
    "token_hash",
    "token_stream",
    "tokenize",
]
