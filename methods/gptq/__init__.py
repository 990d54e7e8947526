"""GPTQ: second-order error compensation onto per-group integer grids, packed in the standard
GPTQ checkpoint layout."""
from methods.gptq.config import GPTQConfig
from methods.gptq.layer import GPTQLinear, export_gptq_checkpoint, load_gptq_checkpoint
from methods.gptq.quantizer import GPTQQuantizer

__all__ = ["GPTQConfig", "GPTQLinear", "GPTQQuantizer", "export_gptq_checkpoint", "load_gptq_checkpoint"]
