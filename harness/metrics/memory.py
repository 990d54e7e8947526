"""Memory of a measurement: peak resident set (resettable on Linux) and memory bandwidth
(measured with a large copy, and the nominal figure of known GPUs)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

__all__ = ["copy_bandwidth_gbs", "nominal_bandwidth_gbs", "peak_rss_gib", "reset_peak_rss"]

#: Nominal memory bandwidth (GB/s) by a substring of `torch.cuda.get_device_name`, most specific first.
_NOMINAL_GBS = (
    ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
    ("L40S", 864.0), ("L4", 300.0), ("A10G", 600.0), ("RTX 4090", 1008.0), ("RTX 3090", 936.0),
    ("V100", 900.0), ("T4", 320.0),
)


def nominal_bandwidth_gbs(device: torch.device) -> float | None:
    """The card's nominal memory bandwidth in GB/s (None for CPUs and unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbs for key, gbs in _NOMINAL_GBS if key in name), None)


def copy_bandwidth_gbs(device: torch.device, *, mib: int | None = None, repeats: int = 5) -> float:
    """Best of `repeats` copies of a `mib` MiB buffer (default 1024 on CUDA, 256 on CPU), as
    (bytes read + bytes written) / seconds / 1e9."""
    mib = mib or (1024 if device.type == "cuda" else 256)
    src = torch.empty(mib * 2**18, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy faults the pages in
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize(device)
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            seconds = time.perf_counter() - t0
        best = min(best, seconds)
    del src, dst
    return 2 * mib * 2**20 / best / 1e9


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux `clear_refs`); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB (since the last `reset_peak_rss`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
