"""CRVQ: channel-relaxed vector quantization — AQLM plus extended codebooks on the most
important input channels (see shared/spec/methods.md, "CRVQ")."""
from methods.crvq.algorithm import CRVQResult, critical_group_count, crvq_formula_bits, crvq_quantize
from methods.crvq.config import CRVQConfig
from methods.crvq.export import export_crvq_checkpoint
from methods.crvq.importance import channel_order, importance_scores
from methods.crvq.layer import CRVQLinear
from methods.crvq.quantizer import CRVQQuantizer

__all__ = [
    "CRVQConfig", "CRVQLinear", "CRVQQuantizer", "CRVQResult", "channel_order", "critical_group_count",
    "crvq_formula_bits", "crvq_quantize", "export_crvq_checkpoint", "importance_scores",
]
