"""``run`` and ``arun``: run a graph on an executor chosen by name or given."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ._cache import Cache
from ._executor import Executor
from ._registry import resolve_executor

__all__ = ["arun", "run"]


def run(
    targets: Any,
    *,
    executor: str | Executor | None = None,
    inputs: Mapping[Any, Any] | None = None,
    throw: bool = True,
    progress: bool = False,
    report: str | None = None,
    plugins: Iterable[object] = (),
    cache: str | os.PathLike[str] | Cache | None = None,
    **options: Any,
) -> Any:
    """Run the graph behind ``targets`` and return their values in the same shape.

    ``targets`` is a node, a :class:`DispatchGraph` (its sinks, as a list) or a flat list,
    tuple or dict of nodes. ``executor`` is a name (``"sync"``, ``"async"``, ``"mp"``,
    ``"mpi"``, a plugin's), an :class:`Executor`, or ``None`` for ``$DISPATCHER_EXECUTOR``
    or ``"async"``; ``options`` configure a named executor for this call only.
    ``inputs`` gives values for nodes, which then do not run (nor what only they needed).
    With ``throw=False`` every target's entry is a :class:`Result`.
    ``cache`` (a directory, or a :class:`Cache`) keeps every finished node's result by a
    content hash of its function, arguments and inputs: a node stored already does not
    run, nor does what only it needed, so running again after a failure resumes.
    """
    ex, owned = resolve_executor(executor, options)
    try:
        values, failure = ex._execute(targets, inputs, throw, progress, report, plugins, cache)
    finally:
        if owned:
            ex.close()
    # Raised here, so that the traceback the user sees goes from their call to the task's code.
    if failure is not None:
        raise failure
    return values


async def arun(
    targets: Any,
    *,
    executor: str | Executor | None = None,
    inputs: Mapping[Any, Any] | None = None,
    throw: bool = True,
    progress: bool = False,
    report: str | None = None,
    plugins: Iterable[object] = (),
    cache: str | os.PathLike[str] | Cache | None = None,
    **options: Any,
) -> Any:
    """:func:`run` for a running asyncio or trio program; coroutine nodes run on its loop."""
    ex, owned = resolve_executor(executor, options)
    try:
        values, failure = await ex._aexecute(
            targets, inputs, throw, progress, report, plugins, cache
        )
    finally:
        if owned:
            ex.close()
    if failure is not None:
        raise failure
    return values
