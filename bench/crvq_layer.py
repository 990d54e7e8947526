"""CRVQ on the layer reference: relative output error, bits and time with the default
configuration (the paper's main setting: basic 1x8-bit codebook over groups of 8 plus 3 extended
8-bit codebooks on 2% of the input channels, `wa` importance), no fine-tuning, and the same
optimisation settings as the AQLM layer reference (lr 1e-4, 100 Adam steps per epoch, at most
50 epochs, tolerance 0.01), for both channel orders (`reorder`).

Usage: python bench/crvq_layer.py [--seeds 3] [--out bench/results/crvq_layer.md]

Published reference (a reference implementation of CRVQ on this machine): relative output error
0.0248 in 14.2 s at 1.4645 bits. The one-time import of torch.optim happens before the clock.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.crvq.algorithm import crvq_formula_bits, crvq_quantize  # noqa: E402
from methods.crvq.config import PRESETS  # noqa: E402
from tests.methods.aqlm.layer_reference import layer_reference  # noqa: E402

REFERENCE_REL_ERROR, REFERENCE_SECONDS, REFERENCE_BITS = 0.0248, 14.2, 1.4645


def run(seeds: int) -> list[str]:
    W, H, _ = layer_reference()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    preset = PRESETS[1]
    ext = [preset["extended_nbits"]] * preset["num_extended_codebooks"]
    lines = [
        "## Layer reference: model.layers.10.self_attn.q_proj (576x576), CRVQ default (1x8 g8 + 3x8 "
        "extended on 2% of channels, `wa`), lr 1e-4, 100 steps/epoch, <= 50 epochs, tol 0.01, no fine-tuning",
        "",
        f"Published CRVQ reference: relative output error {REFERENCE_REL_ERROR} in {REFERENCE_SECONDS} s "
        f"at {REFERENCE_BITS} bits.",
        "",
        "| reorder | seed | rel. error | epochs | bits_paper | bits | wall s | CPU s | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for reorder in ("critical_first", "sorted"):
        errors, walls = [], []
        for seed in range(seeds):
            load = os.getloadavg()[0]
            gen = torch.Generator().manual_seed(seed)
            t0, c0 = time.perf_counter(), time.process_time()
            res = crvq_quantize(
                W, H, nbits=preset["nbits"], extended_nbits=ext, critical_ratio=preset["critical_ratio"],
                importance="wa", in_group_size=preset["in_group_size"], generator=gen, reorder=reorder,
                max_epochs=50, steps_per_epoch=100, lr=1e-4, relative_mse_tolerance=0.01,
            )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            args = (W.shape[0], W.shape[1], preset["in_group_size"], preset["nbits"], ext, res.n_crit)
            paper, bits = crvq_formula_bits(*args, permutation=False), crvq_formula_bits(*args, permutation=True)
            errors.append(res.aqlm.rel_error)
            walls.append(wall)
            lines.append(
                f"| {reorder} | {seed} | {res.aqlm.rel_error:.4f} | {res.aqlm.epochs} | {paper:.4f} | {bits:.4f} "
                f"| {wall:.2f} | {cpu:.2f} | {load:.1f} |"
            )
            print(lines[-1], flush=True)
        lines.append(
            f"| {reorder} | median | {statistics.median(errors):.4f} | | | | {statistics.median(walls):.2f} "
            f"(min {min(walls):.2f}) | | |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        "# CRVQ layer benchmark",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the start",
        "",
        *run(args.seeds),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
