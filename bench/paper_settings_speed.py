"""Where the time of a paper-settings AQLM/CRVQ cell goes, and the same cell before/after a change.

Usage:
  python bench/paper_settings_speed.py [--blocks 2] [--methods aqlm,crvq] [--windows 40]
      [--before COMMIT] [--threads 2] [--settings 'fast={"steps_per_epoch": 25, "lr": 4e-4}']
      [--out bench/results/paper_settings_speed.md]

Each run quantizes the first `--blocks` blocks of the embedded model (SmolLM2-135M) with the
published budget-1 algorithm at the paper settings of suites/paper_settings_embedded.yaml
(110 x 512 calibration tokens in float32, <= 50 epochs x 100 Adam steps, tolerance 0.01,
k-means 50 iterations, block fine-tuning up to 10 epochs with patience 3, seed 0), the other
blocks staying in full precision, then evaluates perplexity on the first `--windows` held-out
windows of 512 tokens (with a 95% bootstrap interval over windows). Every run is its own
subprocess (peak RSS per run). Reported per run: seconds in capture, layer optimisation (per
linear, summed), block fine-tuning, the rest of the pipeline (H accumulation, propagation),
evaluation; epochs per layer; fine-tuning epochs per block; peak RSS; perplexity.

`--settings NAME=JSON` (repeatable) also runs the working tree with JSON merged into the paper
settings, right after the paper settings' run of each method: a settings change measured
before/after in one run. `--before COMMIT` also runs the code of COMMIT (`git archive` into a
temporary folder) for each method, interleaved with the working tree's, so both sides see the
same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER = {"max_epochs": 50, "steps_per_epoch": 100, "relative_mse_tolerance": 0.01, "kmeans_iters": 50,
         "beam_size": 1, "finetune": True, "finetune_lr": 1e-4, "finetune_betas": [0.9, 0.999],
         "finetune_batch_size": 8, "finetune_max_epochs": 10, "finetune_patience": 3, "finetune_keep_best": True}


class FirstBlocks:
    """A family adapter that shows the pipeline only the first `n` blocks."""

    def __init__(self, adapter, n: int):
        self._adapter, self._n = adapter, n

    def blocks(self, model):
        return list(self._adapter.blocks(model))[: self._n]

    def __getattr__(self, name):
        return getattr(self._adapter, name)


def worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, args.root)
    import torch

    torch.set_num_threads(args.threads)
    from harness.analysis.stats import perplexity_interval
    from harness.data.windows import calibration_batch, eval_text_windows
    from harness.metrics.perplexity import perplexity
    from harness.models import load_model
    from harness.pipeline import run_pipeline
    from harness.registry import build_quantizer

    quantizer = build_quantizer(args.method, 1, {**PAPER, **json.loads(args.overrides)})
    t0 = time.perf_counter()
    loaded = load_model("smollm2-135m", dtype=torch.float32, device=torch.device("cpu"), progress=False)
    tokenizer = loaded.tokenizer
    calibration = calibration_batch("embedded", tokenizer, 110, 512, torch.Generator().manual_seed(0))
    t1 = time.perf_counter()
    logs = run_pipeline(loaded.model, quantizer, FirstBlocks(loaded.adapter, args.blocks), calibration, seed=0,
                        progress=False, compute_dtype=torch.float32)
    t2 = time.perf_counter()
    windows = eval_text_windows("embedded", tokenizer, 512, max_windows=args.windows).windows
    result = perplexity(loaded.model, windows, progress=False)
    t3 = time.perf_counter()
    ci = perplexity_interval(result.window_nll)
    layers = [e for e in logs if "epochs" in e]
    tunes = [e for e in logs if "finetune_epochs" in e]
    layer_s = sum(float(e.get("seconds", 0.0)) for e in layers)
    tune_s = sum(float(e["finetune_seconds"]) for e in tunes)
    return {
        "method": args.method, "root": args.label, "blocks": args.blocks, "threads": args.threads,
        "load_s": t1 - t0, "pipeline_s": t2 - t1, "layer_s": layer_s, "finetune_s": tune_s,
        "other_pipeline_s": (t2 - t1) - layer_s - tune_s, "eval_s": t3 - t2,
        "epochs": [int(e["epochs"]) for e in layers], "finetune_epochs": [int(e["finetune_epochs"]) for e in tunes],
        "rel_errors": [round(float(e["rel_error"]), 5) for e in layers],
        "ppl": result.ppl, "ppl_low": ci.low, "ppl_high": ci.high, "windows": result.windows,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "load_avg": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--methods", default="aqlm,crvq")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", default=None, help="a commit to compare against (run interleaved)")
    parser.add_argument("--settings", action="append", default=[], metavar="NAME=JSON",
                        help="also run the working tree with JSON merged into the paper settings")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="aqlm", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(REPO), help=argparse.SUPPRESS)
    parser.add_argument("--label", default="working tree", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    roots = [("working tree", str(REPO), "{}")]
    for spec in args.settings:
        name, _, overrides = spec.partition("=")
        json.loads(overrides)
        roots.append((f"working tree, {name}", str(REPO), overrides))
    tmp = None
    if args.before:
        tmp = tempfile.TemporaryDirectory(prefix="before-")
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp.name], input=archive, check=True)
        roots.insert(0, (f"before ({args.before[:7]})", tmp.name, "{}"))
    runs = []
    for method in args.methods.split(","):
        for label, root, overrides in roots:
            cmd = [sys.executable, __file__, "--worker", "--method", method, "--root", root, "--label", label,
                   "--overrides", overrides,
                   "--blocks", str(args.blocks), "--windows", str(args.windows), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    lines = [
        f"First {args.blocks} blocks of SmolLM2-135M at the paper settings (published budget-1 algorithms, seed 0), "
        f"{args.threads} threads; perplexity on the first {args.windows} held-out windows of 512 tokens (the other "
        "blocks in full precision).",
        "",
        "| method | code | layer optimisation s | block fine-tuning s | other pipeline s | evaluation s | epochs per "
        "layer | fine-tuning epochs | peak RSS GiB | ppl [95% CI] | load avg |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['method']} | {r['root']} | {r['layer_s']:.1f} | {r['finetune_s']:.1f} | {r['other_pipeline_s']:.1f} | "
            f"{r['eval_s']:.1f} | {' '.join(map(str, r['epochs']))} | {' '.join(map(str, r['finetune_epochs']))} | "
            f"{r['peak_rss_gib']:.2f} | {r['ppl']:.3f} [{r['ppl_low']:.3f}, {r['ppl_high']:.3f}] | {r['load_avg']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
