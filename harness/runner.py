"""Run one cell end to end: load, (calibrate), quantize, measure bits, save, evaluate, record.

The evaluations are plugins (`harness.evaluations`); `NonFiniteError` is re-exported from there.
"""
from __future__ import annotations

import logging
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from harness import environment
from harness.checkpoint import save_quantized
from harness.data import calibration_batch, token_hash
from harness.environment import peak_memory
from harness.evaluations import EvaluationContext, NonFiniteError, planned
from harness.metrics.bits import count_bits
from harness.models import load_model
from harness.models.adapters import iter_block_linears
from harness.quantize import quantize
from harness.quantizer import QuantizedLinear
from harness.record import RECORD_VERSION, CellRecord
from harness.registry import build_quantizer, get_method
from harness.store import ResultStore, atomic_write_text, check_json
from harness.suite import Cell

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The fields of `count_bits` a record's metrics carry (its per-layer bits go into `layers`).
_BITS_FIELDS = ("bits", "bits_formula", "bits_paper", "model_bits", "quantized_weights", "total_weights")


def cell_record(cell: Cell, status: str, **fields: Any) -> CellRecord:
    """The record of `cell` (`harness.record.CellRecord`): what identifies the cell, its `status`
    and `fields` (metrics, timings, error, ...; a `model` entry extends the cell's)."""
    method = get_method(cell.method)
    model = {"label": cell.model.label, "id": cell.model.id, **fields.pop("model", {})}
    return CellRecord.model_validate({
        "version": RECORD_VERSION,
        "key": cell.key,
        "label": cell.label,
        "suite": cell.suite,
        "model": model,
        "method": cell.method,
        "method_label": cell.method_label,
        "budget": cell.budget,
        "params": cell.params,
        "reference": not method.modifies_weights,
        "cell": cell.model_dump(mode="json"),
        **({"stand_in": cell.stand_in} if cell.stand_in else {}),
        "status": status,
        **fields,
    })


#: What went wrong, in the ``error.kind`` field of a failed record.
FAILURE_KINDS = ("exception", "nonfinite", "oom", "timeout", "worker_died")


def failed_record(
    cell: Cell,
    error_type: str,
    message: str,
    tb: str | None,
    *,
    kind: str = "exception",
    attempts: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> CellRecord:
    """A failed record: ``error`` holds type, kind (see FAILURE_KINDS), message, the traceback
    text, the number of attempts (worker deaths) and, once written by :func:`record_failure`,
    ``traceback_file`` (relative to the store root)."""
    return cell_record(
        cell, "failed",
        error={"type": error_type, "kind": kind, "message": message, "traceback": tb, "attempts": attempts},
        environment=environment.capture(None),
        executor=provenance,
        finished_at=_now(),
    )


def record_failure(store: ResultStore, record: CellRecord) -> CellRecord:
    """Write a failed record's traceback to ``logs/<key>.traceback.txt``, then the record.

    Returns the record now in the store (an earlier ``ok`` record of the key wins over this one).
    """
    raw = record.dump()
    error = raw["error"]
    path = store.traceback_path(record.key)
    header = f"{record.label} ({record.key}): {error['type']}: {error['message']}"
    atomic_write_text(path, f"{header}\n\n{error.get('traceback') or ''}")
    record = CellRecord.model_validate({**raw, "error": {**error, "traceback_file": str(path.relative_to(store.root))}})
    store.put(record)
    return store.get(record.key) or record


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
) -> CellRecord:
    """Execute `cell` and write its record (ok or failed) into `store`; returns the record now
    in the store. `provenance` (executor type, attempt, attempt id, host) goes into `record["executor"]`."""
    try:
        record = _execute(cell, store, progress=progress, base_dir=base_dir, provenance=provenance)
    except Exception as exc:  # a failed cell is recorded; the suite goes on (MemoryError included)
        kind, message = classify_exception(exc)
        logger.error("cell %s failed: %s: %s", cell.label, type(exc).__name__, message)
        tb = traceback.format_exc()
        return record_failure(store, failed_record(cell, type(exc).__name__, message, tb, kind=kind, provenance=provenance))
    store.put(record)
    shutil.rmtree(store.checkpoint_dir(cell.key), ignore_errors=True)  # only needed until the record exists
    return store.get(cell.key) or record


