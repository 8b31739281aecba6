"""``run`` and ``arun``: run a graph on an executor chosen by name or given."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ._cache import Cache
from ._executor import Executor
from ._registry import DEFAULT_EXECUTOR, ENVIRONMENT_VARIABLE, get_executor, resolve_executor
from ._threads import in_pool_thread

__all__ = ["arun", "run"]

# Core's in-process executors hold nothing between runs but idle threads: a call that
# names one without options runs on one kept for the process, instead of paying for an
# executor (and its thread pool) per call.
SHARED_EXECUTORS = ("async", "sync")
_shared: dict[str, Executor] = {}
_shared_lock = threading.Lock()


def _forget_shared() -> None:
    # A forked child has none of its parent's threads: its executors start afresh.
    global _shared_lock
    _shared.clear()
    _shared_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared)


def _executor_for(
    executor: str | Executor | None, options: dict[str, Any]
) -> tuple[Executor, bool]:
    """The executor a call asked for, and whether the call owns (must close) it."""
    name = executor
    if name is None:
        name = os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_EXECUTOR
    # From a thread of a pool (a task calling run()), a run of its own: waiting there
    # for tasks of the same pool could take every thread of it.
    if options or name not in SHARED_EXECUTORS or in_pool_thread():
        return resolve_executor(executor, options)
    assert isinstance(name, str)
    shared = _shared.get(name)
    if shared is None or shared.closed:
        with _shared_lock:
            shared = _shared.get(name)
            if shared is None or shared.closed:
                shared = _shared[name] = get_executor(name)
    return shared, False


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
    ex, owned = _executor_for(executor, options)
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
    """:func:`run` for a running asyncio or trio program. On the ``async`` executor (the
    default) coroutine nodes run on the program's loop; other executors await them where
    they call them (``sync``: on a loop of the task's own, while the program's loop waits)."""
    ex, owned = _executor_for(executor, options)
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
