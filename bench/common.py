"""What the bench scripts share: their common options, the embedded model with its calibration
batch, the SmolLM2-135M linear shapes, timing on a shared machine, and writing a result.

Timings are minima over repeats (`best_of`): on a shared 2-core machine other processes inflate
medians by large factors through thread oversubscription, so the load average is reported too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: The linear shapes [out, in] of SmolLM2-135M, by the layers that have them.
SHAPES = {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (192, 576), "gate_proj/up_proj": (1536, 576),
          "down_proj": (576, 1536)}


def bench_parser(description: str | None = None) -> argparse.ArgumentParser:
    """A parser with the options of every bench script: `--threads` (torch threads, default
    torch's) and `--out` (also write the result to this file). Parse with `parse_args`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result to this file")
    return parser


def add_calibration_options(
    parser: argparse.ArgumentParser, num_sequences: int = 128, seqlen: int = 512, dtype: str | None = "float32"
) -> None:
    """`--num-sequences` x `--seqlen` tokens of the embedded corpus, and (unless `dtype` is None)
    `--calibration-dtype` of the calibration forward passes."""
    parser.add_argument("--num-sequences", type=int, default=num_sequences)
    parser.add_argument("--seqlen", type=int, default=seqlen)
    if dtype is not None:
        parser.add_argument("--calibration-dtype", default=dtype, choices=["float32", "bfloat16"])


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed arguments, with `--threads` applied to torch."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def embedded_calibration(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    """(the embedded SmolLM2-135M in float32 on the CPU, its calibration batch of
    `args.num_sequences` x `args.seqlen` token ids of the embedded corpus, drawn with seed 0)."""
    from harness.data import calibration_batch
    from harness.models import load_model

    loaded = load_model("smollm2-135m", dtype=torch.float32, device=torch.device("cpu"), progress=False)
    ids = calibration_batch("embedded", loaded.tokenizer, args.num_sequences, args.seqlen,
                            torch.Generator().manual_seed(0))
    return loaded, ids


def calibration_label(args: argparse.Namespace) -> str:
    """E.g. '128x512 embedded, forward passes in bfloat16'."""
    return f"{args.num_sequences}x{args.seqlen} embedded, forward passes in {args.calibration_dtype}"


def processor() -> str:
    return platform.processor() or platform.machine()


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def machine_line() -> str:
    """torch version, threads, processor, CPUs and the load average now."""
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {processor()}, {os.cpu_count()} CPUs; "
            f"load average {load_average():.1f} at the start")


def warm_torch_optim() -> None:
    """Pay the one-time import of torch.optim (~1 s per process) before any clock starts."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def best_of(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Seconds of the fastest of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def timed(fn: Callable[[], T]) -> tuple[T, float, float, float]:
    """(fn(), wall seconds, process CPU seconds, load average before the call)."""
    load = load_average()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0, load


def seeded_runs(
    variants: Iterable[str], seeds: int, run: Callable[[str, torch.Generator], T],
    describe: Callable[[T], tuple[float, list[object]]],
) -> list[str]:
    """Markdown rows of `run(variant, generator seeded with seed)` for each variant and seed 0..seeds-1,
    printed as they come: variant, seed, relative error and the other cells of `describe(result)`,
    wall and CPU seconds, load average; after each variant's seeds, its median error and wall time."""
    lines = []
    for variant in variants:
        errors, walls = [], []
        for seed in range(seeds):
            result, wall, cpu, load = timed(lambda: run(variant, torch.Generator().manual_seed(seed)))
            error, cells = describe(result)
            errors.append(error)
            walls.append(wall)
            lines.append(row([variant, seed, f"{error:.4f}", *cells, f"{wall:.2f}", f"{cpu:.2f}", f"{load:.1f}"]))
            print(lines[-1], flush=True)
        median_wall = f"{statistics.median(walls):.2f} (min {min(walls):.2f})"
        median_error = f"{statistics.median(errors):.4f}"
        lines.append(row([variant, "median", median_error, *[""] * len(cells), median_wall, "", ""]))
    return lines


def section(title: str, columns: list[str], note: str | None = None, left: int = 1) -> list[str]:
    """A Markdown section up to its table's first row: '## title', `note` if any, and the table's
    header and alignment lines (the first `left` columns left-aligned, the others right-aligned)."""
    return [f"## {title}", "", *([note, ""] if note else []), *table_head(columns, left)]


def table_head(columns: list[str], left: int = 1) -> list[str]:
    """The header and alignment lines of a Markdown table: the first `left` columns left-aligned,
    the others (numbers) right-aligned."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * left + "---:|" * (len(columns) - left)]


def row(cells: list[object]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def write_result(text: str, out: Path | None) -> None:
    """Print `text` and, with `out`, write it there (parent folders created)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")


def write_json(result: dict[str, Any], out: Path | None) -> None:
    """`write_result` of `result` as indented JSON."""
    write_result(json.dumps(result, indent=1) + "\n", out)
