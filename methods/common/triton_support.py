"""Whether the optional Triton kernels can be used (never a hard dependency).

The CUDA fast paths of the packed layers (`methods/aqlm/kernels.py`, `methods/common/kernels.py`)
need the `triton` package (it ships with the CUDA builds of PyTorch). Under Triton's
interpreter (`TRITON_INTERPRET=1`, set before the kernel modules are imported) the same kernels
run on CPU tensors, which is how the CPU tests check them against the dequantized references.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

__all__ = ["kernels_usable", "num_programs_target", "triton_available"]


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when `import triton` works."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install (missing driver libraries)
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels_usable(x: torch.Tensor) -> bool:
    """Triton kernels can run on `x`: a CUDA tensor with `triton` importable, or any tensor
    under Triton's interpreter."""
    return (x.is_cuda or interpreting()) and triton_available()


@lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_programs_target(x: torch.Tensor) -> int:
    """How many programs a GEMV launch should have to fill the device: 4 per SM on CUDA
    (1 under the interpreter, where parallelism does not matter)."""
    if not x.is_cuda:
        return 1
    return 4 * _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())
