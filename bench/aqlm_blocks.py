"""AQLM per block on the embedded model: where the time goes (calibration passes, per-layer
quantization, block fine-tuning) and what fine-tuning gains, on the first few blocks.

Usage: python bench/aqlm_blocks.py --budget 1 --params '{"finetune": true}' [--blocks 3]
           [--num-sequences 128] [--seqlen 512] [--calibration-dtype bfloat16]
           [--out bench/results/aqlm_b1_blocks.json]

Wall times on a shared machine are inflated by other processes (see the load average); the
process CPU time is given too. Runs the harness pipeline (`run_pipeline`) on the embedded SmolLM2-135M cut to its first
`--blocks` decoder blocks. Per block: seconds of the 7 layer quantizations, of fine-tuning,
fine-tuning epochs and MSEs (train first/last epoch, validation start/best). The remainder of
the wall time is the calibration forward passes (capture, H accumulation, propagation), which
every calibrated method pays; whole-model time ~ blocks x per-block time (see quantize_model.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_calibration_options, bench_parser, calibration_label, embedded_calibration, load_average, parse_args,
    processor, timed, write_json,
)
from harness.pipeline import run_pipeline  # noqa: E402
from harness.registry import build_quantizer  # noqa: E402


def main() -> None:
    parser = bench_parser()
    parser.add_argument("--budget", type=int, default=1)
    parser.add_argument("--params", default="{}", help="JSON params merged over the budget's preset")
    parser.add_argument("--blocks", type=int, default=3)
    add_calibration_options(parser, dtype="bfloat16")
    args = parse_args(parser)

    quantizer = build_quantizer("aqlm", args.budget, json.loads(args.params))
    loaded, calib = embedded_calibration(args)
    model = loaded.model
    model.model.layers = model.model.layers[: args.blocks]
    model.config.num_hidden_layers = args.blocks
    logs, seconds, cpu_seconds, load = timed(lambda: run_pipeline(
        model, quantizer, loaded.adapter, calib, seed=0, progress=True,
        compute_dtype=getattr(torch, args.calibration_dtype),
    ))

    blocks = []
    for index in range(args.blocks):
        prefix = f"{loaded.adapter.blocks_path}.{index}"
        layers = [e for e in logs if "bits" in e and e["name"].startswith(prefix + ".")]
        tune = next((e for e in logs if e.get("name") == prefix and "finetune_epochs" in e), {})
        blocks.append({
            "block": index,
            "layers_seconds": round(sum(e["seconds"] for e in layers), 2),
            "layers_mean_rel_error": round(sum(e["rel_error"] for e in layers) / len(layers), 5),
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in tune.items() if k != "name"},
        })
    layer_s = sum(b["layers_seconds"] for b in blocks)
    tune_s = sum(b.get("finetune_seconds", 0.0) for b in blocks)
    write_json({
        "params": quantizer.config.model_dump(),
        "calibration": calibration_label(args),
        "blocks": args.blocks,
        "seconds_total": round(seconds, 1),
        "cpu_seconds_total": round(cpu_seconds, 1),
        "seconds_layers": round(layer_s, 1),
        "seconds_finetune": round(tune_s, 1),
        "seconds_calibration_passes": round(seconds - layer_s - tune_s, 1),
        "per_block": blocks,
        "machine": f"{processor()}, {torch.get_num_threads()} threads, load average {load:.1f} at the start",
        "torch": torch.__version__,
    }, args.out)


if __name__ == "__main__":
    main()
