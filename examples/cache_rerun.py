"""The README's pipeline run twice on one cache, the second time with one function changed.

    python examples/cache_rerun.py                  # on worker processes if dispatcher-mp is here
    python examples/cache_rerun.py --executor sync

The first run computes every node and stores each result in the cache. Then
``count_words`` is edited to count only words of four letters or more (both versions are
in this file, under the same name, as if the file had been edited between two runs). The
second run reads ``load``'s results from the cache -- its code and arguments did not
change -- and runs again exactly what the edit invalidated: ``count_words`` and ``total``,
which depends on it. A third run, unchanged, runs nothing.

``load`` is keyed by its arguments, not by what the file holds: it is also given the
file's modification time, so editing a file invalidates its node too.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from dispatcher import available_executors, hookimpl, op, run


@op
def load(path: str, modified: float) -> str:
    return Path(path).read_text()


@op
def count_words(text: str) -> int:
    return len(text.split())


FIRST_VERSION = count_words


@op  # type: ignore[no-redef]
def count_words(text: str) -> int:  # the edit: only words of four letters or more
    return len([word for word in text.split() if len(word) >= 4])


EDITED_VERSION = count_words


@op
def total(counts: list[int]) -> int:
    return sum(counts)


class Tally:
    """Counts the tasks that ran and those read from the cache."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.cached: list[str] = []

    @hookimpl
    def dispatcher_task_finished(self, node: Any) -> None:
        self.ran.append(node.label)

    @hookimpl
    def dispatcher_task_cached(self, node: Any) -> None:
        self.cached.append(node.label)


def pipeline(files: list[str], count: Any) -> Any:
    counts = [count(load(p, os.path.getmtime(p))) for p in files]
    return total(counts)


def run_once(title: str, files: list[str], count: Any, executor: str, cache: str) -> None:
    tally = Tally()
    result = run(pipeline(files, count), executor=executor, cache=cache, plugins=[tally])
    print(
        f"{title}: total = {result}; {len(tally.ran)} tasks ran {sorted(set(tally.ran))}, "
        f"{len(tally.cached)} read from the cache"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "mp" if "mp" in available_executors() else "async"
    parser.add_argument("--executor", default=default, help=f"default: {default}")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        files = []
        for name, text in [("a.txt", "one two"), ("b.txt", "three"), ("c.txt", "four five six")]:
            path = Path(work, name)
            path.write_text(text)
            files.append(str(path))
        cache = str(Path(work, "cache"))

        run_once("first run ", files, FIRST_VERSION, args.executor, cache)
        run_once("after edit", files, EDITED_VERSION, args.executor, cache)
        run_once("unchanged ", files, EDITED_VERSION, args.executor, cache)


if __name__ == "__main__":
    main()
