"""The hook contract: the ``hookimpl`` marker, the hook specifications, and the bound
observer hooks of one run.

A leaf: it imports pluggy and nothing of dispatcher at run time, so every module that
implements or calls a hook (observers, executors, the registry) can depend on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ._executor import Executor, ExecutorInfo
    from ._graph import DispatchGraph
    from ._nodes import DispatchNode

__all__ = ["OBSERVER_HOOKS", "PROJECT", "HookSpecs", "Observers", "hookimpl", "hookspec"]

PROJECT = "dispatcher"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a plugin's implementation of a dispatcher hook."""

log = logging.getLogger("dispatcher.plugins")


class HookSpecs:
    """The hooks a plugin may implement (each implementation may take any subset of the
    arguments, by name)."""

    @hookspec
    def dispatcher_executors(self) -> Iterable[ExecutorInfo]:  # type: ignore[empty-body]
        """Return the executors this plugin provides."""

    @hookspec
    def dispatcher_run_started(self, graph: DispatchGraph, executor: Executor) -> None:
        """A run begins; ``graph`` is what will run (after ``inputs``)."""

    @hookspec
    def dispatcher_run_replanned(self, graph: DispatchGraph, executor: Executor) -> None:
        """The run was planned again and goes on with ``graph``: a cache entry planned
        as a hit could not be read, so the nodes it made unnecessary must run after all.

        Still the same run (``run_finished`` comes once, at its end). Nodes that already
        finished keep their outcome; those of them in ``graph`` are read back from the
        cache (``task_cached``). The run's nodes are those of every graph it announced,
        ``run_started``'s and each ``run_replanned``'s."""

    @hookspec
    def dispatcher_run_finished(
        self, graph: DispatchGraph, executor: Executor, error: BaseException | None
    ) -> None:
        """A run ended; ``error`` is what ended it, or ``None``."""

    @hookspec
    def dispatcher_task_started(self, node: DispatchNode, worker: str) -> None:
        """``node`` was handed to ``worker``; for a task sent ahead of its inputs, once
        they are made (never for one whose input failed)."""

    @hookspec
    def dispatcher_task_finished(
        self, node: DispatchNode, worker: str, duration: float, nbytes: int | None
    ) -> None:
        """``node`` finished on ``worker`` after ``duration`` seconds."""

    @hookspec
    def dispatcher_task_failed(
        self, node: DispatchNode, worker: str, error: BaseException, duration: float | None
    ) -> None:
        """``node`` failed, or was skipped because an ancestor failed (a DependencyError).

        ``duration``: seconds the failed call ran, measured where it ran; ``None`` where
        nobody knows (its worker was lost, or it never ran)."""

    @hookspec
    def dispatcher_task_retried(
        self,
        node: DispatchNode,
        worker: str,
        error: BaseException,
        attempt: int,
        duration: float | None,
    ) -> None:
        """``node`` runs again; ``attempt`` is the number of the attempt about to start.

        ``duration``: seconds the failed attempt ran, as for ``dispatcher_task_failed``;
        ``None`` also for a finished result lost with its worker and computed again."""

    @hookspec
    def dispatcher_task_cached(self, node: DispatchNode, worker: str) -> None:
        """``node``'s value was read from the run's cache on ``worker`` instead of being
        computed (fired instead of ``task_started`` and ``task_finished``)."""


OBSERVER_HOOKS = (
    "dispatcher_run_started",
    "dispatcher_run_replanned",
    "dispatcher_run_finished",
    "dispatcher_task_started",
    "dispatcher_task_finished",
    "dispatcher_task_failed",
    "dispatcher_task_retried",
    "dispatcher_task_cached",
)
"""The hooks that observe a run (every hook but the executor provider)."""

Hook = Callable[..., None] | None


class Observers:
    """The observer hooks of one run, bound from a plugin manager: each is ``None`` when
    nobody implements it, so the per-task path skips pluggy entirely. An observer that
    raises is logged, not fatal."""

    __slots__ = (
        "run_finished",
        "run_replanned",
        "run_started",
        "task_cached",
        "task_failed",
        "task_finished",
        "task_retried",
        "task_started",
    )

    run_started: Hook
    run_replanned: Hook
    run_finished: Hook
    task_started: Hook
    task_finished: Hook
    task_failed: Hook
    task_retried: Hook
    task_cached: Hook

    def __init__(self, manager: pluggy.PluginManager) -> None:
        for short in self.__slots__:
            self._bind(manager, short)

    def _bind(self, manager: pluggy.PluginManager, short: str) -> None:
        caller = getattr(manager.hook, f"dispatcher_{short}")
        impls = caller.get_hookimpls()
        if not impls:
            setattr(self, short, None)
            return
        if len(impls) > 1 and not any(i.hookwrapper or getattr(i, "wrapper", False) for i in impls):
            setattr(self, short, _each_apart(impls, short))
            return

        def call(**kwargs: Any) -> None:
            try:
                caller(**kwargs)
            except KeyboardInterrupt:
                raise  # Ctrl-C, landing in the driver while an observer runs
            except BaseException:  # SystemExit and the like included: the observer's
                log.exception("an observer of dispatcher_%s raised; the run goes on", short)

        setattr(self, short, call)


def _each_apart(impls: list[Any], short: str) -> Callable[..., None]:
    """Call each implementation of hook ``short`` (pluggy's order, last registered
    first) on its own: pluggy stops at the first that raises, and one faulty observer
    would silence every other."""
    bound = [(impl.function, impl.argnames, _named(impl.plugin)) for impl in reversed(impls)]

    def call(**kwargs: Any) -> None:
        for function, names, plugin in bound:
            try:
                function(*[kwargs[name] for name in names])
            except KeyboardInterrupt:
                raise  # Ctrl-C, landing in the driver while an observer runs
            except BaseException:  # SystemExit and the like included: the observer's
                log.exception(
                    "an observer of dispatcher_%s raised (%s); the run goes on", short, plugin
                )

    return call


def _named(plugin: object) -> str:
    """A plugin as its author knows it: a module by its name, an object by its class's."""
    name = getattr(plugin, "__name__", None)
    return name if isinstance(name, str) else type(plugin).__qualname__
