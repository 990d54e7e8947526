"""Time to quantize the whole embedded model with one method, and the peak memory.

Usage: python bench/quantize_model.py --method gptq --params '{"bits": 4}' \
           [--num-sequences 128] [--seqlen 512] [--out bench/results/gptq4_quantize.json]

Measures the full calibrated path the harness uses (capture, H accumulation, per-layer
quantization, block propagation): wall time, peak resident memory (RSS high-water mark of
this process), and the model's perplexity on the first 32 evaluation windows as a sanity check.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from harness.data import calibration_batch, eval_windows
from harness.metrics.perplexity import perplexity
from harness.models import load_model
from harness.quantize import quantize
from harness.registry import get_method


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--params", default="{}", help="JSON params (merged over --budget preset)")
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--num-sequences", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--ppl-windows", type=int, default=32)
    parser.add_argument("--calibration-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    method = get_method(args.method)
    params = {**(method.presets(args.budget) if args.budget else {}), **json.loads(args.params)}
    quantizer = method(method.Config.model_validate(params))
    loaded = load_model("smollm2-135m", dtype=torch.float32, device="cpu", progress=False)
    generator = torch.Generator().manual_seed(0)
    calib = calibration_batch("embedded", loaded.tokenizer, args.num_sequences, args.seqlen, generator)

    start = time.perf_counter()
    logs = quantize(
        loaded.model, quantizer, adapter=loaded.adapter, calibration=calib, seed=0, progress=True,
        calibration_dtype=getattr(torch, args.calibration_dtype),
    )
    seconds = time.perf_counter() - start
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    windows = eval_windows("embedded", loaded.tokenizer, args.seqlen, max_windows=args.ppl_windows)
    ppl = perplexity(loaded.model, windows, progress=False).ppl
    result = {
        "method": args.method,
        "params": quantizer.config.model_dump(),
        "calibration": f"{args.num_sequences}x{args.seqlen} embedded, forward passes in {args.calibration_dtype}",
        "quantize_seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_rss_gib, 2),
        "layers": len([entry for entry in logs if "bits" in entry]),
        f"ppl_first_{args.ppl_windows}_windows": round(ppl, 3),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
