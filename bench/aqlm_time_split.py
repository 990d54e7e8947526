"""Where published AQLM's layer optimisation spends its CPU time: k-means init, Adam codebook
steps, code search, the rest (error evaluation, snapshots), on the block-10 layers of
tests/methods/aqlm/layer_reference.py at the paper settings (lr 1e-4, 100 steps per epoch,
<= 50 epochs, tolerance 0.01, k-means 50 iterations), one thread, CPU seconds.

Usage: python bench/aqlm_time_split.py [--layers self_attn.q_proj,mlp.gate_proj,mlp.down_proj]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods.aqlm.algorithm as alg  # noqa: E402
from tests.methods.aqlm.layer_reference import layer_reference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", default="self_attn.q_proj,mlp.gate_proj,mlp.down_proj")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - t0
        return wrapper

    alg.residual_kmeans_init = timed("k-means init", alg.residual_kmeans_init)
    alg.codebook_adam_steps = timed("Adam steps", alg.codebook_adam_steps)
    alg.code_step = timed("code search", alg.code_step)
    print("| layer | epochs | total CPU s | k-means init | Adam steps | code search | rest | rel. error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for layer in args.layers.split(","):
        W, H, _ = layer_reference(layer=f"model.layers.10.{layer}")
        spent.clear()
        t0 = time.process_time()
        r = alg.aqlm_quantize(W, H, [alg.CodebookSpec(8)], in_group_size=8, generator=torch.Generator().manual_seed(0),
                              max_epochs=50, steps_per_epoch=100, kmeans_iters=50, kmeans_metric="euclidean")
        total = time.process_time() - t0
        parts = [spent.get(k, 0.0) for k in ("k-means init", "Adam steps", "code search")]
        print(f"| {layer} | {r.epochs} | {total:.1f} | " + " | ".join(f"{p:.1f} ({100 * p / total:.0f}%)" for p in parts)
              + f" | {total - sum(parts):.1f} | {r.rel_error:.4f} |", flush=True)


if __name__ == "__main__":
    main()
