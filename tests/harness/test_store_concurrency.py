"""The store under concurrent writers and kill -9: nothing lost, nothing partial, first ok wins."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

from harness.store import ResultStore

N_PROCS, N_ROUNDS, N_SHARED = 8, 100, 10


def _record(key: str, writer: int, i: int, status: str) -> dict:
    payload = f"{writer}:{i}:" + "x" * (500 * (1 + (writer + i) % 4))  # sizes vary: a torn write would not parse
    return {
        "key": key, "label": f"m/{key}", "status": status, "writer": writer, "i": i,
        "payload": payload, "digest": hashlib.sha256(payload.encode()).hexdigest(),
    }


def _intact(record: dict) -> bool:
    return hashlib.sha256(record["payload"].encode()).hexdigest() == record["digest"]


def _writer(root: str, writer: int, barrier) -> None:
    store = ResultStore(root)
    rng = random.Random(writer)
    barrier.wait()  # every writer starts at once
    for i in range(N_ROUNDS):
        store.put(_record(f"w{writer}-{i:03d}", writer, i, "ok"))
        # every writer also races on a few shared keys, with failed and ok records
        store.put(_record(f"shared{i % N_SHARED}", writer, i, rng.choice(["ok", "failed", "failed"])))


def _reader(root: str, stop, out) -> None:
    """Reads the shared keys until told to stop; reports torn reads and changed ok records."""
    records = Path(root) / "records"
    first_ok: dict[str, str] = {}
    problems, reads = [], 0
    while not stop.is_set():
        for k in range(N_SHARED):
            path = records / f"shared{k}.json"
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            reads += 1
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                problems.append(f"partial read of {path.name}")
                continue
            if not _intact(record):
                problems.append(f"corrupt payload in {path.name}")
            if path.name in first_ok and text != first_ok[path.name]:
                problems.append(f"{path.name}: an ok record was replaced")
            if record["status"] == "ok":
                first_ok.setdefault(path.name, text)
    out.put((problems, reads))


def test_eight_writers_hundred_rounds_nothing_lost_or_corrupted(tmp_path: Path) -> None:
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier, stop, out = ctx.Barrier(N_PROCS), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(str(tmp_path), stop, out))
    reader.start()
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), w, barrier)) for w in range(N_PROCS)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=300)
        assert p.exitcode == 0
    stop.set()
    problems, reads = out.get(timeout=60)
    reader.join(timeout=60)
    assert problems == [] and reads > 0

    store = ResultStore(tmp_path)
    records = {r.key: r.dump() for r in store.records()}
    assert len(records) == N_PROCS * N_ROUNDS + N_SHARED  # nothing lost
    for w in range(N_PROCS):
        for i in range(N_ROUNDS):
            r = records[f"w{w}-{i:03d}"]
            assert (r["writer"], r["i"], r["status"]) == (w, i, "ok") and _intact(r)
    for k in range(N_SHARED):  # each shared key got ok records from some writer: one of them won
        r = records[f"shared{k}"]
        assert r["status"] == "ok" and _intact(r)
    files = list(store.records_dir.iterdir())
    assert len(files) == len(records) and all(p.suffix == ".json" for p in files)  # no temp files left
    for path in files:
        assert _intact(json.loads(path.read_text()))


def _put_forever(root: str, writer: int) -> None:
    store = ResultStore(root)
    i = 0
    while True:
        store.put(_record(f"k{i % 20}", writer, i, "failed"))  # failed records are replaced: many rewrites
        i += 1


def test_writers_killed_at_random_moments_leave_no_partial_record(tmp_path: Path) -> None:
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    rng = random.Random(0)
    for round_ in range(10):
        procs = [ctx.Process(target=_put_forever, args=(str(tmp_path), w)) for w in range(3)]
        for p in procs:
            p.start()
        time.sleep(rng.uniform(0.05, 0.4))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
        store = ResultStore(tmp_path)
        for path in store.records_dir.glob("*.json"):  # every visible record is complete
            assert _intact(json.loads(path.read_text())), f"round {round_}: {path.name}"
        assert len(store.records()) == len(list(store.records_dir.glob("*.json")))
    leftovers = [p for p in store.records_dir.iterdir() if p.name.endswith(".tmp")]
    removed = store.cleanup_tmp(older_than_s=0)
    assert sorted(removed) == sorted(leftovers)
    assert all(p.suffix == ".json" for p in store.records_dir.iterdir())
    store.put(_record("k0", 99, 0, "ok"))  # the lock of a killed writer does not block anyone
    assert store.get("k0").dump()["writer"] == 99
