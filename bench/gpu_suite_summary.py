"""One table of a results store's cell records (bench/gpu_check.sh, step 3): status, perplexity,
decode tok/s and its ratio to the unquantized model, CUDA graphs, the layers' compute paths.

Usage: python bench/gpu_suite_summary.py RESULTS_DIR [--expect-cells 5] [--cuda]
Exit status 1 when a cell is not ok, fewer cells than expected have records, or (--cuda) a
throughput row ran without a CUDA graph or a quantized layer off its Triton kernel.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(results: Path) -> list[dict]:
    out = []
    for path in sorted((results / "records").glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and "status" in rec and "label" in rec:
            out.append(rec)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--expect-cells", type=int, default=0)
    parser.add_argument("--cuda", action="store_true", help="require CUDA graphs and Triton paths")
    args = parser.parse_args()
    records = rows(args.results)
    problems = []
    if len(records) < args.expect_cells:
        problems.append(f"{len(records)} cell records, expected {args.expect_cells}")
    print("| cell | status | perplexity | tok/s (b1) | x unquantized | CUDA graphs | paths | error |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for rec in sorted(records, key=lambda r: r["label"]):
        metrics = rec.get("metrics") or {}
        ppl = next(iter((metrics.get("perplexity") or {}).values()), {}).get("ppl")
        tp = metrics.get("throughput") or {}
        row = (tp.get("results") or [{}])[0]
        paths = tp.get("paths") or {}
        error = rec.get("error") or {}
        message = f"{error.get('kind', '')}: {error.get('message', '')}"[:200] if error else ""
        print(f"| {rec['label']} | {rec['status']} | {ppl if ppl is None else f'{ppl:.3f}'} | "
              f"{row.get('tokens_per_s', float('nan')):.1f} | {row.get('speedup_vs_reference', float('nan')):.2f} | "
              f"{'yes' if row.get('cuda_graphs') else 'no'} | {json.dumps(paths)} | {message} |")
        if rec["status"] != "ok":
            problems.append(f"{rec['label']}: {rec['status']} {message}")
        elif args.cuda:
            if not row.get("cuda_graphs"):
                problems.append(f"{rec['label']}: no CUDA graph ({row.get('cuda_graphs_note')})")
            off = {p: n for p, n in paths.items() if not p.startswith("triton-")}
            if off:
                problems.append(f"{rec['label']}: layers off the Triton kernels {off}")
    if problems:
        print("\nProblems:\n" + "\n".join(f"- {p}" for p in problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
