"""The cache's proof, once, for every executor: each scenario runs a small pipeline with a
cache and checks which functions were called.

Functions count their calls by appending their name to a file named in the module itself
(workers are other processes, and may have started before the test set anything up). The
pipeline lives in a module written to a directory of the test's own and pickled by value,
so that editing it (rewriting the file and reloading the module) reaches workers that
outlive one run (MPI ranks) too.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap
import threading
import types
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from dispatcher import Cache, CacheWarning, Executor, get_executor, op, run
from dispatcher._report import ReportWriter

MODULE = "cache_pipeline"

PIPELINE = """
import os

CALLS = {calls!r}  # a global: not part of any key

def _count(name):
    with open(CALLS, "a") as fh:
        fh.write(name + "\\n")

def load(n):
    _count("load")
    return list(range(n))

def square(xs):
    _count("square")
    return [x * x for x in xs]

def total(a, b):
    _count("total")
    if os.path.exists(CALLS + ".fail"):
        raise RuntimeError("total is broken today")
    return sum(a) + sum(b)

def report(t):
    _count("report")
    return "total=%d" % t

def noisy(x):
    _count("noisy")
    return x

def scaler(k):
    def scale(x):
        _count("scale")
        return x * k
    return scale

def big(n):
    import numpy as np
    _count("big")
    return np.arange(n, dtype=np.float64)

class SlowToStore:
    # A result that takes `seconds` to pickle, so to store (as a large result takes on
    # a slow disk); its copies pickle at once.
    def __init__(self, seconds):
        self.seconds = seconds
    def __reduce__(self):
        import time
        time.sleep(self.seconds)
        return (SlowToStore, (0.0,))

def quick(seconds):
    _count("quick")
    return SlowToStore(seconds)

def done(x):
    _count("done")
    return "done"
"""


class Pipeline:
    """The pipeline module of one scenario, its call log and its cache directory."""

    def __init__(self, root: Path, executor: str, options: dict[str, Any]) -> None:
        self.root = root
        self.executor = executor
        self.options = options
        self.cache = str(root / "cache")
        self.calls = root / "calls.log"
        self.source = PIPELINE.replace("{calls!r}", repr(str(self.calls)))
        self.module = self._load(self.source)

    def _load(self, source: str) -> types.ModuleType:
        code_dir = self.root / "code"
        code_dir.mkdir(exist_ok=True)
        shutil.rmtree(code_dir / "__pycache__", ignore_errors=True)
        (code_dir / f"{MODULE}.py").write_text(textwrap.dedent(source))
        if str(code_dir) not in sys.path:
            sys.path.insert(0, str(code_dir))
        importlib.invalidate_caches()
        if MODULE in sys.modules and getattr(sys.modules[MODULE], "__file__", "").startswith(
            str(code_dir)
        ):
            module = importlib.reload(sys.modules[MODULE])
        else:
            sys.modules.pop(MODULE, None)
            module = importlib.import_module(MODULE)
        cloudpickle.register_pickle_by_value(module)
        return module

    def edit(self, old: str, new: str) -> None:
        """Edit the pipeline's source, as a user edits a function."""
        assert old in self.source
        self.source = self.source.replace(old, new)
        self.module = self._load(self.source)

    def graph(self) -> Any:
        m = self.module
        a, b = op(m.load)(3), op(m.load)(4)
        t = op(m.total)(op(m.square)(a), op(m.square)(b))
        return op(m.report)(t)

    def run(self, targets: Any, executor: Executor | None = None, **kwargs: Any) -> Any:
        if executor is not None:
            return executor.run(targets, cache=self.cache, **kwargs)
        return run(targets, executor=self.executor, cache=self.cache, **self.options, **kwargs)

    def take_calls(self) -> Counter[str]:
        """The calls made since the last time, by function name."""
        try:
            names = self.calls.read_text().split()
        except FileNotFoundError:
            names = []
        self.calls.unlink(missing_ok=True)
        return Counter(names)


EXPECTED = "total=19"  # (0 + 1 + 4) + (0 + 1 + 4 + 9)


def second_run_calls_nothing(p: Pipeline) -> None:
    assert p.run(p.graph()) == EXPECTED
    assert p.take_calls() == {"load": 2, "square": 2, "total": 1, "report": 1}
    assert p.run(p.graph()) == EXPECTED
    assert p.take_calls() == {}
    info = Cache(p.cache).info()
    assert info.entries == 6
    assert info.last_run is not None
    assert info.last_run["hits"] == 1  # the target alone


def editing_a_function_reruns_it_and_its_descendants(p: Pipeline) -> None:
    assert p.run(p.graph()) == EXPECTED
    p.take_calls()
    # A comment and a blank line change nothing.
    p.edit("def square(xs):\n", "def square(xs):\n    # squares, one by one\n\n")
    assert p.run(p.graph()) == EXPECTED
    assert p.take_calls() == {}
    p.edit("return [x * x for x in xs]", "return [x * x * 2 for x in xs]")
    assert p.run(p.graph()) == "total=38"
    assert p.take_calls() == {"square": 2, "total": 1, "report": 1}
    p.edit('return "total=%d" % t', 'return "sum=%d" % t')
    assert p.run(p.graph()) == "sum=38"
    assert p.take_calls() == {"report": 1}


