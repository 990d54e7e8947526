"""Run one cell end to end: load, (calibrate), quantize, measure bits, save, evaluate, record."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness import environment
from harness.environment import peak_memory
from harness.checkpoint import save_quantized
from harness.data import calibration_batch, token_hash
from harness.data.windows import eval_text_windows
from harness.metrics.agreement import logit_agreement
from harness.metrics.bits import count_bits
from harness.metrics.perplexity import perplexity
from harness.models import load_model
from harness.models.adapters import iter_block_linears
from harness.quantize import quantize
from harness.quantizer import QuantizedLinear
from harness.registry import get_method
from harness.store import ResultStore, atomic_write_text
from harness.suite import Cell

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def base_record(cell: Cell) -> dict[str, Any]:
    method = get_method(cell.method)
    return {
        "key": cell.key,
        "label": cell.label,
        "suite": cell.suite,
        "model": {"label": cell.model.label, "id": cell.model.id},
        "method": cell.method,
        "method_label": cell.method_label,
        "budget": cell.budget,
        "params": cell.params,
        "reference": not method.modifies_weights,
        "cell": cell.model_dump(mode="json"),
        **({"stand_in": cell.stand_in} if cell.stand_in else {}),
    }


#: What went wrong, in the ``error.kind`` field of a failed record.
FAILURE_KINDS = ("exception", "nonfinite", "oom", "timeout", "worker_died")


class NonFiniteError(RuntimeError):
    """A quantized layer or an evaluation loss is NaN or infinite."""


def failed_record(
    cell: Cell,
    error_type: str,
    message: str,
    tb: str | None,
    *,
    kind: str = "exception",
    attempts: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A failed record: ``error`` holds type, kind (see FAILURE_KINDS), message, the traceback
    text, the number of attempts (worker deaths) and, once written by :func:`record_failure`,
    ``traceback_file`` (relative to the store root)."""
    record = base_record(cell)
    record.update(
        status="failed",
        error={"type": error_type, "kind": kind, "message": message, "traceback": tb, "attempts": attempts},
        environment=environment.capture(None),
        executor=provenance,
        finished_at=_now(),
    )
    return record


def record_failure(store: ResultStore, record: dict[str, Any]) -> dict[str, Any]:
    """Write a failed record's traceback to ``logs/<key>.traceback.txt``, then the record.

    Returns the record now in the store (an earlier ``ok`` record of the key wins over this one).
    """
    error = record["error"]
    path = store.traceback_path(record["key"])
    header = f"{record['label']} ({record['key']}): {error['type']}: {error['message']}"
    atomic_write_text(path, f"{header}\n\n{error.get('traceback') or ''}")
    error["traceback_file"] = str(path.relative_to(store.root))
    store.put(record)
    return store.get(record["key"]) or record


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(kind, message) of an exception raised by a cell: out-of-memory errors say so."""
    message = str(exc)
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return "oom", f"out of memory ({type(exc).__name__}): {message or 'allocation failed'}"
    if isinstance(exc, NonFiniteError):
        return "nonfinite", message
    return "exception", message


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_cell(
    cell: Cell,
    store: ResultStore,
    *,
    progress: bool = True,
    base_dir: Path | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Execute `cell` and write its record (ok or failed) into `store`; returns the record now
    in the store. `provenance` (executor type, attempt, attempt id, host) goes into `record["executor"]`."""
    try:
        record = _execute(cell, store, progress=progress, base_dir=base_dir)
    except Exception as exc:  # a failed cell is recorded; the suite goes on (MemoryError included)
        kind, message = classify_exception(exc)
        logger.error("cell %s failed: %s: %s", cell.label, type(exc).__name__, message)
        tb = traceback.format_exc()
        return record_failure(store, failed_record(cell, type(exc).__name__, message, tb, kind=kind, provenance=provenance))
    record["executor"] = provenance
    store.put(record)
    shutil.rmtree(checkpoint_dir(store, cell), ignore_errors=True)  # only needed until the record exists
    return store.get(cell.key) or record


def checkpoint_dir(store: ResultStore, cell: Cell) -> Path:
    return store.root / "checkpoints" / cell.key


def zeroshot_cache_dir(store: ResultStore, cell: Cell) -> Path:
    """`<root>/zeroshot/<model key>/`: lm-eval results per task of the cell's quantized model.

    The model key hashes the cell without its evaluations, so a changed evaluation list (a
    new task, another perplexity dataset) reuses the tasks already evaluated.
    """
    payload = cell.model_dump(mode="json", exclude={"suite", "save_model", "stand_in", "evaluations", "base_seed"})
    payload = {k: v for k, v in payload.items() if v is not None}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return store.root / "zeroshot" / hashlib.sha256(blob.encode()).hexdigest()[:16]


