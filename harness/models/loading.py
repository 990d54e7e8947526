"""Load a model named in a suite: an embedded model, a local directory, a GGUF file or a hub id.

`load_model` returns the model (eval mode, on the device), its tokenizer, its family adapter
and a `source` record of what was actually loaded. Every failure is a `ModelLoadError` whose
message names the model and the fix. Hub ids never hang offline: when offline mode is set or
the hub does not answer a 3 s probe, only the local Hugging Face cache is read.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ModelLoadError
from harness.model_spec import ModelSpec
from harness.models.adapters import FamilyAdapter, get_adapter
from harness.models.embedded import EMBEDDED_MODELS, load_embedded, load_gguf
from harness.models.hub import hub_offline, offline_mode, offline_requested

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A loaded causal LM and what is needed to quantize and evaluate it.

    model: the `*ForCausalLM` module, eval mode, on the requested device and dtype.
    tokenizer: its Hugging Face tokenizer.
    adapter: where its blocks and linears are (`harness.models.adapters`).
    source: what was loaded: {"kind": embedded|gguf|local|hub, "id", "path", "revision", ...}.
    """

    model: nn.Module
    tokenizer: Any
    adapter: FamilyAdapter
    source: dict[str, Any]

    @property
    def default_seqlen(self) -> int:
        """The protocol's default window length for this model (min(context, 4096))."""
        return self.adapter.default_seqlen(self.model.config)


def resolve_model_path(model_id: str, base_dir: Path | None = None) -> Path | None:
    """An existing path given relative to the working directory or to `base_dir`, else None."""
    for base in (Path.cwd(), base_dir):
        if base is None:
            continue
        candidate = (Path(base) / os.path.expanduser(model_id)).resolve()
        if candidate.exists():
            return candidate
    return None


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Switch transformers' (and the hub's) progress bars off for the block, then restore them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled and was_enabled:
            hf_logging.enable_progress_bar()


def _load_local(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load the model directory {path} ({type(exc).__name__}: {exc}). A model directory "
            f"needs config.json, the weights (*.safetensors or pytorch_model.bin) and the tokenizer files, "
            f"as written by `save_pretrained` of the model and of its tokenizer."
        ) from exc
    return model, tokenizer


def _load_hub(model_id: str, revision: str | None, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = hub_offline()
    kwargs: dict[str, Any] = {"revision": revision, "local_files_only": offline}
    try:
        with offline_mode(offline):
            tokenizer = AutoTokenizer.from_pretrained(model_id, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, **kwargs)
    except Exception as exc:
        rev = f" at revision '{revision}'" if revision else ""
        if offline:
            why = "offline mode is set (HF_HUB_OFFLINE)" if offline_requested() else "it did not answer"
            raise ModelLoadError(
                f"model '{model_id}'{rev} is not in the local Hugging Face cache and the hub cannot be "
                f"reached: {why}. Download it where the hub is reachable (`hf download {model_id}`) "
                f"into this machine's cache, or save it to a local directory and give that path as the "
                f"model id (the embedded models {', '.join(EMBEDDED_MODELS)} work offline)."
            ) from exc
        raise ModelLoadError(
            f"could not load model '{model_id}'{rev} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{exc}). Check the id and revision, log in for gated models (`hf auth login`), or give a "
            f"local directory instead."
        ) from exc
    return model, tokenizer


def load_model(
    spec: ModelSpec | str,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    progress: bool = True,
    base_dir: Path | None = None,
) -> LoadedModel:
    """Load the model a suite names.

    spec: the `ModelSpec` (or its id): an embedded model ('smollm2-135m', 'gemma3-270m'), a local directory, a `.gguf`
        file (relative paths are read from the working directory, then from `base_dir`, e.g.
        the suite's folder) or a hub id `org/name` (with `spec.revision`).
    dtype, device: the floating-point dtype and device of the returned model.
    Raises ModelLoadError naming the model and the fix.
    """
    spec = ModelSpec(id=spec) if isinstance(spec, str) else spec
    device = torch.device(device)
    start = time.perf_counter()
    with _progress_bars(progress):
        if spec.id in EMBEDDED_MODELS:
            model, tokenizer, source = load_embedded(spec.id, dtype=dtype)
        else:
            path = resolve_model_path(spec.id, base_dir)
            if path is not None and path.is_dir():
                model, tokenizer = _load_local(path, dtype)
                source = {"kind": "local", "id": spec.id, "path": str(path), "revision": None}
            elif path is not None and path.suffix.lower() == ".gguf":
                model, tokenizer = load_gguf(path, dtype=dtype)
                source = {"kind": "gguf", "id": spec.id, "path": str(path), "revision": None}
            elif path is not None:
                raise ModelLoadError(
                    f"model '{spec.id}' is the file {path}, which is neither a .gguf file nor a model "
                    f"directory. Give the directory holding config.json and the weights, or a .gguf file."
                )
            elif spec.id.lower().endswith(".gguf") or spec.id.startswith((".", "/", "~")) or not _HUB_ID.match(spec.id):
                where = f"{Path.cwd()}" + (f" or {base_dir}" if base_dir else "")
                raise ModelLoadError(
                    f"model '{spec.id}' was not found: no such file or directory (relative paths are read "
                    f"from {where}). Fix the path, use a hub id of the form 'org/name', or an embedded "
                    f"model ({', '.join(EMBEDDED_MODELS)})."
                )
            else:
                model, tokenizer = _load_hub(spec.id, spec.revision, dtype)
                commit = getattr(model.config, "_commit_hash", None)
                source = {"kind": "hub", "id": spec.id, "path": None, "revision": spec.revision, "commit": commit}
    try:
        adapter = get_adapter(model)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model '{spec.id}': {exc}") from exc
    model = model.to(device).eval()  # dtype set at load; .to(dtype) would also cast fp32 buffers
    logger.info("loaded %s (%s) in %.1f s", spec.id, source["kind"], time.perf_counter() - start)
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, source=source)
