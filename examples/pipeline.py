"""A file-processing pipeline: write order files, parse each one, add up the totals.

    python examples/pipeline.py                 # on worker processes if dispatcher-mp is installed
    python examples/pipeline.py --executor sync
    dispatcher run examples/pipeline.py:pipeline --progress --report run.html
    dispatcher graph examples/pipeline.py:pipeline -o pipeline.svg

Every step is an ordinary function. Calling it through ``op`` records the call instead of
making it, so building the graph costs nothing; ``run`` then does the work, in parallel where
the graph allows, and returns the result of the last node. The working directory is made and
removed by tasks of the graph itself, so the pipeline is complete wherever it runs.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from dispatcher import DispatchNode, available_executors, op, run

REGIONS = ("north", "south", "east", "west")
PRODUCTS = {"widget": 2.50, "gadget": 12.00, "gizmo": 7.25, "doohickey": 0.99}


@op
def make_workdir() -> str:
    """A fresh directory for the input files."""
    return tempfile.mkdtemp(prefix="dispatcher-pipeline-")


@op
def write_orders(workdir: str, day: int, rows: int) -> str:
    """Write one day's orders as CSV; return the file's path."""
    rng = random.Random(day)  # the same data every time
    path = Path(workdir) / f"orders-{day:02d}.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["order", "region", "product", "quantity"])
        for i in range(rows):
            region, product = rng.choice(REGIONS), rng.choice(list(PRODUCTS))
            out.writerow([f"{day:02d}-{i:05d}", region, product, rng.randint(1, 9)])
    return str(path)


@op
def parse(path: str) -> dict[str, Counter[str]]:
    """Orders and revenue per region in one file."""
    orders: Counter[str] = Counter()
    cents: Counter[str] = Counter()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            orders[row["region"]] += 1
            cents[row["region"]] += round(100 * PRODUCTS[row["product"]] * int(row["quantity"]))
    return {"orders": orders, "cents": cents}


@op
def combine(parts: list[dict[str, Counter[str]]]) -> dict[str, dict[str, float]]:
    """All files together: {region: {"orders": n, "revenue": amount}}."""
    orders: Counter[str] = Counter()
    cents: Counter[str] = Counter()
    for part in parts:
        orders.update(part["orders"])
        cents.update(part["cents"])
    return {r: {"orders": orders[r], "revenue": cents[r] / 100} for r in sorted(orders)}


@op
def cleanup(workdir: str, summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Remove the input files once the summary exists; pass the summary on."""
    shutil.rmtree(workdir)
    return summary


def pipeline(days: int = 8, rows: int = 2000) -> DispatchNode:
    """The graph: one directory, ``days`` files written and parsed in parallel, one summary."""
    workdir = make_workdir()
    parsed = [parse(write_orders(workdir, day, rows)) for day in range(days)]
    return cleanup(workdir, combine(parsed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "mp" if "mp" in available_executors() else "async"
    parser.add_argument("--executor", default=default, help=f"default: {default}")
    parser.add_argument("--days", type=int, default=8)
    args = parser.parse_args()

    graph = pipeline(days=args.days)
    start = time.perf_counter()
    summary = run(graph, executor=args.executor)
    elapsed = time.perf_counter() - start

    print(f"{args.days} order files parsed on {args.executor!r} in {elapsed:.2f} s")
    print(f"  {'region':<8}{'orders':>8}{'revenue':>13}")
    for region, totals in summary.items():
        print(f"  {region:<8}{totals['orders']:>8,}{totals['revenue']:>13,.2f}")
    orders = sum(t["orders"] for t in summary.values())
    revenue = sum(t["revenue"] for t in summary.values())
    print(f"  {'total':<8}{orders:>8,}{revenue:>13,.2f}")


if __name__ == "__main__":
    main()