def _zero_shot(cell: Cell, model: torch.nn.Module, tokenizer: Any, store: ResultStore) -> dict[str, Any]:
    """The cell's zero-shot metrics; an error of the whole evaluation (e.g. lm-eval missing) is
    recorded as `{"error": ...}` so that the cell's other metrics are still written."""
    from harness.metrics.zeroshot import evaluate_zero_shot

    spec = cell.evaluations.zero_shot
    try:
        result = evaluate_zero_shot(
            model, tokenizer, spec.tasks, batch_size=spec.batch_size, limit=spec.limit,
            cache_dir=zeroshot_cache_dir(store, cell),
        )
    except Exception as exc:
        logger.error("%s: zero-shot evaluation failed: %s: %s", cell.label, type(exc).__name__, exc)
        return {"tasks": {}, "errors": list(spec.tasks), "error": {"type": type(exc).__name__, "message": str(exc)}}
    return result.to_dict()  # (each failing task is logged by the evaluator)


def _execute(cell: Cell, store: ResultStore, *, progress: bool, base_dir: Path | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    device = environment.resolve_device(cell.device)
    dtype = _DTYPES[cell.dtype]
    method_cls = get_method(cell.method)
    method_cls.validate_environment()
    quantizer = method_cls(method_cls.Config.model_validate(cell.params))

    loaded = load_model(cell.model, dtype=dtype, device=device, progress=progress, base_dir=base_dir)
    model, tokenizer, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    default_seqlen = cell.model.seqlen or adapter.default_seqlen(model.config)
    t_loaded = time.perf_counter()

    calibration_info = None
    calibration = None
    if cell.calibration is not None:
        calib = cell.calibration
        seqlen = calib.seqlen or default_seqlen
        generator = torch.Generator().manual_seed(calib.seed if calib.seed is not None else cell.seed)
        calibration = calibration_batch(
            calib.source, tokenizer, calib.num_sequences, seqlen, generator, base_dir=base_dir
        )
        calibration_info = {
            "source": calib.source,
            "num_sequences": int(calibration.shape[0]),
            "seqlen": int(calibration.shape[1]),
            "seed": calib.seed,
            "dtype": calib.dtype,
            "token_hash": token_hash(calibration),
        }

    linear_names = [name for name, _, _ in iter_block_linears(model, adapter)]
    layers = quantize(
        model, quantizer, adapter=adapter, calibration=calibration, seed=cell.seed,
        progress=progress, checkpoint_dir=checkpoint_dir(store, cell),
        calibration_dtype=_DTYPES[cell.calibration.dtype] if cell.calibration else torch.float32,
    )
    t_quantized = time.perf_counter()
    finetune_log = None
    if cell.finetune_e2e is not None:  # knowledge distillation from the unquantized model, loaded again
        from harness.finetune_e2e import finetune_e2e

        teacher = load_model(cell.model, dtype=dtype, device=device, progress=progress, base_dir=base_dir).model
        finetune_log = finetune_e2e(model, teacher, adapter, calibration, cell.finetune_e2e, seed=cell.seed, progress=progress)
        del teacher
    t_tuned = time.perf_counter()
    check_finite_layers(model)

    bits = count_bits(model, linear_names=linear_names)
    saved_model = None
    if cell.save_model:  # exactly the evaluated model, for reloading, inspection and export
        saved_model = store.model_dir(cell.key)
        save_quantized(model, saved_model, tokenizer=tokenizer, exact=True)
    # the size: the directory in the float16 deployment format, written next to the results (a
    # model-sized file may not fit a small /tmp) and removed again
    with tempfile.TemporaryDirectory(prefix=".size-", dir=store.root) as tmp:
        size_bytes = save_quantized(model, Path(tmp) / "model", tokenizer=tokenizer)

    metrics: dict[str, Any] = {
        "bits": bits["bits"],
        "bits_formula": bits["bits_formula"],
        "bits_paper": bits["bits_paper"],
        "model_bits": bits["model_bits"],
        "quantized_weights": bits["quantized_weights"],
        "total_weights": bits["total_weights"],
        "size_bytes": size_bytes,
    }
    ppl_spec = cell.evaluations.perplexity
    if ppl_spec is not None:
        metrics["perplexity"] = {}
        for dataset in ppl_spec.datasets:
            seqlen = ppl_spec.seqlen or default_seqlen
            evaluated = eval_text_windows(
                dataset, tokenizer, seqlen, max_windows=ppl_spec.max_windows, text_bytes=ppl_spec.text_bytes,
                base_dir=base_dir,
            )
            windows = evaluated.windows
            result = perplexity(
                model, windows, batch_size=ppl_spec.batch_size, progress=progress, desc=f"ppl {dataset}",
                window_bytes=evaluated.window_bytes,
            )
            if not math.isfinite(result.nll):
                raise NonFiniteError(
                    f"{dataset} perplexity: the mean loss is {result.nll} (NaN/inf): the quantized model "
                    f"produces non-finite logits; check the method's params (e.g. a larger group size or more bits)"
                )
            metrics["perplexity"][dataset] = {
                **result.to_dict(),
                "token_hash": token_hash(windows if isinstance(windows, torch.Tensor) else torch.cat(windows)),
                **({"text_bytes": evaluated.text_bytes, "text_sha256": evaluated.text_sha256} if evaluated.text_bytes else {}),
            }
            logger.info(
                "%s: %s perplexity %.3f, %s bits/byte (%d windows of %d)", cell.label, dataset, result.ppl,
                f"{result.bpb:.4f}" if result.bpb is not None else "no", result.windows, seqlen,
            )
    if cell.evaluations.zero_shot is not None:  # a failing task is recorded there; the cell stays ok
        metrics["zero_shot"] = _zero_shot(cell, model, tokenizer, store)
    if method_cls.modifies_weights:  # every quantized cell: do the decode kernels compute the evaluated model?
        metrics["agreement"] = logit_agreement(model)
    if cell.evaluations.throughput is not None:
        metrics["throughput"] = _throughput(cell, model, dtype=dtype, device=device, progress=progress, base_dir=base_dir)
    t_done = time.perf_counter()

    per_layer = {entry["name"]: entry for entry in bits["layers"]}
    for entry in layers:
        entry.update({k: v for k, v in per_layer.get(entry["name"], {}).items() if k not in entry})

    record = base_record(cell)
    record.update(
        status="ok",
        model={**record["model"], "family": adapter.name, "source": loaded.source, "seqlen_default": default_seqlen},
        metrics=metrics,
        calibration=calibration_info,
        **({"finetune_e2e": finetune_log} if finetune_log else {}),
        layers=layers,
        saved_model=str(saved_model) if saved_model else None,
        timings={
            "load_s": round(t_loaded - t0, 3),
            "quantize_s": round(t_quantized - t_loaded, 3),
            **({"finetune_e2e_s": round(t_tuned - t_quantized, 3)} if finetune_log else {}),
            "eval_s": round(t_done - t_tuned, 3),
            "total_s": round(t_done - t0, 3),
            **peak_memory(device),
        },
        environment={
            **environment.capture(device),
            "seeds": {"cell": cell.seed, "calibration": cell.calibration.seed if cell.calibration else None},
        },
        error=None,
        finished_at=_now(),
    )
    return record


def _throughput(
    cell: Cell, model: torch.nn.Module, *, dtype: torch.dtype, device: torch.device, progress: bool,
    base_dir: Path | None,
) -> dict[str, Any]:
    """Decode throughput of the cell's model and, in the same run (repeats interleaved), of the
    unquantized model loaded again; each result row gets `speedup_vs_reference`."""
    from harness.metrics.throughput import DecodeSettings, decode_throughput

    spec = cell.evaluations.throughput
    settings = DecodeSettings(
        batch_sizes=tuple(spec.batch_sizes), prompt_len=spec.prompt_len, new_tokens=spec.new_tokens,
        warmup=spec.warmup, repeats=spec.repeats, cuda_graphs=spec.cuda_graphs, seed=cell.seed,
    )
    models = {"model": model}
    if spec.reference and get_method(cell.method).modifies_weights:
        models["reference"] = load_model(cell.model, dtype=dtype, device=device, progress=progress, base_dir=base_dir).model
    records = decode_throughput(models, settings, progress=progress)
    result = records["model"]
    reference = records.get("reference")
    if reference is not None:
        result["reference"] = {k: reference[k] for k in ("weights_gib", "results")}
        for row, ref_row in zip(result["results"], reference["results"]):
            row["speedup_vs_reference"] = row["tokens_per_s"] / ref_row["tokens_per_s"]
    return result


def check_finite_layers(model: torch.nn.Module) -> None:
    """Raise NonFiniteError naming the first quantized layer that stores a NaN/inf float
    (scales, zero points, codebooks, bias): its dequantized weight would not be finite.
    Only the stored float tensors are read (no dequantization), so this is cheap."""
    for name, module in model.named_modules():
        if not isinstance(module, QuantizedLinear):
            continue
        tensors = [(t.name, t.tensor) for t in module.stored_tensors()]
        if getattr(module, "bias", None) is not None:
            tensors.append(("bias", module.bias))
        for tensor_name, tensor in tensors:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise NonFiniteError(
                    f"quantized layer '{name}' has non-finite weights: its stored '{tensor_name}' holds NaN or "
                    f"inf after quantization; check the method's params (scales that overflow float16, a "
                    f"diverged optimisation)"
                )