def _execute(
    cell: Cell, store: ResultStore, *, progress: bool, base_dir: Path | None, provenance: dict[str, Any] | None
) -> CellRecord:
    """load -> calibrate -> quantize (-> end-to-end fine-tuning) -> bits, size, save -> each
    requested evaluation (`harness.evaluations`); returns the ok record."""
    t0 = time.perf_counter()
    device = environment.resolve_device(cell.device)
    dtype = _DTYPES[cell.dtype]
    method_cls = get_method(cell.method)
    method_cls.validate_environment()
    quantizer = build_quantizer(method_cls, params=cell.params)

    loaded = load_model(cell.model, dtype=dtype, device=device, progress=progress, base_dir=base_dir)
    model, tokenizer, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    default_seqlen = cell.model.seqlen or adapter.default_seqlen(model.config)
    t_loaded = time.perf_counter()

    calibration, calibration_info = _calibrate(cell, tokenizer, default_seqlen, base_dir)
    linear_names = [name for name, _, _ in iter_block_linears(model, adapter)]
    layers = quantize(
        model, quantizer, adapter=adapter, calibration=calibration, seed=cell.seed,
        progress=progress, checkpoint_dir=store.checkpoint_dir(cell.key),
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

    metrics, saved_model = _bits_size_save(cell, store, model, tokenizer, linear_names, layers)
    context = EvaluationContext(
        cell=cell, model=model, tokenizer=tokenizer, adapter=adapter, store=store, device=device, dtype=dtype,
        quantized=method_cls.modifies_weights, default_seqlen=default_seqlen, metrics=MappingProxyType(metrics),
        progress=progress, base_dir=base_dir,
    )
    for name, evaluation in planned(cell, quantized=method_cls.modifies_weights):
        if name in metrics:  # a plugin registered under the name of a bits field
            raise ValueError(f"evaluation '{name}' would replace the metric of that name; register it under another name")
        result = evaluation.run(context)
        try:  # here, so that the cell fails with a record naming the evaluation (not when it is stored)
            check_json(result)
        except TypeError as exc:
            raise TypeError(
                f"evaluation '{name}' returned a result that cannot be written as JSON ({exc}); return only dicts, "
                f"lists, strings, numbers, booleans and None"
            ) from exc
        metrics[name] = result
    t_done = time.perf_counter()

    return cell_record(
        cell, "ok",
        model={"family": adapter.name, "source": loaded.source, "seqlen_default": default_seqlen},
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
        executor=provenance,
    )


def _bits_size_save(
    cell: Cell, store: ResultStore, model: torch.nn.Module, tokenizer: Any, linear_names: list[str],
    layers: list[dict[str, Any]],
) -> tuple[dict[str, Any], Path | None]:
    """The metrics every cell has (bits, stored size) and where the model was saved (None: not
    saved); each entry of the pipeline's `layers` log gets its layer's measured bits (in place)."""
    bits = count_bits(model, linear_names=linear_names)
    per_layer = {entry["name"]: entry for entry in bits["layers"]}
    for entry in layers:
        entry.update({k: v for k, v in per_layer.get(entry["name"], {}).items() if k not in entry})
    saved_model = None
    if cell.save_model:  # exactly the evaluated model, for reloading, inspection and export
        saved_model = store.model_dir(cell.key)
        save_quantized(model, saved_model, tokenizer=tokenizer, exact=True)
    # the size: the directory in the float16 deployment format, written next to the results (a
    # model-sized file may not fit a small /tmp) and removed again
    with store.scratch_dir("size") as tmp:
        size_bytes = save_quantized(model, Path(tmp) / "model", tokenizer=tokenizer)
    return {**{name: bits[name] for name in _BITS_FIELDS}, "size_bytes": size_bytes}, saved_model


def _calibrate(
    cell: Cell, tokenizer: Any, default_seqlen: int, base_dir: Path | None
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """The cell's calibration tokens [n, seqlen] and their record entry (None, None: data-free)."""
    if cell.calibration is None:
        return None, None
    calib = cell.calibration
    generator = torch.Generator().manual_seed(calib.seed if calib.seed is not None else cell.seed)
    tokens = calibration_batch(
        calib.source, tokenizer, calib.num_sequences, calib.seqlen or default_seqlen, generator, base_dir=base_dir
    )
    info = {
        "source": calib.source,
        "num_sequences": int(tokens.shape[0]),
        "seqlen": int(tokens.shape[1]),
        "seed": calib.seed,
        "dtype": calib.dtype,
        "token_hash": token_hash(tokens),
    }
    return tokens, info


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
