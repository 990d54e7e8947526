"""The results store: atomic writes, concurrent writers, corrupt files, lookup."""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from harness.store import ResultStore, atomic_write_json

N_PROCS, N_WRITES = 4, 25


def _record(key: str, label: str, status: str = "ok", **extra) -> dict:
    return {"key": key, "label": label, "status": status, **extra}


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_json_roundtrip_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"a": 1, "ppl": float("inf"), "p": tmp_path})
    atomic_write_json(path, {"a": 2, "ppl": float("inf"), "p": tmp_path})
    data = json.loads(path.read_text())
    assert data["a"] == 2 and data["ppl"] == float("inf") and data["p"] == str(tmp_path)
    assert _temp_files(path.parent) == []


def test_atomic_write_json_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert _temp_files(tmp_path) == []


def _writer(root: str, proc: int) -> None:
    store = ResultStore(root)
    for i in range(N_WRITES):
        payload = "x" * 2000 * (1 + i % 3)  # vary the size so a torn write would not parse
        store.put(_record(f"p{proc}-{i:02d}", f"m/p{proc}/{i:02d}", writer=proc, i=i, payload=payload))
        store.put(_record("shared", "m/shared", writer=proc, i=i, payload=payload))


def test_concurrent_writers_same_and_different_keys(tmp_path: Path) -> None:
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), p)) for p in range(N_PROCS)]
    for p in procs:
        p.start()
    shared = tmp_path / "records" / "shared.json"
    reads = 0
    while any(p.is_alive() for p in procs):  # a reader never sees a partial file
        if shared.exists():
            try:
                json.loads(shared.read_text())
                reads += 1
            except FileNotFoundError:
                pass
        time.sleep(0.001)
    for p in procs:
        p.join()
        assert p.exitcode == 0

    store = ResultStore(tmp_path)
    records = store.records()
    assert len(records) == N_PROCS * N_WRITES + 1
    for proc in range(N_PROCS):
        for i in range(N_WRITES):
            r = store.get(f"p{proc}-{i:02d}")
            assert r is not None
            r = r.dump()
            assert (r["writer"], r["i"]) == (proc, i)
    first = store.get("shared").dump()
    assert first["writer"] in range(N_PROCS) and first["i"] == 0  # the first ok record of a key wins
    assert _temp_files(store.records_dir) == []
    for path in store.records_dir.iterdir():
        json.loads(path.read_text())


def test_corrupt_record_is_absent_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ResultStore(tmp_path)
    store.put(_record("good", "m/rtn/b4"))
    store.records_dir.joinpath("bad.json").write_text('{"key": "bad", "status": "o')
    store.records_dir.joinpath("notrec.json").write_text("[1, 2]")
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        assert store.get("bad") is None
        assert not store.is_finished("bad")
        assert [r.key for r in store.records()] == ["good"]
    assert "bad.json" in caplog.text and "notrec.json" in caplog.text
    store.put(_record("bad", "m/rtn/b3"))  # a re-run replaces it
    assert store.is_finished("bad")


def test_get_put_finished_failed(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    assert store.get("nope") is None and store.records() == []
    store.put(_record("k1", "m/rtn/b4"))
    store.put(_record("k2", "m/gptq/b2", status="failed", error={"type": "RuntimeError", "message": "OOM"}))
    assert store.is_finished("k1") and not store.is_finished("k2") and not store.is_finished("k3")
    assert [r.key for r in store.failed()] == ["k2"]
    assert [r.label for r in store.records()] == ["m/gptq/b2", "m/rtn/b4"]  # sorted by label


def test_invalid_keys_are_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    for bad in ("../evil", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            store.put({"key": bad})
    with pytest.raises(ValueError):
        store.put({"label": "no key"})


def test_find_by_key_prefix_and_label_pattern(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.put(_record("3fa2c0ffee000001", "smollm2-135m/rtn/b4"))
    store.put(_record("3fa2c0ffee000002", "smollm2-135m/rtn/b2"))
    store.put(_record("9b7e000000000003", "smollm2-135m/gptq/b2"))
    store.put(_record("1c0d000000000004", "llama-7b/gptq/b2"))
    assert [r.key for r in store.find("3fa2c0ffee000002")] == ["3fa2c0ffee000002"]
    assert {r.key for r in store.find("3fa2")} == {"3fa2c0ffee000001", "3fa2c0ffee000002"}
    assert [r.label for r in store.find("smollm2-135m/rtn/*")] == ["smollm2-135m/rtn/b2", "smollm2-135m/rtn/b4"]
    assert [r.label for r in store.find("*/gptq/b2")] == ["llama-7b/gptq/b2", "smollm2-135m/gptq/b2"]
    assert store.find("smollm2-135m/aqlm/*") == []


def test_layout_paths(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    assert store.model_dir("k1") == tmp_path / "models" / "k1"
    assert store.log_path("k1") == tmp_path / "logs" / "k1.log" and store.logs_dir.is_dir()
    assert store.put(_record("k1", "a")) == tmp_path / "records" / "k1.json"


def test_cleanup_removes_only_stale_temp_files(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.put(_record("k1", "a"))
    stale = store.records_dir / ".k2.json.123.deadbeef.tmp"
    fresh = store.records_dir / ".k3.json.456.cafef00d.tmp"
    nested = tmp_path / "cells" / "sub" / ".c.json.7.0123abcd.tmp"
    foreign = tmp_path / "models" / ".someone-elses.tmp"
    for path in (stale, fresh, nested, foreign):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{")
    old = time.time() - 7200
    for path in (stale, nested, foreign):
        os.utime(path, (old, old))
    assert sorted(store.cleanup_tmp(older_than_s=3600)) == sorted([stale, nested])
    assert fresh.exists() and foreign.exists() and store.get("k1") is not None
