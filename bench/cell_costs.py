"""Cost of every finished cell of a results directory, from its records: load, quantize and
evaluation seconds, peak resident memory of the cell's worker process, and for calibrated
methods the summed per-layer and block fine-tuning seconds (the rest of `quantize_s` is the
calibration forward passes and H accumulation).

Usage: python bench/cell_costs.py results/quickstart [--out bench/results/quickstart_costs.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


def rows(results: Path) -> list[str]:
    lines = [
        "| cell | bits | quantize s | layers s | fine-tune s | eval s | total s | peak RSS GiB | finished |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    records = [json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))]
    for r in sorted(records, key=lambda r: r["label"]):
        if r.get("status") != "ok":
            lines.append(f"| {r['label']} | failed | | | | | | | {r.get('finished_at', '')} |")
            continue
        t, layers = r["timings"], r.get("layers") or []
        layer_s = sum(e.get("seconds", 0) or 0 for e in layers)
        tune_s = sum(e.get("finetune_seconds", 0) or 0 for e in layers)
        peak = t.get("peak_rss_gib")
        lines.append(
            f"| {r['label']} | {r['metrics']['bits']:.4f} | {t['quantize_s']:.0f} | {layer_s:.0f} | {tune_s:.0f} "
            f"| {t['eval_s']:.0f} | {t['total_s']:.0f} | {'' if peak is None else f'{peak:.2f}'} "
            f"| {r.get('finished_at', '')} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = "\n".join([
        f"# Cell costs: {args.results}", "",
        f"{platform.machine()}, {os.cpu_count()} CPUs. Timings are wall seconds of each cell's worker; "
        "cells that ran while other processes used the CPU are slower than on a quiet machine.", "",
        *rows(args.results), "",
    ])
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
