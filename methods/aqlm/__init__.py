"""AQLM: additive multi-codebook vector quantization through the layer's input statistics H."""
from methods.aqlm.algorithm import AQLMResult, CodebookSpec, aqlm_quantize
from methods.aqlm.config import AQLMConfig
from methods.aqlm.layer import AQLMLinear, aqlm_quantization_config
from methods.aqlm.quantizer import AQLMQuantizer

__all__ = [
    "AQLMConfig", "AQLMLinear", "AQLMQuantizer", "AQLMResult", "CodebookSpec", "aqlm_quantization_config",
    "aqlm_quantize",
]
