"""Finding executors: by name, through the ``dispatcher_executors`` hook."""

from __future__ import annotations

import os
from typing import Any

from ._errors import ExecutorNotFound
from ._executor import COMMON_OPTIONS, Executor, ExecutorInfo
from ._hooks import plugin_manager

__all__ = ["DEFAULT_EXECUTOR", "available_executors", "get_executor", "resolve_executor"]

DEFAULT_EXECUTOR = "async"
ENVIRONMENT_VARIABLE = "DISPATCHER_EXECUTOR"

# Executors we know of but that live in their own distribution.
KNOWN_DISTRIBUTIONS = {"mp": "dispatcher-mp", "mpi": "dispatcher-mpi"}


def available_executors() -> dict[str, ExecutorInfo]:
    """Every installed executor, by name, with its distribution, version and description."""
    pm = plugin_manager()
    found: dict[str, ExecutorInfo] = {}
    for batch in pm.hook.dispatcher_executors():
        for info in batch:
            if info.name in found:
                raise RuntimeError(
                    f"two plugins provide an executor named {info.name!r}: "
                    f"{found[info.name].distribution or '?'} and {info.distribution or '?'}"
                )
            if info.distribution and not info.version:
                info = _with_version(info)
            found[info.name] = info
    return dict(sorted(found.items()))


def _with_version(info: ExecutorInfo) -> ExecutorInfo:
    from dataclasses import replace
    from importlib import metadata  # slow to import; only needed once plugins load

    try:
        version = metadata.version(info.distribution)
    except metadata.PackageNotFoundError:
        return info
    return replace(info, version=version)


def get_executor(name: str, **options: Any) -> Executor:
    """A new executor of the kind ``name``, configured by ``options``.

    Raises :class:`ExecutorNotFound` (a ``LookupError``) for a name nobody provides, and
    ``TypeError`` for an option the executor does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"an executor name is a str, got {type(name).__name__}: {name!r}")
    executors = available_executors()
    info = executors.get(name)
    if info is None:
        raise ExecutorNotFound(name, list(executors), KNOWN_DISTRIBUTIONS.get(name))
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
    if executor is None:
        executor = os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_EXECUTOR
    if not isinstance(executor, str):
        raise TypeError(
            f"executor must be a name or an Executor, got {type(executor).__name__}: {executor!r}"
        )
    return get_executor(executor, **options), True
