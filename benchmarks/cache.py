"""The cost of the result cache, beside joblib.Memory on the same functions, in one run.

    python benchmarks/cache.py [--executor sync] [--tiny 2000] [--large 16] [--repeat 5]
                               [--dir /tmp] [--w5-executors sync,mp] [--json]

Per node, on tiny results (an int) and on 8 MiB arrays:

* ``miss``: what a run with an empty cache adds to the same run without one (hashing the
  node, pickling and writing its result), per node;
* ``hit``: the whole cost of a node served from the cache (planning finds it, a task
  reads it where it runs), per node -- the run does nothing else;
* joblib.Memory's ``miss`` (a call that computes and stores) and ``hit`` (a call that
  loads), per call, when joblib is installed.

Then W5 (64 x 8 MiB arrays, 32 pair consumers, one sum: benchmarks/workloads.py) without a
cache and with an empty one, as the ratio of their medians, beside the time it takes this
disk to write W5's 512 MiB with plain writes (the floor of storing them), and again with
``Cache(min_seconds=...)`` (results quicker to compute than that are not stored); and the
store's design choice:
tiny entries written and read as files renamed into place versus rows of an SQLite
database in WAL mode. Medians of ``--repeat`` runs, each on a fresh cache directory.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from workloads import w5

from dispatcher import Cache, get_executor, op

EIGHT_MIB = 1024 * 1024  # float64s


def tiny(i: int) -> int:
    return i + 1


def large(i: int) -> Any:
    import numpy as np

    return np.full(EIGHT_MIB, float(i))


def median_of(repeat: int, once: Callable[[], float]) -> float:
    return statistics.median(once() for _ in range(repeat))


class Scratch:
    """Fresh cache directories under ``root``, removed when done."""

    def __init__(self, root: str) -> None:
        self.root = tempfile.mkdtemp(prefix="dispatcher-cache-bench-", dir=root)
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        return os.path.join(self.root, str(self.count))

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def backing(array: Any) -> Any:
    obj = array
    while True:
        if isinstance(obj, memoryview):
            obj = obj.obj
        elif getattr(obj, "base", None) is not None:
            obj = obj.base
        else:
            return obj


def dispatcher_rows(
    executor_name: str, n: int, func: Callable[[int], Any], repeat: int, scratch: Scratch
) -> dict[str, Any]:
    options = {"workers": 2} if executor_name in ("mp", "dask") else {}
    with get_executor(executor_name, **options) as ex:

        def graph() -> list[Any]:
            return [op(func)(i) for i in range(n)]

        def timed(cache: str | Cache | None) -> float:
            g = graph()
            start = time.perf_counter()
            ex.run(g, cache=cache)
            return time.perf_counter() - start

        timed(None)  # warm up: workers, imports
        base = median_of(repeat, lambda: timed(None))
        misses, hits, unverified = [], [], []
        for _ in range(repeat):
            path = scratch.fresh()
            misses.append(timed(path))
            hits.append(timed(path))
            unverified.append(timed(Cache(path, verify=False)))
        values = ex.run(graph(), cache=path)
    row: dict[str, Any] = {
        "what": f"dispatcher {executor_name}",
        "nodes": n,
        "result": "8 MiB" if func is large else "int",
        "no cache us/node": base / n * 1e6,
        "miss us/node": (statistics.median(misses) - base) / n * 1e6,
        "hit us/node": statistics.median(hits) / n * 1e6,
        "hit, verify=False us/node": statistics.median(unverified) / n * 1e6,
    }
    if func is large and executor_name in ("sync", "async"):
        row["hit is a memory map"] = all(isinstance(backing(v), mmap.mmap) for v in values)
    return row


def joblib_rows(
    n: int, func: Callable[[int], Any], repeat: int, scratch: Scratch
) -> dict[str, Any]:
    import joblib

    base = median_of(repeat, lambda: _calls(func, n))
    misses, hits = [], []
    for _ in range(repeat):
        memory = joblib.Memory(scratch.fresh(), verbose=0)
        cached = memory.cache(func)
        misses.append(_calls(cached, n))
        hits.append(_calls(cached, n))
    return {
        "what": f"joblib {joblib.__version__} Memory",
        "nodes": n,
        "result": "8 MiB" if func is large else "int",
        "no cache us/node": base / n * 1e6,
        "miss us/node": (statistics.median(misses) - base) / n * 1e6,
        "hit us/node": statistics.median(hits) / n * 1e6,
    }


def _calls(func: Callable[[int], Any], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        func(i)
    return time.perf_counter() - start


def w5_row(
    executor_name: str, repeat: int, scratch: Scratch, min_seconds: float = 0.0
) -> dict[str, Any]:
    from run import build_dispatcher

    options = {"workers": 2} if executor_name in ("mp", "dask") else {}
    with get_executor(executor_name, **options) as ex:

        def timed(cache: Cache | None) -> float:
            graph = build_dispatcher(w5(1.0))
            start = time.perf_counter()
            ex.run(graph, cache=cache)
            return time.perf_counter() - start

        timed(None)
        plain, missed, floor = [], [], []
        for _ in range(repeat):  # alternated, so all see the same machine
            plain.append(timed(None))
            missed.append(timed(Cache(scratch.fresh(), min_seconds=min_seconds)))
            floor.append(_write_floor(scratch.fresh(), 64, 8 * EIGHT_MIB))
    return {
        "what": f"W5 on {executor_name}"
        + (f", Cache(min_seconds={min_seconds})" if min_seconds else ""),
        "no cache s": statistics.median(plain),
        "all misses s": statistics.median(missed),
        "ratio": statistics.median(missed) / statistics.median(plain),
        "writing its 512 MiB alone s": statistics.median(floor),
    }


def _write_floor(path: str, count: int, nbytes: int) -> float:
    """Seconds to write ``count`` files of ``nbytes`` with plain writes: what storing W5's
    arrays costs on this disk before any cache does anything."""
    import numpy as np

    os.makedirs(path)
    data = np.ones(nbytes, dtype=np.uint8)
    start = time.perf_counter()
    for i in range(count):
        with open(os.path.join(path, str(i)), "wb") as fh:
            fh.write(memoryview(data))
    return time.perf_counter() - start


def store_rows(n: int, scratch: Scratch) -> list[dict[str, Any]]:
    """Files renamed into place versus an SQLite WAL table, for ``n`` tiny entries."""
    cache = Cache(scratch.fresh())
    keys = [f"{i:032x}" for i in range(n)]
    start = time.perf_counter()
    for key in keys:
        cache.save(key, 12345)
    file_write = time.perf_counter() - start
    start = time.perf_counter()
    for key in keys:
        cache.load(key)
    file_read = time.perf_counter() - start

    path = os.path.join(scratch.fresh() + ".sqlite")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE entries (key TEXT PRIMARY KEY, value BLOB, used REAL)")
    import pickle

    start = time.perf_counter()
    for key in keys:
        db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
            (key, pickle.dumps(12345, protocol=5), time.time()),
        )
    db_write = time.perf_counter() - start
    start = time.perf_counter()
    for key in keys:
        (blob,) = db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        pickle.loads(blob)
        db.execute("UPDATE entries SET used = ? WHERE key = ?", (time.time(), key))
    db_read = time.perf_counter() - start
    db.close()
    return [
        {
            "what": "store: file + rename",
            "write us": file_write / n * 1e6,
            "read us": file_read / n * 1e6,
        },
        {"what": "store: SQLite WAL", "write us": db_write / n * 1e6, "read us": db_read / n * 1e6},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executor", default="sync")
    parser.add_argument("--tiny", type=int, default=2000)
    parser.add_argument("--large", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the caches go (default: $TMPDIR)")
    parser.add_argument("--w5-executors", default="sync")
    parser.add_argument(
        "--w5-min-seconds",
        type=float,
        default=0.05,
        help="W5 again with Cache(min_seconds=...): only results that slow are stored",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scratch = Scratch(args.dir or tempfile.gettempdir())
    rows: list[dict[str, Any]] = []
    try:
        for n, func in ((args.tiny, tiny), (args.large, large)):
            if not n:
                continue
            rows.append(dispatcher_rows(args.executor, n, func, args.repeat, scratch))
            try:
                rows.append(joblib_rows(n, func, args.repeat, scratch))
            except ImportError:
                pass
        for name in filter(None, args.w5_executors.split(",")):
            rows.append(w5_row(name, args.repeat, scratch))
            rows.append(w5_row(name, args.repeat, scratch, args.w5_min_seconds))
        if args.tiny:
            rows.extend(store_rows(args.tiny, scratch))
    finally:
        scratch.close()
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(
                "  ".join(
                    f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()
                )
            )


if __name__ == "__main__":
    main()
