"""Whether the optional Triton kernels can be used (never a hard dependency).

The CUDA fast paths of the packed layers (`methods/aqlm/kernels.py`, `methods/common/kernels.py`)
need the `triton` package (it ships with the CUDA builds of PyTorch). Under Triton's
interpreter (`TRITON_INTERPRET=1`, set before the kernel modules are imported) the same kernels
run on CPU tensors, which is how the CPU tests check them against the dequantized references.

`import triton` working does not mean a kernel can launch: the first launch compiles it and
builds its launcher with the machine's C compiler. `guarded_launch` runs every launch; when the
first launch of a kernel raises, that kernel is switched off for the process with a warning and
the layer takes its torch path (the record's `paths` then show it); once a kernel has launched,
later errors are real and propagate.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Hashable
from functools import lru_cache
from typing import TypeVar

import torch

__all__ = ["failed_kernels", "guarded_launch", "kernels_usable", "num_programs_target", "triton_available"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
_launched: set[Hashable] = set()
_failed: dict[Hashable, str] = {}


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


def guarded_launch(key: Hashable, launch: Callable[[], T]) -> T | None:
    """`launch()`, or None when the kernel `key` (e.g. (path, dtype, device type)) cannot run:
    its first launch raised (compilation, launcher build), now or earlier in this process."""
    if key in _launched:
        return launch()
    if key in _failed:
        return None
    try:
        result = launch()
    except Exception as exc:  # first launch only: a broken toolchain must not break the layer
        _failed[key] = f"{type(exc).__name__}: {str(exc)[:500]}"
        message = f"Triton kernel {key} failed at its first launch, using the torch path instead: {_failed[key]}"
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return None
    _launched.add(key)
    return result


def failed_kernels() -> dict[str, str]:
    """Kernels switched off by a failed first launch: {str(key): error}."""
    return {str(k): v for k, v in _failed.items()}
