"""Time native `gptq_quantize` on each linear shape of SmolLM2-135M (CPU, float32 weights).

Usage: python bench/gptq_layer.py [--bits 4] [--repeats 3] [--threads N] [--out bench/results/gptq_layer.md]

Shapes are [out x in]: q/o_proj 576x576, k/v_proj 192x576, gate/up_proj 1536x576, down_proj
576x1536. H is a synthetic correlated second moment (the run time does not depend on its
values). Reports the best of `--repeats` runs after one warm-up (the minimum, because on a
shared 2-core machine other processes inflate the median by up to 100x through thread
oversubscription), per setting, and the estimate for all 30 blocks (7 linears each) of the
model. Runs in well under a minute.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    SHAPES, best_of, bench_parser, load_average, parse_args, processor, row, table_head, write_result,
)
from methods.gptq.algorithm import gptq_quantize  # noqa: E402

PER_BLOCK = {"q_proj/o_proj": 2, "k_proj/v_proj": 2, "gate_proj/up_proj": 2, "down_proj": 1}
SETTINGS = [("g128", dict(group_size=128)), ("g64", dict(group_size=64)),
            ("g128 act_order", dict(group_size=128, act_order=True)), ("per-row", dict(group_size=-1))]
NUM_BLOCKS = 30


def hessian(n: int, generator: torch.Generator) -> torch.Tensor:
    X = torch.randn(n, 2 * n, generator=generator, dtype=torch.float64)
    X = (torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=generator, dtype=torch.float64)) @ X
    return X @ X.T / X.shape[1]


def main() -> None:
    parser = bench_parser()
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_args(parser)
    gen = torch.Generator().manual_seed(0)
    H = {n: hessian(n, gen) for n in (576, 1536)}
    lines = [
        f"# native gptq_quantize, {args.bits} bits, SmolLM2-135M shapes",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {processor()}; "
        f"best of {args.repeats} runs after 1 warm-up, seconds per layer; load average "
        f"{load_average():.1f} at the start",
        "",
        *table_head(["shape [out x in]", *(name for name, _ in SETTINGS)]),
    ]
    per_model = {name: 0.0 for name, _ in SETTINGS}
    for label, (out, inp) in SHAPES.items():
        W = torch.randn(out, inp, generator=gen) * 0.05
        cells = []
        for name, params in SETTINGS:
            best = best_of(lambda: gptq_quantize(W, H[inp], bits=args.bits, **params), args.repeats, warmup=1)
            per_model[name] += best * PER_BLOCK[label] * NUM_BLOCKS
            cells.append(f"{best:.3f}")
        lines.append(row([f"{label} {out}x{inp}", *cells]))
    lines.append(row(["whole model (30 blocks x 7 linears)", *(f"{per_model[n]:.1f}" for n, _ in SETTINGS)]))
    write_result("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