def failed_run_resumes(p: Pipeline) -> None:
    flag = Path(str(p.calls) + ".fail")
    flag.touch()
    with pytest.raises(RuntimeError, match="broken today"):
        p.run(p.graph())
    assert p.take_calls() == {"load": 2, "square": 2, "total": 1}
    flag.unlink()
    assert p.run(p.graph()) == EXPECTED
    assert p.take_calls() == {"total": 1, "report": 1}


def concurrent_runs_share_one_cache(p: Pipeline) -> None:
    results: list[Any] = []
    errors: list[BaseException] = []
    # One job has one MPI executor: its runs share it. Elsewhere each run has its own
    # executor (its own worker processes), all writing the same keys at once.
    shared = get_executor("mpi") if p.executor == "mpi" else None

    def one() -> None:
        try:
            results.append(p.run(p.graph(), executor=shared))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if shared is not None:
            shared.close()
    assert not errors, errors
    assert results == [EXPECTED] * 3
    p.take_calls()
    assert p.run(p.graph()) == EXPECTED
    assert p.take_calls() == {}


def damaged_entries_are_recomputed(p: Pipeline) -> None:
    assert p.run(p.graph()) == EXPECTED
    p.take_calls()
    entries = sorted((Path(p.cache) / "entries").glob("*/*"))
    assert len(entries) == 6
    for i, entry in enumerate(entries):
        data = bytearray(entry.read_bytes())
        if i % 2:
            data = data[: len(data) // 2]  # truncated
        else:
            data[-3] ^= 0xFF  # corrupted
        entry.write_bytes(bytes(data))
    report = ReportWriter(p.root / "damaged.html")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # said on the worker, where it read
        assert p.run(p.graph(), plugins=[report]) == EXPECTED
    # The target was planned as a hit and found damaged: everything was recomputed, and
    # stored again whole.
    assert p.take_calls() == {"load": 2, "square": 2, "total": 1, "report": 1}
    # Planned again at damaged hits, one run: its report counts every node it computed
    # in the end, though the first plan had the target alone, and each node once.
    record = report.record
    assert record is not None
    assert record.replans >= 1
    assert record.total == record.tasks == 6
    assert sorted(a.task for a in record.attempts) == list(range(6))
    assert {a.status for a in record.attempts} == {"ok"}
    assert p.run(p.graph()) == EXPECTED
    assert p.take_calls() == {}


def changed_closure_value_is_a_miss(p: Pipeline) -> None:
    m = p.module
    assert p.run(op(m.scaler(2))(21)) == 42
    assert p.run(op(m.scaler(2))(21)) == 42
    assert p.take_calls() == {"scale": 1}
    assert p.run(op(m.scaler(3))(21)) == 63
    assert p.take_calls() == {"scale": 1}


def uncached_nodes_always_run(p: Pipeline) -> None:
    m = p.module
    for _ in range(2):
        assert p.run(op(m.square)(op(m.noisy, cache=False)([1, 2]))) == [1, 4]
    # Downstream of a node that is not cached, nothing is (its value may differ).
    assert p.take_calls() == {"noisy": 2, "square": 2}


def large_hit_is_a_memory_map(p: Pipeline) -> None:
    np = pytest.importorskip("numpy")

    m = p.module
    n = 1024 * 1024  # 8 MiB
    first = p.run(op(m.big)(n))
    second = p.run(op(m.big)(n))
    assert p.take_calls() == {"big": 1}
    assert np.array_equal(first, second)
    assert second.flags.writeable  # copy on write


def storing_is_not_held_to_the_timeout(p: Pipeline) -> None:
    """A node's timeout bounds its function, not the store of its result: a result that
    takes longer to store than the timeout is stored whole, and the node finishes."""
    m = p.module

    def graph() -> Any:
        return op(m.done)(op(m.quick, timeout=0.5)(1.5))

    assert p.run(graph()) == "done"
    assert p.take_calls() == {"quick": 1, "done": 1}
    info = Cache(p.cache).info()
    assert (info.entries, info.partial) == (2, 0)
    assert p.run(graph()) == "done"
    assert p.take_calls() == {}


def stores_that_fail_are_warned_in_the_caller(p: Pipeline) -> None:
    """A store that fails on a worker (a full disk, a directory it cannot write) is a
    CacheWarning where the user runs the graph, naming the node; the run goes on."""
    Path(p.cache).mkdir(parents=True, exist_ok=True)
    (Path(p.cache) / "entries").write_text("where entries go: no directory can be made")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert p.run(p.graph()) == EXPECTED
    said = [str(w.message) for w in seen if issubclass(w.category, CacheWarning)]
    not_stored = [text for text in said if "not stored" in text]
    assert len(not_stored) == 6, said
    if p.executor in ("mp", "mpi", "dask"):
        assert sum("node 'report'" in text for text in not_stored) == 1, not_stored
    assert p.take_calls() == {"load": 2, "square": 2, "total": 1, "report": 1}


SCENARIOS = [
    second_run_calls_nothing,
    editing_a_function_reruns_it_and_its_descendants,
    failed_run_resumes,
    concurrent_runs_share_one_cache,
    damaged_entries_are_recomputed,
    changed_closure_value_is_a_miss,
    uncached_nodes_always_run,
    large_hit_is_a_memory_map,
    storing_is_not_held_to_the_timeout,
    stores_that_fail_are_warned_in_the_caller,
]
