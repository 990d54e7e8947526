"""Published AQLM (plain k-means init) under reduced settings: how far from converged each
setting leaves a layer, against the Hessian-weighted variant (issue P11, suites/quickstart.yaml).

Usage: python bench/quickstart_settings.py [--out bench/results/quickstart_settings.md]

Layers: block 10 q_proj and down_proj of the embedded model with the H of
tests/methods/aqlm/layer_reference.py; 1 codebook x 8 bits, g8, lr 1e-4, tolerance 0.01, seed 0,
one thread; CPU seconds (process time, robust to other processes on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.aqlm.algorithm import CodebookSpec, aqlm_quantize  # noqa: E402
from tests.methods.aqlm.layer_reference import layer_reference  # noqa: E402

#: label -> (kmeans_metric, kmeans_iters, max_epochs, steps_per_epoch)
SETTINGS = {
    "published, old quickstart (k-means 5, 2 x 10)": ("euclidean", 5, 2, 10),
    "published, k-means 50, 2 x 10": ("euclidean", 50, 2, 10),
    "published, k-means 20, 3 x 10": ("euclidean", 20, 3, 10),
    "published, k-means 20, 4 x 5": ("euclidean", 20, 4, 5),
    "published, k-means 20, 6 x 0 (code passes only)": ("euclidean", 20, 6, 0),
    "published, new quickstart (k-means 20, 6 x 10)": ("euclidean", 20, 6, 10),
    "published, k-means 50, 4 x 25": ("euclidean", 50, 4, 25),
    "published, paper (k-means 50, <= 50 x 100)": ("euclidean", 50, 50, 100),
    "harness, old quickstart (k-means 5, 2 x 10)": ("hessian", 5, 2, 10),
    "harness, k-means 20, 3 x 10": ("hessian", 20, 3, 10),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [f"load average at the start: {os.getloadavg()[0]:.1f}", "",
             "| layer | setting | error after init | final error | epochs | CPU s |", "|---|---|---:|---:|---:|---:|"]
    for layer in ("self_attn.q_proj", "mlp.down_proj"):
        W, H, _ = layer_reference(layer=f"model.layers.10.{layer}")
        for label, (metric, iters, epochs, steps) in SETTINGS.items():
            t0 = time.process_time()
            r = aqlm_quantize(W, H, [CodebookSpec(8)], in_group_size=8, generator=torch.Generator().manual_seed(0),
                              max_epochs=epochs, steps_per_epoch=steps, kmeans_iters=iters, kmeans_metric=metric)
            lines.append(f"| {layer} | {label} | {r.history[0]:.4f} | {r.rel_error:.4f} | {r.epochs} | "
                         f"{time.process_time() - t0:.1f} |")
            print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("# Published AQLM under reduced settings (layer reference, block 10)\n\n"
                                  + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
