"""Subprocess entry point of every executor: run one cell and write its record.

Usage (internal): python -m harness.worker RESULTS_DIR CELL_KEY [--base-dir DIR] [--no-progress]
    [--executor NAME --attempt N --attempt-id HEX]
The executor, attempt number and attempt id are written into the record (``record["executor"]``).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

from harness.runner import run_cell
from harness.store import ResultStore
from harness.suite import Cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker")
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("key")
    parser.add_argument("--base-dir", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--executor", default="local")
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--attempt-id", default=None)
    args = parser.parse_args(argv)

    store = ResultStore(args.results_dir)
    cell = Cell.model_validate(json.loads(store.cell_spec_path(args.key).read_text()))
    log_path = store.log_path(args.key)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(log_path, mode="a"), logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)
    provenance = {"type": args.executor, "attempt": args.attempt, "attempt_id": args.attempt_id, "host": platform.node()}
    record = run_cell(cell, store, progress=not args.no_progress, base_dir=args.base_dir, provenance=provenance)
    return 0 if record.ok else 1


if __name__ == "__main__":
    sys.exit(main())
