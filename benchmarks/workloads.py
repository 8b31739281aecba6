"""The workloads, each as a plain description any runner can build from.

A workload is a dict ``{name: (function, argument names)}`` in dependency order (a
"task spec"), built once per repetition, so dispatcher and every peer run the very same
graph of the very same functions. Functions are at module level so worker processes can
import them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

Spec = dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]
"""name -> (function, arguments); an argument that is a key of the spec is a dependency."""


class Dep(str):
    """An argument naming another task of the spec."""


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def total(*values: Any) -> Any:
    return sum(values)


def zero() -> int:
    return 0


def leaf(i: int) -> int:
    return i


def array(i: int) -> Any:
    import numpy as np

    return np.full(1024 * 1024, float(i))  # 8 MiB


def pair_sum(a: Any, b: Any) -> float:
    return float(a.sum() + b.sum())


def nap(i: int) -> int:
    time.sleep(0.01)
    return i


def fresh(previous: Any) -> Any:
    import numpy as np

    if previous is None:
        return np.zeros(10 * 1024 * 1024 // 8)
    return previous + 1.0  # a new 10 MiB array


def first_value(a: Any) -> float:
    return float(a[0])


def stamped_array(nbytes: int) -> tuple[float, Any]:
    """A fresh array of ``nbytes``, with the wall-clock time it was ready (the clock is
    shared by every process on one machine)."""
    import numpy as np

    data = np.ones(nbytes, dtype=np.uint8)
    return time.time(), data


def arrival_delay(first: tuple[float, Any], second: tuple[float, Any]) -> float:
    """Seconds from the later of two stamped arrays being ready to both being here."""
    return time.time() - max(first[0], second[0])


def w1(scale: float) -> Spec:
    n = int(10_000 * scale)
    spec: Spec = {"t0": (zero, ())}
    for i in range(1, n):
        spec[f"t{i}"] = (inc, (Dep(f"t{i - 1}"),))
    return spec


def w2(scale: float) -> Spec:
    n = int(10_000 * scale)
    spec: Spec = {f"t{i}": (leaf, (i,)) for i in range(n)}
    spec["sum"] = (total, tuple(Dep(f"t{i}") for i in range(n)))
    return spec


def w3(scale: float) -> Spec:
    leaves = 2 ** (14 if scale >= 1 else 10)
    spec: Spec = {f"l0-{i}": (leaf, (i,)) for i in range(leaves)}
    level, width = 0, leaves
    while width > 1:
        for i in range(width // 2):
            spec[f"l{level + 1}-{i}"] = (
                add,
                (Dep(f"l{level}-{2 * i}"), Dep(f"l{level}-{2 * i + 1}")),
            )
        level, width = level + 1, width // 2
    return spec


def w4(scale: float) -> Spec:
    layers, width = (100, 100) if scale >= 1 else (20, 50)
    rng = random.Random(42)
    spec: Spec = {f"0-{j}": (leaf, (j,)) for j in range(width)}
    for layer in range(1, layers):
        for j in range(width):
            a, b = rng.randrange(width), rng.randrange(width)
            spec[f"{layer}-{j}"] = (add, (Dep(f"{layer - 1}-{a}"), Dep(f"{layer - 1}-{b}")))
    return spec


def w5(scale: float) -> Spec:
    n = 64 if scale >= 1 else 16
    spec: Spec = {f"a{i}": (array, (i,)) for i in range(n)}
    for i in range(n // 2):
        spec[f"p{i}"] = (pair_sum, (Dep(f"a{2 * i}"), Dep(f"a{2 * i + 1}")))
    spec["sum"] = (total, tuple(Dep(f"p{i}") for i in range(n // 2)))
    return spec


def w6(scale: float) -> Spec:
    n = int(200 * scale) or 20
    return {f"t{i}": (nap, (i,)) for i in range(n)} | {
        "sum": (total, tuple(Dep(f"t{i}") for i in range(n)))
    }


def w7(scale: float) -> Spec:
    n = 200 if scale >= 1 else 40
    spec: Spec = {"c0": (fresh, (None,))}
    for i in range(1, n):
        spec[f"c{i}"] = (fresh, (Dep(f"c{i - 1}"),))
    spec["out"] = (first_value, (Dep(f"c{n - 1}"),))
    return spec


WORKLOADS: dict[str, Callable[[float], Spec]] = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
    "W7": w7,
}
DESCRIPTIONS = {
    "W1": "chain of 10,000 tiny tasks",
    "W2": "10,000 independent tiny tasks, then one sum",
    "W3": "binary tree reduction over 2^14 leaves",
    "W4": "100 layers x 100 tasks, 2 random deps each",
    "W5": "64 x 8 MiB arrays, 32 pair consumers, one sum",
    "W6": "200 tasks sleeping 10 ms",
    "W7": "chain of 200 fresh 10 MiB arrays (peak memory)",
    "W8": "build 1,000,000 nodes",
    "W9": "1,000 runs of a one-node graph: the fixed cost of one call (µs/task is per call)",
    "move": "a 64 MiB result moved between workers, and to the caller",
}


def sinks(spec: Spec) -> list[str]:
    """The tasks nothing depends on. Every runner asks for all of them, so every runner
    runs every task (in W4, random edges leave some tasks of each layer unused)."""
    used = {a for _, args in spec.values() for a in args if isinstance(a, Dep)}
    return [name for name in spec if name not in used]
