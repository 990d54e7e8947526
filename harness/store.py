"""The results store: one JSON record per cell, written atomically.

Layout under ``root``::

    records/<key>.json   one record per cell key (written by the engine)
    cells/<key>.json     the cell spec a worker process runs (written by the executor)
    models/<key>/        saved quantized models
    checkpoints/<key>/   per-block checkpoints of a calibrated cell in progress (removed once recorded)
    zeroshot/<model>/    zero-shot results per task of one quantized model (a cache; <model> is
                         the cell's MODEL identity, so cells differing only in evaluations share it)
    logs/<key>.log       each cell's log (and <key>.traceback.txt of a failed cell)
    locks/<key>.lock     the lock serialising writes of one key
    slurm/               submitit's folder (executor: slurm, unless `slurm_folder` is set)
    suites/<name>.yaml   a copy of each suite file that ran into this folder (`harness run`)
    tables/  plots/      the report
    report.html          the report in one self-contained page

Every path of a results folder comes from a method of :class:`ResultStore`.

Every file is written to a temp file in the same folder, fsynced and moved into place with
``os.replace`` (then the folder is fsynced), so a reader never sees a partial file and a
process killed at any moment (kill -9) leaves either the old file or the new one, plus at
most a stray temp file that readers ignore and :meth:`ResultStore.cleanup_tmp` removes.

Several processes (local subprocesses, Ray tasks, Slurm jobs) may write records at once.
Writes of one key are serialised by a lock file (``locks/<key>.lock``, ``flock``; released by
the kernel when a writer dies) and follow one rule: **the first ``ok`` record of a key wins**.
Once a key has an ``ok`` record, later writes of that key (``ok`` or failed) are dropped, so
a finished result is never replaced or lost; a failed record is replaced by any later record.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.record import CellRecord

try:  # POSIX only; elsewhere writes of one key are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: Cell keys are hashes (see ``Cell.key``); anything that could escape the folder is refused.
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    The parent folder is created if needed. On any error the temp file is removed and an
    existing file at ``path`` is left unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are 0600; os.open(..., 0o666) honours the umask, so a results
    # folder shared on a cluster stays readable by the group.
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} to a JSON record: convert it to a str, number, list or dict")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` as indented JSON and write it atomically.

    Serialisation happens before any file is touched, so an unserialisable object raises
    ``TypeError`` and leaves no trace. Non-finite floats are written as ``NaN``/``Infinity``
    (Python's JSON extension) so that a diverged perplexity round-trips.
    """
    return atomic_write_text(path, _dumps(obj))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def check_json(obj: Any) -> None:
    """Raise TypeError when `obj` cannot be written into a record as the store writes it (paths,
    numpy/torch scalars, sets and tuples are converted; NaN/inf are allowed)."""
    try:
        json.dumps(obj, default=_json_default)
    except Exception as exc:  # TypeError, a circular reference, a multi-element tensor's .item()
        raise TypeError(f"{type(exc).__name__}: {exc}") from exc


