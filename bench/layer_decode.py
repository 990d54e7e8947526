"""One packed layer at decode (1 token): its fast path against dequantize-then-matmul and
against the dense layer, with the fast path's max relative error against the dequantized
reference, on the embedded model's linear shapes (CPU) or LLaMA-2-7B's (`--shapes llama2-7b`,
e.g. on CUDA, where the fast paths are the Triton kernels and the dense layer is float16).

Usage: python bench/layer_decode.py [--device cpu|cuda] [--shapes embedded|llama2-7b] [--repeats 200]
       [--threads 1] [--out bench/results/layer_decode_cpu.md]

On CPU each timing is the best of `--repeats` calls after 10 warm-up calls, in microseconds
(best, not median: on a shared 2-core machine other processes inflate medians); the layer's
weights are warm in the cache, so the dense layer is at its fastest here (whole-model decode,
where weights stream from memory, is bench/throughput.py). On CUDA a host clock around eager
calls would measure launch overhead (20-40 us) and a 7B layer fits in the 50 MB L2: the fast
path and the dense layer are timed as CUDA-graph replays (CUDA events) of one call on each of
enough copies of the layer to stream at least 128 MiB per round, best of 5 replays. float32
rows use the float32 fast path; the bfloat16 row of RTN/GPTQ uses torch's packed int4 kernel
(error against the bfloat16 reference).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.formats import FORMATS, _generator  # noqa: E402

SHAPES = {
    "embedded": {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (192, 576), "gate_proj/up_proj": (1536, 576),
                 "down_proj": (576, 1536)},
    "llama2-7b": {"q/k/v/o_proj": (4096, 4096), "gate_proj/up_proj": (11008, 4096), "down_proj": (4096, 11008)},
}
ROWS = {
    "cpu": [("rtn-4b-g64", torch.float32), ("rtn-4b-g64", torch.bfloat16), ("gptq-2b-g64-actorder", torch.float32),
            ("gptq-2b-g64-actorder", torch.bfloat16), ("aqlm-1x8", torch.float32), ("aqlm-2x8", torch.float32),
            ("crvq-1x8+3x8", torch.float32)],
    "cuda": [(fmt, torch.float16) for fmt in FORMATS],
}


def best_us(fn, repeats: int, device: torch.device) -> float:
    """Best of `repeats` timings in microseconds (on CUDA: mean of 20 calls per timing)."""
    for _ in range(10):
        fn()
    inner = 20 if device.type == "cuda" else 1
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) / inner)
    return min(times) * 1e6


def graph_us(calls: list, device: torch.device, rounds: int = 10) -> float:
    """CUDA: best time per call (us) of a CUDA graph running `calls` (one per weight copy)
    `rounds` times, best of 5 replays; NaN (with a message) when capture fails."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up off the capture stream (compilation, plans)
        for _ in range(3):
            for call in calls:
                call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(rounds):
                for call in calls:
                    call()
    except Exception as exc:
        torch.cuda.synchronize(device)
        print(f"capture failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        return float("nan")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize(device)
        best = min(best, start.elapsed_time(end) * 1e3 / (rounds * len(calls)))
    return best


def copies_for(nbytes: int, target: int = 128 * 2**20, most: int = 32) -> int:
    """Copies of a `nbytes` layer that stream at least `target` bytes per round (at most `most`)."""
    return max(1, min(most, -(-target // max(nbytes, 1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shapes", choices=list(SHAPES), default="embedded")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)  # the dense weights (a script, not library code)
    lines = [
        f"# Packed layers at decode (1 token), {args.device}, {args.shapes} shapes", "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the start. Microseconds, "
        + ("CUDA-graph replays over >= 128 MiB of layer copies (dequantize+matmul: eager, host clock)."
           if device.type == "cuda" else f"best of {args.repeats}."), "",
        "| shape [out x in] | format | dtype | path | fast path | dequantize+matmul | dense layer | fast / dense "
        "| max rel err |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for label, (out, inp) in SHAPES[args.shapes].items():
            dense = nn.Linear(inp, out, bias=False, device=device)
            nn.init.normal_(dense.weight, std=0.02)
            for fmt, dtype in ROWS[args.device]:
                layer = FORMATS[fmt](dense, _generator(f"{label}:{fmt}", 0, device)).to(device)
                x = torch.randn(1, inp, generator=gen).to(device=device, dtype=dtype)
                dense_d = nn.Linear(inp, out, bias=False, device=device, dtype=dtype)
                dense_d.weight.copy_(dense.weight)
                ref = layer.reference_forward(x).float()
                fast = layer(x).float()
                err = float((fast - ref).abs().max() / ref.abs().max())
                t_deq = best_us(lambda: layer.reference_forward(x), max(10, args.repeats // 10), device)
                if device.type == "cuda":
                    stored = sum(t.numel() * t.element_size() for t in layer.buffers())
                    layers = [layer] + [FORMATS[fmt](dense, _generator(f"{label}:{fmt}:{i}", 0, device)).to(device)
                                        for i in range(1, copies_for(stored))]
                    denses = [dense_d] + [nn.Linear(inp, out, bias=False, device=device, dtype=dtype)
                                          for _ in range(1, copies_for(out * inp * dense_d.weight.element_size()))]
                    t_fast = graph_us([lambda q=q: q(x) for q in layers], device)
                    t_dense = graph_us([lambda d=d: d(x) for d in denses], device)
                    del layers, denses
                else:
                    t_fast = best_us(lambda: layer(x), args.repeats, device)
                    t_dense = best_us(lambda: dense_d(x), args.repeats, device)
                dt = str(dtype).removeprefix("torch.")
                lines.append(f"| {label} {out}x{inp} | {fmt} | {dt} | {layer.path_used()} | {t_fast:.1f} | "
                             f"{t_deq:.1f} | {t_dense:.1f} | {t_fast / t_dense:.2f} | {err:.1e} |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
