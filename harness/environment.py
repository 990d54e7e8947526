"""What a result was measured on: package versions, harness commit, device."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

_PACKAGES = (
    "ptq-harness", "torch", "transformers", "lm_eval", "gguf", "safetensors", "datasets", "pandas", "numpy",
    "accelerate", "ray", "submitit",
)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("the suite asks for `device: cuda` but no CUDA device is visible; use `device: auto` or `cpu`")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def visible_devices() -> list[str]:
    """Names of every CUDA device this process can see (``CUDA_VISIBLE_DEVICES`` applied), else the CPU."""
    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [device_name(torch.device("cpu"))]


def capture(device: torch.device | None) -> dict[str, Any]:
    """Package versions, harness commit, host, the device used (None: not known, e.g. for a
    worker that died) and every visible device."""
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "packages": versions,
        "git_commit": git_commit(),
        "device": device_name(device) if device is not None else None,
        "devices": visible_devices(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch_threads": torch.get_num_threads(),
    }


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory of this process so far: resident set size (GiB, from getrusage; the worker
    runs one cell per process, so this is the cell's peak) and, on CUDA, the allocator's peak."""
    import resource

    peak = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.type == "cuda" and torch.cuda.is_available():
        peak["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return peak