class ResultStore:
    """Records, saved models, logs, tables and plots of one results folder.

    Nothing is created on construction; folders appear when something is written.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    # ------------------------------------------------------------------ layout
    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    def exists(self) -> bool:
        """Whether the root is a results directory (it has the records folder)."""
        return self.records_dir.is_dir()

    @classmethod
    def roots_under(cls, path: str | os.PathLike) -> list[ResultStore]:
        """`path` itself if it is a results directory, else its subfolders that are (sorted)."""
        store = cls(path)
        if store.exists():
            return [store]
        return [s for s in (cls(p) for p in sorted(Path(path).iterdir()) if p.is_dir()) if s.exists()] if Path(path).is_dir() else []

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def suites_dir(self) -> Path:
        return self.root / "suites"

    def save_suite(self, name: str, text: str) -> Path:
        """Keep a copy of a suite file as ``suites/<name>.yaml`` (atomically; characters other
        than letters, digits, ``.``, ``_`` and ``-`` become ``_``). One file per suite name: a
        later run of the same suite replaces it, another suite writing here adds its own."""
        safe = re.sub(r"[^\w.-]+", "_", name).strip("._") or "suite"
        return atomic_write_text(self.suites_dir / f"{safe}.yaml", text)

    def suite_files(self) -> list[Path]:
        """The saved suite files (``suites/*.yaml``), sorted by name."""
        return sorted(self.suites_dir.glob("*.yaml")) if self.suites_dir.is_dir() else []

    @staticmethod
    def _check_key(key: Any) -> str:
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(
                f"invalid cell key {key!r}: a key is the cell's config hash (letters, digits, '.', '_', '-')"
            )
        return key

    def record_path(self, key: str) -> Path:
        """``root/records/<key>.json``."""
        return self.records_dir / f"{self._check_key(key)}.json"

    def model_dir(self, key: str) -> Path:
        """``root/models/<key>/``, where the engine saves the cell's model (not created here)."""
        return self.models_dir / self._check_key(key)

    def log_path(self, key: str) -> Path:
        """``root/logs/<key>.log`` (the ``logs`` folder is created)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        return self.logs_dir / f"{self._check_key(key)}.log"

    def traceback_path(self, key: str) -> Path:
        """``root/logs/<key>.traceback.txt``: the traceback (or log tail) of a failed cell."""
        return self.logs_dir / f"{self._check_key(key)}.traceback.txt"

    def cell_spec_path(self, key: str) -> Path:
        """``root/cells/<key>.json``: the cell spec a worker process reads (`harness.worker`)."""
        return self.root / "cells" / f"{self._check_key(key)}.json"

    def checkpoint_dir(self, key: str) -> Path:
        """``root/checkpoints/<key>/``: the per-block checkpoints of a cell in progress."""
        return self.root / "checkpoints" / self._check_key(key)

    def zeroshot_cache_dir(self, model_key: str) -> Path:
        """``root/zeroshot/<model_key>/``: lm-eval results per task of one quantized model
        (``model_key``: the cell's ``MODEL`` identity, `harness.identity`)."""
        return self.root / "zeroshot" / self._check_key(model_key)

    def lock_path(self, key: str) -> Path:
        """``root/locks/<key>.lock`` (the ``locks`` folder is created)."""
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        return self.locks_dir / f"{self._check_key(key)}.lock"

    @property
    def slurm_dir(self) -> Path:
        """``root/slurm/``: submitit's default folder."""
        return self.root / "slurm"

    def scratch_dir(self, prefix: str) -> tempfile.TemporaryDirectory:
        """A temporary folder under ``root`` (removed on exit; use as a context manager): model-sized
        scratch files stay on the results' file system (a small /tmp may not hold them)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=f".{prefix}-", dir=self.root)

    # ------------------------------------------------------------------ records
    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        """A record file's content, or None (logged) when it is unreadable or malformed."""
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("%s: unreadable record (%s); treating the cell as not run", path, exc)
            return None
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            logger.warning("%s: not a cell record (no 'key'); treating the cell as not run", path)
            return None
        return record

    @classmethod
    def _load(cls, path: Path) -> CellRecord | None:
        """A record file as a :class:`CellRecord` (migrated; the file is not rewritten), or None
        (logged) when it is unreadable or not a valid record."""
        raw = cls._read(path)
        if raw is None:
            return None
        try:
            return CellRecord.load(raw)
        except ValueError as exc:
            logger.warning("%s: %s; left out", path, exc)
            return None

    def get(self, key: str) -> CellRecord | None:
        """The record of ``key``, or None if absent or corrupt."""
        return self._load(self.record_path(key))

    def put(self, record: CellRecord | dict[str, Any], *, replace_ok: bool = False) -> Path | None:
        """Write ``record`` (which must carry its ``key``; a dict is read as a record first, so a
        malformed one fails here) atomically, unless the key already has an ``ok`` record: the
        first ``ok`` record of a key wins (``replace_ok=True`` overrides that). Returns the
        record's path, or None when ``record`` was dropped.
        """
        if not isinstance(record, CellRecord):
            if not isinstance(record, dict) or "key" not in record:
                raise ValueError("a record is a CellRecord or a dict with a 'key' field (the cell's config hash)")
            self._check_key(record["key"])
            record = CellRecord.load(record)
        path = self.record_path(record.key)
        text = _dumps(record.dump())  # an unserialisable record fails before any I/O
        with self._key_lock(record.key):
            existing = self._read(path)
            if not replace_ok and existing is not None and existing.get("status") == "ok":
                logger.info(
                    "%s: already has an ok record (finished %s); the %s record from this writer is dropped",
                    path.name, existing.get("finished_at", "?"), record.status or "new",
                )
                return None
            return atomic_write_text(path, text)

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Exclusive lock on ``locks/<key>.lock`` (``flock``: released when the holder exits or dies)."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        fd = os.open(self.lock_path(key), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def is_finished(self, key: str) -> bool:
        """True when ``key`` has a record with status ``ok`` (failed cells are re-run). Reads the
        stored status alone, so a finished cell is never re-run for a record this harness cannot type."""
        record = self._read(self.record_path(key))
        return record is not None and record.get("status") == "ok"

    def records(self) -> list[CellRecord]:
        """Every readable record, ok and failed, sorted by label (then key), migrated to the
        current record version (:meth:`CellRecord.load`)."""
        if not self.records_dir.is_dir():
            return []
        found = (self._load(p) for p in self.records_dir.glob("*.json"))
        return sorted((r for r in found if r is not None), key=lambda r: (str(r.label or ""), r.key))

    def failed(self) -> list[CellRecord]:
        """Records whose status is not ``ok``, sorted by label."""
        return [r for r in self.records() if not r.ok]

    def find(self, pattern: str) -> list[CellRecord]:
        """Records whose key starts with ``pattern`` or whose label matches it (fnmatch).

        ``find("3fa2")`` finds a key by its prefix; ``find("smollm2-135m/rtn/*")`` or
        ``find("*/gptq/b2")`` select by label (case-sensitive).
        """
        return [r for r in self.records() if r.key.startswith(pattern) or fnmatch.fnmatchcase(str(r.label or ""), pattern)]

    # ------------------------------------------------------------------ housekeeping
    def cleanup_tmp(self, older_than_s: float = 3600.0) -> list[Path]:
        """Remove temp files left under ``root`` by killed writers; returns the removed paths.

        Only this module's temp files (``.<name>.<pid>.<hex>.tmp``) older than ``older_than_s``
        are removed, so a write in progress in another process is never disturbed. Call it
        when a run starts.
        """
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        cutoff = time.time() - older_than_s
        for path in self.root.rglob(f".*{_TMP_SUFFIX}"):
            if not _TMP_NAME.match(path.name):
                continue
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # removed by a concurrent cleanup
                continue
        if removed:
            logger.info("removed %d stale temp file(s) under %s", len(removed), self.root)
        return removed

