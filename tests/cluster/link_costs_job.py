"""Run inside an MPI job on the emulated hosts, two worker ranks per host: W4-like work
with 1 MiB results, after which rank 0 prints what it learned of each class of link:
``CLASS samples latency bandwidth``, one line each."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from dispatcher import Op, get_executor

MIB = 1024 * 1024


def leaf(i: int) -> Any:
    return np.full(MIB // 8, float(i))


def add(a: Any, b: Any) -> Any:
    return a + b


def first(a: Any) -> float:
    return float(a[0])


if __name__ == "__main__":
    rng = random.Random(7)
    layer = [Op(leaf, j) for j in range(12)]
    for _ in range(6):
        layer = [Op(add, rng.choice(layer), rng.choice(layer)) for _ in range(12)]
    with get_executor("mpi") as executor:
        executor.run([Op(first, node) for node in layer])
        for label, (latency, bandwidth, _) in executor.link_costs.summary().items():
            estimate = (
                executor.link_costs.within if "within" in label else executor.link_costs.across
            )
            print(label.split()[0], estimate.samples, latency, bandwidth, flush=True)
