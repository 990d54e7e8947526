"""Native GPTQ vs the external backends on the same real layers and the same H.

Usage (gptqmodel is not a project dependency; see methods/gptq/BACKENDS.md):
    python -m venv --system-site-packages /tmp/gptqmodel-venv
    /tmp/gptqmodel-venv/bin/pip install 'gptqmodel==7.6.0'
    /tmp/gptqmodel-venv/bin/python bench/gptq_backends.py [--block 3] [--num-sequences 8] [--seqlen 512]

Captures the inputs of every linear of one block of the embedded SmolLM2-135M (full-precision
model, `--num-sequences` x `--seqlen` calibration tokens of the embedded corpus), forms
H = mean x xᵀ (float64), and quantizes each layer with every available backend through
`GPTQQuantizer.quantize_linear`. Reports, per setting, the relative output error
tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) of the stored (packed) layer, summed over the block's linears and
averaged as a ratio to native, and the quantization seconds. A backend that cannot run is
listed with its ImportError. Takes about 1.5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_calibration_options, bench_parser, best_of, embedded_calibration, load_average, parse_args, row, table_head,
    write_result,
)
from harness.quantizer import LayerStats, QuantContext  # noqa: E402
from methods.gptq import GPTQConfig, GPTQQuantizer  # noqa: E402
from tests.fixtures.hessians import capture_hessians  # noqa: E402

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SETTINGS = [
    ("4 bit g128", dict(bits=4, group_size=128)),
    ("4 bit g128 act_order", dict(bits=4, group_size=128, act_order=True)),
    ("3 bit g64", dict(bits=3, group_size=64)),
    ("3 bit g64 act_order", dict(bits=3, group_size=64, act_order=True)),
    ("2 bit g64", dict(bits=2, group_size=64)),
    ("4 bit per-row sym", dict(bits=4, group_size=-1, symmetric=True)),
]
BACKENDS = ["native", "gptqmodel", "auto-gptq"]


def main() -> None:
    parser = bench_parser()
    parser.add_argument("--block", type=int, default=3)
    add_calibration_options(parser, num_sequences=8, dtype=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per layer (the fastest counts)")
    args = parse_args(parser)

    backends: dict[str, str | None] = {}
    for backend in BACKENDS:
        try:
            GPTQQuantizer(GPTQConfig(backend=backend))
            backends[backend] = None
        except ImportError as exc:
            backends[backend] = str(exc)
    runnable = [b for b, err in backends.items() if err is None]

    loaded, ids = embedded_calibration(args)
    stats = capture_hessians(loaded.model, ids.split(4), [f"model.layers.{args.block}.{n}" for n in LINEARS])

    versions = f"torch {torch.__version__}"
    if "gptqmodel" in runnable:
        versions += f", gptqmodel {importlib.metadata.version('gptqmodel')}"
    lines = [
        f"# GPTQ backends on SmolLM2-135M block {args.block} (7 linears), same H",
        "",
        f"{versions}; H from {args.num_sequences}x{args.seqlen} calibration tokens; error = "
        "sum over the block's linears of tr(ΔW H ΔWᵀ) / sum of tr(W H Wᵀ), of the stored layers; "
        "'vs native' = mean over layers of the per-layer error ratio; seconds = all 7 layers, "
        f"fastest of {args.repeats} runs each (load average {load_average():.1f} at the start)",
        "",
        *table_head(["setting", "backend", "rel. error", "vs native", "seconds"], left=2),
    ]
    for label, params in SETTINGS:
        native_errors: list[float] = []
        for backend in runnable:
            quantizer = GPTQQuantizer(GPTQConfig(backend=backend, **params))
            num = den = 0.0
            ratios, seconds = [], 0.0
            for i, (name, (H, count)) in enumerate(stats.items()):
                linear = loaded.model.get_submodule(name)
                W = linear.weight.detach()
                ctx = QuantContext(layer_name=name, block_index=args.block, generator=torch.Generator())
                seconds += best_of(lambda: quantizer.quantize_linear(linear, LayerStats(H, count), ctx), args.repeats,
                                   warmup=0)
                rel = ctx.log[-1]["rel_error"]
                energy = float(((W.double() @ H) * W.double()).sum())
                num, den = num + rel * energy, den + energy
                if backend == "native":
                    native_errors.append(rel)
                ratios.append(rel / native_errors[i])
            mean_ratio = sum(ratios) / len(ratios)
            lines.append(row([label, backend, f"{num / den:.5f}", f"{mean_ratio:.3f}", f"{seconds:.2f}"]))
    lines.append("")
    for backend, err in backends.items():
        if err is not None:
            lines.append(f"- `{backend}` not run: {err}")
    write_result("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
