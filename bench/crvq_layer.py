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

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    bench_parser, machine_line, parse_args, section, seeded_runs, warm_torch_optim, write_result,
)
from methods.crvq.algorithm import CRVQResult, crvq_formula_bits, crvq_quantize  # noqa: E402
from methods.crvq.config import PRESETS  # noqa: E402
from tests.methods.aqlm.layer_reference import layer_reference  # noqa: E402

REFERENCE_REL_ERROR, REFERENCE_SECONDS, REFERENCE_BITS = 0.0248, 14.2, 1.4645


def run(seeds: int) -> list[str]:
    W, H, _ = layer_reference()
    warm_torch_optim()
    preset = PRESETS[1]
    ext = [preset["extended_nbits"]] * preset["num_extended_codebooks"]

    def quantize(reorder: str, generator: torch.Generator) -> CRVQResult:
        return crvq_quantize(
            W, H, nbits=preset["nbits"], extended_nbits=ext, critical_ratio=preset["critical_ratio"],
            importance="wa", in_group_size=preset["in_group_size"], generator=generator, reorder=reorder,
            max_epochs=50, steps_per_epoch=100, lr=1e-4, relative_mse_tolerance=0.01,
        )

    def describe(res: CRVQResult) -> tuple[float, list[object]]:
        args = (W.shape[0], W.shape[1], preset["in_group_size"], preset["nbits"], ext, res.n_crit)
        paper, bits = crvq_formula_bits(*args, permutation=False), crvq_formula_bits(*args, permutation=True)
        return res.aqlm.rel_error, [res.aqlm.epochs, f"{paper:.4f}", f"{bits:.4f}"]

    return [
        *section("Layer reference: model.layers.10.self_attn.q_proj (576x576), CRVQ default (1x8 g8 + 3x8 "
                 "extended on 2% of channels, `wa`), lr 1e-4, 100 steps/epoch, <= 50 epochs, tol 0.01, no fine-tuning",
                 ["reorder", "seed", "rel. error", "epochs", "bits_paper", "bits", "wall s", "CPU s", "load avg"],
                 note=f"Published CRVQ reference: relative output error {REFERENCE_REL_ERROR} in {REFERENCE_SECONDS} s "
                 f"at {REFERENCE_BITS} bits."),
        *seeded_runs(("critical_first", "sorted"), seeds, quantize, describe),
    ]


def main() -> None:
    parser = bench_parser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parse_args(parser)
    lines = ["# CRVQ layer benchmark", "", machine_line(), "", *run(args.seeds), ""]
    write_result("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
