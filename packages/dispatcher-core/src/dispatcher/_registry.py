"""Finding executors by name: the top of core's stack.

The table of executors is built once per process from the ``dispatcher_executors`` hook of
every plugin, core's own built-ins (:mod:`dispatcher._builtin`) registered here through the
same hook. It is built again only when the plugin manager's set of plugins changes (a plugin
registered or unregistered later in the process), so naming an executor costs a dictionary
lookup.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import replace
from typing import Any

from . import _builtin
from ._errors import ExecutorNotFound
from ._executor import COMMON_OPTIONS, Executor, ExecutorInfo
from ._plugins import PluginManager, plugin_manager

__all__ = ["DEFAULT_EXECUTOR", "available_executors", "get_executor", "resolve_executor"]

DEFAULT_EXECUTOR = "async"
ENVIRONMENT_VARIABLE = "DISPATCHER_EXECUTOR"
BUILTIN_PLUGIN = "dispatcher.builtin"

# Executors we know of but that live in their own distribution.
# Quoted as pip takes them from a clone: these distributions are not on a package index,
# and a name that is could belong to someone else.
KNOWN_DISTRIBUTIONS = {
    "mp": "./packages/dispatcher-mp",
    "mpi": "'./packages/dispatcher-mpi[mpich]'",
    "dask": "./packages/dispatcher-dask",
}


class _Table:
    """The executors by name, with the plugin manager generation they were read at."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One attribute, replaced whole, so a reader never pairs a table with the wrong
        # generation; None until the first build.
        self._state: tuple[int, dict[str, ExecutorInfo]] | None = None

    def current(self) -> dict[str, ExecutorInfo]:
        manager = plugin_manager()
        state = self._state
        if state is not None and state[0] == manager.generation:
            return state[1]
        with self._lock:
            if manager.get_plugin(BUILTIN_PLUGIN) is None:
                manager.register(_builtin, name=BUILTIN_PLUGIN)
            state = self._state
            if state is None or state[0] != manager.generation:
                generation = manager.generation  # before the hook runs: a plugin may come
                state = self._state = (generation, _collect(manager))
            return state[1]


_table = _Table()


def _collect(manager: PluginManager) -> dict[str, ExecutorInfo]:
    versions = {
        _normalize(dist.project_name): dist.version for _, dist in manager.list_plugin_distinfo()
    }
    found: dict[str, ExecutorInfo] = {}
    for batch in manager.hook.dispatcher_executors():
        for info in batch:
            if info.name in found:
                raise RuntimeError(
                    f"two plugins provide an executor named {info.name!r}: "
                    f"{found[info.name].distribution or '?'} and {info.distribution or '?'}"
                )
            if info.distribution and not info.version:
                version = versions.get(_normalize(info.distribution), "")
                info = replace(info, version=version)
            found[info.name] = info
    return dict(sorted(found.items()))


def _normalize(distribution: str) -> str:
    """A distribution's name as indexes compare it: ``Dispatcher_MP`` is ``dispatcher-mp``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def available_executors() -> dict[str, ExecutorInfo]:
    """Every installed executor, by name, with its distribution, version and description."""
    return dict(_table.current())


def get_executor(name: str, **options: Any) -> Executor:
    """A new executor of the kind ``name``, configured by ``options``.

    Raises :class:`ExecutorNotFound` (a ``LookupError``) for a name nobody provides, and
    ``TypeError`` for an option the executor does not take.
    """
    return _make(name, options, origin=None)


def _make(name: str, options: dict[str, Any], origin: str | None) -> Executor:
    if not isinstance(name, str):
        raise TypeError(f"an executor name is a str, got {type(name).__name__}: {name!r}")
    executors = available_executors()
    info = executors.get(name)
    if info is None:
        raise ExecutorNotFound(name, list(executors), KNOWN_DISTRIBUTIONS.get(name), origin)
    if options:
        valid = (*COMMON_OPTIONS, *info.options)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(
                f"the {name!r} executor does not take {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(valid)}"
            )
    return info.factory(**options)


def resolve_executor(executor: Any, options: dict[str, Any]) -> tuple[Executor, bool]:
    """The executor a ``run`` call asked for, and whether the call owns (must close) it."""
    if isinstance(executor, Executor):
        if options:
            raise TypeError(
                "executor options (" + ", ".join(sorted(options)) + ") go to get_executor() "
                "or to run() with an executor name, not with an Executor instance"
            )
        return executor, False
    origin = None
    if executor is None:
        executor = os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_EXECUTOR
        if os.environ.get(ENVIRONMENT_VARIABLE):
            origin = f"${ENVIRONMENT_VARIABLE}"
    if not isinstance(executor, str):
        raise TypeError(
            f"executor must be a name or an Executor, got {type(executor).__name__}: {executor!r}"
        )
    return _make(executor, options, origin), True
