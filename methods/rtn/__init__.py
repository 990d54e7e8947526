"""RTN: round-to-nearest onto a per-row, per-group min-max integer grid (no calibration)."""
from methods.rtn.config import RTNConfig
from methods.rtn.layer import RTNLinear
from methods.rtn.quantizer import RTNQuantizer

__all__ = ["RTNConfig", "RTNLinear", "RTNQuantizer"]
