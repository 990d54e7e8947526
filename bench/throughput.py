"""Decode throughput of every quantized format next to the unquantized model, one run.

Usage:
  python bench/throughput.py --model embedded --device cpu --dtypes float32 bfloat16 \\
      --out bench/results/throughput_cpu_embedded
  python bench/throughput.py --model llama2-7b-shapes --device cuda --dtypes float16 \\
      --out bench/results/throughput_gpu_llama2_7b_shapes

Models: `embedded` (SmolLM2-135M, the quickstart's model), `llama2-7b-shapes` (LLaMA-2-7B's
config with random weights, no download; `--layers` keeps fewer decoder blocks, e.g. on CPU) or
`tiny-shapes` (a 1-block LLaMA of hidden size 128: rehearses the script on CPU, e.g. under
Triton's interpreter).
Formats (bench/formats.py): RTN quantized for real, GPTQ/AQLM/CRVQ with their exact packed
layouts and random codes (decode speed does not depend on the code values). Every format
shares the dense model's embeddings and head. For each dtype, all formats and the dense
reference are measured in one `decode_throughput` call per batch size (repeats interleaved)
after each format's fast path was checked against its dequantized reference (`logit_agreement`).
Writes <out>.json (every record) and <out>.md (the tables) after every batch size, so a run
stopped by a time limit keeps what it measured.

Checks (`--strict`, the default on CUDA and under Triton's interpreter): every quantized layer
took its Triton kernel, every format agrees with its reference and, on CUDA with graphs on, every
decode was timed as a CUDA graph; otherwise the tables gain a "Problems" section and the script
exits with status 3 (after writing them): eager timings on a GPU are host-bound and say nothing
about the kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.formats import FORMATS, build_variant  # noqa: E402
from harness import environment  # noqa: E402
from harness.metrics.agreement import logit_agreement, quantized_layers  # noqa: E402
from harness.metrics.throughput import DecodeSettings, decode_throughput  # noqa: E402
from methods.common.triton_support import failed_kernels, interpreting  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DENSE_NAME = "dense"


def dense_model(name: str, dtype: torch.dtype, device: torch.device, layers: int | None) -> torch.nn.Module:
    """The unquantized model: the embedded SmolLM2-135M, or LLaMA-2-7B shapes with random weights."""
    if name == "embedded":
        from harness.models import load_model

        return load_model("smollm2-135m", dtype=dtype, device=device, progress=False).model
    from transformers import AutoModelForCausalLM, LlamaConfig

    if name == "tiny-shapes":  # every format's group size (64, 128, vectors of 8) divides 128 and 256
        shape = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=layers or 1,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    else:
        shape = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers or 32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    config = LlamaConfig(**shape, rms_norm_eps=1e-5, tie_word_embeddings=False)
    with torch.device(device):  # random init where it runs, in its dtype (this script seeds torch once)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def bits_per_weight(model: torch.nn.Module) -> float | None:
    layers = quantized_layers(model).values()
    weights = sum(m.num_weights for m in layers)
    return sum(m.stored_bits() for m in layers) / weights if weights else None


def run_dtype(args: argparse.Namespace, dtype_name: str, device: torch.device, done) -> dict:
    """Every format of one dtype; `done(records)` is called after each batch size."""
    dtype = DTYPES[dtype_name]
    dense = dense_model(args.model, dtype, device, args.layers)
    models, agreement = {DENSE_NAME: dense}, {}
    for fmt in args.formats:
        models[fmt] = build_variant(dense, fmt, seed=args.seed)
        agreement[fmt] = logit_agreement(models[fmt], tokens=args.agreement_tokens)
        print(f"{dtype_name} {fmt}: agreement max rel diff {agreement[fmt]['max_rel_diff']:.2e} "
              f"{'ok' if agreement[fmt]['agree'] else 'DISAGREE'}, paths {agreement[fmt]['paths']}", flush=True)
    records: dict = {}
    for batch in args.batch_sizes:
        settings = DecodeSettings(
            batch_sizes=(batch,), prompt_len=args.prompt_len,
            new_tokens=args.new_tokens if batch == 1 or args.new_tokens_batched is None else args.new_tokens_batched,
            warmup=args.warmup, repeats=args.repeats, cuda_graphs=not args.no_cuda_graphs, seed=args.seed,
        )
        measured = decode_throughput(models, settings, progress=True)
        for name, record in measured.items():
            if name not in records:
                records[name] = record
            else:
                records[name]["results"] += record["results"]
            records[name]["settings"]["batch_sizes"] = [r["batch_size"] for r in records[name]["results"]]
        for name, record in records.items():
            record["agreement"] = agreement.get(name)
            record["bits_per_weight"] = bits_per_weight(models[name])
            ref = {r["batch_size"]: r["tokens_per_s"] for r in records[DENSE_NAME]["results"]}
            for row in record["results"]:
                row["speedup_vs_dense"] = row["tokens_per_s"] / ref[row["batch_size"]]
        done(records)
    return records


def problems(result: dict, strict_paths: bool) -> list[str]:
    """What makes the run unfit to report: a format that disagrees with its reference, a layer
    off its Triton kernel (`strict_paths`), a decode on CUDA timed without the CUDA graph."""
    found = []
    graphs = result["device_type"] == "cuda" and not result["settings"]["no_cuda_graphs"]
    for dtype_name, records in result["dtypes"].items():
        for name, rec in records.items():
            agreement = rec.get("agreement")
            if agreement and not agreement["agree"]:
                found.append(f"{dtype_name} {name}: fast path disagrees with its reference "
                             f"(max rel diff {agreement['max_rel_diff']:.2e}, worst layer {agreement['worst_layer']})")
            for row in rec["results"]:
                off = {p: n for p, n in row["paths"].items() if not p.startswith("triton-")}
                if strict_paths and off:
                    found.append(f"{dtype_name} {name} batch {row['batch_size']}: layers off the Triton kernels {off}")
                if graphs and not row["cuda_graphs"]:
                    found.append(f"{dtype_name} {name} batch {row['batch_size']}: no CUDA graph "
                                 f"({row['cuda_graphs_note']})")
    if result.get("failed_kernels"):
        found.append(f"kernels switched off at their first launch: {result['failed_kernels']}")
    return found


def markdown(result: dict) -> str:
    lines = [f"# Decode throughput: {result['model']} on {result['device_name']}", "",
             f"Settings: {json.dumps(result['settings'])}; torch threads {result['torch_threads']}; "
             f"load average at start {result['load_average']}.", "",
             "Formats other than RTN carry random codes in the method's exact packed layout (speed does not depend "
             "on the code values). `agreement` = max |fast - dequantized reference| / max |reference| over the "
             f"logits of {result['settings'].get('agreement_tokens', 16)} decoded tokens; ok = within 1e-3 in "
             "float32, and in bfloat16/float16 every layer's fast "
             "path within twice its same-dtype reference's error (+1 ulp) against float32 (see the JSON's "
             "`worst_layer`). Achieved GB/s = bytes one decode step reads (weights as the path reads "
             "them + the static KV cache) x steps/s; copy GB/s = a large device copy (read + write); "
             "% of peak = achieved / the card's nominal bandwidth (the copy bandwidth where none is known).", ""]
    for dtype_name, records in result["dtypes"].items():
        dense = records[DENSE_NAME]
        bw = dense["memory_bandwidth"]
        peak = bw["nominal_gbs"] or bw["copy_gbs"]
        lines += [f"## {dtype_name} (copy bandwidth {bw['copy_gbs']:.1f} GB/s"
                  + (f", nominal {bw['nominal_gbs']:.0f} GB/s" if bw["nominal_gbs"] else "") + ")", "",
                  f"| format | bits/weight | path (layers) | batch | tok/s per seq (median) | min-max | x {DENSE_NAME} "
                  "| ms/token | MB read/step | achieved GB/s | % of peak | CUDA graphs | agreement |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for name, rec in records.items():
            paths = ", ".join(f"{p} ({n})" for p, n in rec["paths"].items()) or "dense"
            bits = f"{rec['bits_per_weight']:.3f}" if rec["bits_per_weight"] else "-"
            agreement = rec["agreement"]
            agree = f"{agreement['max_rel_diff']:.1e} {'ok' if agreement['agree'] else 'DISAGREE'}" if agreement else "-"
            for row in rec["results"]:
                lines.append(
                    f"| {name} | {bits} | {paths} | {row['batch_size']} | {row['tokens_per_s']:.2f} | "
                    f"{row['tokens_per_s_min']:.2f}-{row['tokens_per_s_max']:.2f} | {row['speedup_vs_dense']:.2f} | "
                    f"{row['ms_per_token']:.2f} | {row['bytes_per_step'] / 1e6:.1f} | {row['achieved_gbs']:.2f} | "
                    f"{100 * row['achieved_gbs'] / peak:.1f} | {'yes' if row['cuda_graphs'] else 'no'} | {agree} |")
        lines.append("")
    if result.get("problems"):
        lines += ["## Problems", "", *(f"- {p}" for p in result["problems"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["embedded", "llama2-7b-shapes", "tiny-shapes"], default="embedded")
    parser.add_argument("--layers", type=int, default=None, help="decoder blocks of llama2-7b-shapes (default 32)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None,
                        help="default: float32 on CPU, float16 on CUDA")
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--prompt-len", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--new-tokens-batched", type=int, default=None,
                        help="decode steps for batch sizes above 1 (default: --new-tokens)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agreement-tokens", type=int, default=16, help="decoded tokens of the agreement check")
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                        help="exit 3 on a problem (default: on CUDA and under TRITON_INTERPRET=1)")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # random init of llama2-7b-shapes (a script, not library code)
    device = environment.resolve_device(args.device)
    dtypes = args.dtypes or (["float16"] if device.type == "cuda" else ["float32"])
    kernels_expected = device.type == "cuda" or interpreting()
    strict = kernels_expected if args.strict is None else args.strict
    result = {
        "model": args.model + (f" ({args.layers} layers)" if args.layers else ""),
        "device_name": environment.device_name(device),
        "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "environment": environment.capture(device),
        "dtypes": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> str:
        result["failed_kernels"] = failed_kernels()
        result["problems"] = problems(result, strict_paths=kernels_expected)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        text = markdown(result)
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
        return text

    for d in dtypes:
        run_dtype(args, d, device, lambda records, d=d: (result["dtypes"].__setitem__(d, records), write()))
    print(write())
    if strict and result["problems"]:
        print(f"\nFAILED: {len(result['problems'])} problem(s), see the Problems section above", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
