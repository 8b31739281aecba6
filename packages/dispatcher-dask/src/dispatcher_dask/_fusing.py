"""Which tasks sent to one worker together run as one dask task (a *fused run*).

dask's worker pays for every task it runs, between the end of one and the start of the
next: a turn of its event loop through its state machine, and two thread hand-offs
(about a millisecond, more on a busy machine). dask's own clients pay it too. For tasks
of a few milliseconds that is the better part of the time lost; a run of them sent to
the same worker together runs as one dask task (:func:`~._task.run_tasks`), which pays
it once.

Only tasks whose function is known to be short are fused, and only those the fused run
does not change the meaning of: a task that reads no other task's result but those of
earlier tasks of its run (dask would hold the whole run until other inputs were all
made), is not timed (its deadline could not free the tasks behind it) and whose value
the caller does not want (the caller would gather the whole run). A run is bounded by
its expected length, :data:`FUSED_SECONDS`: its tasks are reported when it ends, and a
failure among them ends a fail-fast run that much later. Its values are held together
until the last of them is freed, but for those whose last reader ran in the run, which
it drops at once (a chain's links, sent to one worker, run as one dask task holding one
value at a time); a task elsewhere that reads one of them fetches the run's values. So a
task whose results are large (above :data:`FUSED_BYTES`, on average) is fused only as
the last of its run, or followed by the last reader of its value. A run whose tasks are
all cancelled is released, and starts none of its tasks left; a task cancelled alone,
while others of its run are not, still runs with them (its report is ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dispatcher.transport import KEY_BITS, Key, TaskSpec, function_kind

__all__ = ["FUSED_BYTES", "FUSED_SECONDS", "MOST_FUSED", "Fusing"]

FUSED_SECONDS = 0.08
"""A fused run is expected to last at most this long (by its functions' mean durations)."""

FUSED_BYTES = 16 * 1024
"""Results larger than this, on average, are fused only where the run drops them at once
(see the module's docstring)."""

MOST_FUSED = 64
"""Tasks in one fused run, at most."""

_MOST_FUNCTIONS = 4096  # functions remembered; past that, forgotten and learned again


class Fusing:
    """Learns each function's mean duration and result size from its tasks' reports, and
    cuts what is sent to one worker into fused runs and single tasks."""

    def __init__(self) -> None:
        # function -> (mean duration, mean result size): moving averages.
        self._means: dict[Any, tuple[float, float]] = {}

    def learn(self, func: Any, duration: float, nbytes: int | None) -> None:
        """Fold a task's run time and result size (None: unknown, taken as large) in."""
        kind = function_kind(func)
        size = float(FUSED_BYTES + 1 if nbytes is None else nbytes)
        means = self._means
        mean = means.get(kind)
        if mean is None:
            if len(means) >= _MOST_FUNCTIONS:
                means.clear()
            means[kind] = (duration, size)
        else:
            seconds, nbytes_mean = mean
            means[kind] = (
                seconds + (duration - seconds) / 8,
                nbytes_mean + (size - nbytes_mean) / 8,
            )

    def _expected(self, spec: TaskSpec, run: set[Key], waits: bool) -> tuple[float, bool] | None:
        """How long ``spec`` is expected to run, and whether its results are large, if it
        may be fused into a run of the tasks ``run``; None if not. The first task of a run
        (``run`` empty) may read results made outside it; a later one, only those of the
        run (and, unless the run ``waits`` for such outside results, none at all: a task
        that needs none of them does not wait for them)."""
        if spec.want_result or (spec.timeout is not None and spec.timeout != float("inf")):
            return None
        if run and (spec.deps or waits):
            given = spec.inline
            reads_run = False
            for k in spec.deps:
                if k in run:
                    reads_run = True
                elif given is None or k not in given:
                    return None
            if waits and not reads_run:
                return None
        mean = self._means.get(function_kind(spec.func))
        if mean is None:
            return None
        seconds, nbytes = mean
        if seconds > FUSED_SECONDS / 2:
            return None
        return seconds, nbytes > FUSED_BYTES

    def cut(self, specs: Sequence[TaskSpec]) -> list[list[TaskSpec]]:
        """``specs``, sent to one worker in this order, as the groups to send as one dask
        task each, in the same order: fused runs of consecutive tasks of one run, and
        single tasks."""
        groups: list[list[TaskSpec]] = []
        run: list[TaskSpec] = []
        keys: set[Key] = set()  # the tasks of ``run``
        total = 0.0  # its expected length
        waits = False  # its first task reads results made outside it
        large: Key | None = None  # its last task, if that one's results are large
        for spec in specs:
            found = self._expected(spec, keys, waits)
            if run and (
                found is None
                or total + found[0] > FUSED_SECONDS
                or len(run) >= MOST_FUSED
                or run[0].key >> KEY_BITS != spec.key >> KEY_BITS
                or (large is not None and large not in spec.last_use)
            ):
                groups.append(run)
                run, keys, total = [], set(), 0.0
                found = self._expected(spec, keys, False)  # the first of a new run?
            if found is None:
                groups.append([spec])
                continue
            if not run:
                waits = bool(spec.deps) and any(
                    spec.inline is None or k not in spec.inline for k in spec.deps
                )
            run.append(spec)
            keys.add(spec.key)
            total += found[0]
            large = spec.key if found[1] else None
        if run:
            groups.append(run)
        return groups
