"""Published AQLM/CRVQ layer optimisation at the paper settings against the same Adam budget in
fewer steps (issue P11): `steps_per_epoch` x `lr` held at 100 x 1e-4 = 0.01 (Adam's beta1 is
0, so a step moves each coordinate by about lr: the total move per epoch is kept).

On the block-10 layers of tests/methods/aqlm/layer_reference.py, through the quantizers (budget-1
presets, published variant; lr, steps, <= 50 epochs, tolerance 0.01, k-means 50 iterations),
one thread. Per method, layer and setting: CPU and wall seconds (minimum over `--repeats`
interleaved runs with seed 0), epochs, Adam steps and the relative output error (seed 0), and
the error at `--seeds` further seeds (the seed spread, the yardstick for "equal quality").

Usage: python bench/aqlm_step_budget.py [--settings 100x1e-4,25x4e-4] [--repeats 3] [--seeds 1,2]
       [--cases aqlm:self_attn.q_proj,...]
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

from harness.plugin import LayerStats, QuantContext, relative_output_error  # noqa: E402
from methods.aqlm.config import AQLMConfig  # noqa: E402
from methods.aqlm.quantizer import AQLMQuantizer  # noqa: E402
from methods.crvq.config import PRESETS as CRVQ_PRESETS  # noqa: E402
from methods.crvq.config import CRVQConfig  # noqa: E402
from methods.crvq.quantizer import CRVQQuantizer  # noqa: E402
from tests.methods.aqlm.layer_reference import layer_reference  # noqa: E402

CASES = ("aqlm:self_attn.q_proj,aqlm:self_attn.v_proj,aqlm:mlp.gate_proj,aqlm:mlp.down_proj,"
         "crvq:self_attn.q_proj,crvq:mlp.gate_proj")


def _quantizer(method: str, steps: int, lr: float):
    settings = {"lr": lr, "steps_per_epoch": steps, "max_epochs": 50, "relative_mse_tolerance": 0.01,
                "kmeans_iters": 50}
    if method == "aqlm":
        return AQLMQuantizer(AQLMConfig(**settings))
    return CRVQQuantizer(CRVQConfig(**CRVQ_PRESETS[1], **settings))


def run_once(method: str, layer: str, steps: int, lr: float, seed: int) -> dict[str, float]:
    """One layer optimisation: CPU s, wall s, epochs, relative output error."""
    name = f"model.layers.10.{layer}"
    W, H, n = layer_reference(layer=name)
    linear = nn.Linear(W.shape[1], W.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(W)
    gen = torch.Generator().manual_seed(seed)
    ctx = QuantContext(layer_name=name, block_index=10, generator=gen, progress=False)
    cpu, wall = time.process_time(), time.perf_counter()
    q = _quantizer(method, steps, lr).quantize_linear(linear, LayerStats(H, n), ctx)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu": cpu, "wall": wall, "epochs": ctx.log[0]["epochs"],
            "error": relative_output_error(W, q.dequantize(), H)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", default="100x1e-4,25x4e-4", help="steps x lr, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", default="1,2", help="further seeds for the error spread ('' for none)")
    parser.add_argument("--cases", default=CASES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = [(int(s.split("x")[0]), float(s.split("x")[1])) for s in args.settings.split(",")]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the one-time torch.optim import
    print(f"torch {torch.__version__}, 1 thread, load average at start {os.getloadavg()[0]:.1f}")
    print("| method | layer | steps x lr | CPU s | wall s | epochs | Adam steps | rel. error (seed 0) | "
          f"rel. error seeds {','.join(map(str, seeds))} |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for case in args.cases.split(","):
        method, layer = case.split(":")
        runs: dict[tuple[int, float], list[dict[str, float]]] = {s: [] for s in settings}
        for _ in range(args.repeats):
            for s in settings:  # interleaved: the load changes between runs, not between settings
                runs[s].append(run_once(method, layer, *s, seed=0))
        for s in settings:
            r = runs[s]
            others = " ".join(f"{run_once(method, layer, *s, seed=seed)['error']:.5f}" for seed in seeds)
            print(f"| {method} | {layer} | {s[0]} x {s[1]:g} | {min(x['cpu'] for x in r):.1f} | "
                  f"{min(x['wall'] for x in r):.1f} | {r[0]['epochs']} | {r[0]['epochs'] * s[0]} | "
                  f"{r[0]['error']:.5f} | {others} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
