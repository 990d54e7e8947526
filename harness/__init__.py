"""ptq-harness: benchmark and compare post-training quantization methods for LLMs."""
from harness.quantizer import (
    LayerStats,
    MethodConfig,
    QuantContext,
    QuantizedLinear,
    Quantizer,
    StoredTensor,
)
from harness.registry import get_method, register_method

__version__ = "0.1.0"

__all__ = [
    "LayerStats",
    "MethodConfig",
    "QuantContext",
    "QuantizedLinear",
    "Quantizer",
    "StoredTensor",
    "get_method",
    "register_method",
    "__version__",
]
