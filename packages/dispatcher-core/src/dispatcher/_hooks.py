"""The plugin kernel: hook specifications, the ``hookimpl`` marker, the plugin manager.

Executors are provided through :func:`dispatcher_executors`; observers implement the
per-run and per-task hooks. Core registers its own executors through the same hook.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ._executor import Executor, ExecutorInfo
    from ._graph import DispatchGraph
    from ._nodes import DispatchNode

PROJECT = "dispatcher"
ENTRY_POINT_GROUP = "dispatcher"

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
    def dispatcher_run_finished(
        self, graph: DispatchGraph, executor: Executor, error: BaseException | None
    ) -> None:
        """A run ended; ``error`` is what ended it, or ``None``."""

    @hookspec
    def dispatcher_task_started(self, node: DispatchNode, worker: str) -> None:
        """``node`` was handed to ``worker``."""

    @hookspec
    def dispatcher_task_finished(
        self, node: DispatchNode, worker: str, duration: float, nbytes: int | None
    ) -> None:
        """``node`` finished on ``worker`` after ``duration`` seconds."""

    @hookspec
    def dispatcher_task_failed(self, node: DispatchNode, worker: str, error: BaseException) -> None:
        """``node`` failed, or was skipped because an ancestor failed (a DependencyError)."""

    @hookspec
    def dispatcher_task_retried(
        self, node: DispatchNode, worker: str, error: BaseException, attempt: int
    ) -> None:
        """``node`` runs again; ``attempt`` is the number of the attempt about to start."""


TASK_HOOKS = (
    "dispatcher_task_started",
    "dispatcher_task_finished",
    "dispatcher_task_failed",
    "dispatcher_task_retried",
)

Hook = Callable[..., None] | None

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager: core's built-ins plus every installed plugin."""
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                _manager = _new_manager()
                from . import _builtin

                _manager.register(_builtin, name="dispatcher.builtin")
                _manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
                _manager.check_pending()
    return _manager


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    return pm


class Observers:
    """The observer hooks of one run, each ``None`` when nobody implements it, so the
    per-task path skips pluggy entirely. An observer that raises is logged, not fatal."""

    __slots__ = (
        "run_finished",
        "run_started",
        "task_failed",
        "task_finished",
        "task_retried",
        "task_started",
    )

    run_started: Hook
    run_finished: Hook
    task_started: Hook
    task_finished: Hook
    task_failed: Hook
    task_retried: Hook

    def __init__(self, extra_plugins: Iterable[object] = ()) -> None:
        base = plugin_manager()
        extra = list(extra_plugins)
        if extra:
            pm = _new_manager()
            for name, plugin in base.list_name_plugin():
                if plugin is not None and not _is_provider_only(plugin):
                    pm.register(plugin, name=name)
            for plugin in extra:
                pm.register(plugin)
            pm.check_pending()
        else:
            pm = base
        for short in self.__slots__:
            self._bind(pm, short)

    def _bind(self, pm: pluggy.PluginManager, short: str) -> None:
        caller = getattr(pm.hook, f"dispatcher_{short}")
        if not caller.get_hookimpls():
            setattr(self, short, None)
            return

        def call(**kwargs: Any) -> None:
            try:
                caller(**kwargs)
            except Exception:
                log.exception("an observer of dispatcher_%s raised; the run goes on", short)

        setattr(self, short, call)


def _is_provider_only(plugin: object) -> bool:
    return not any(
        hasattr(plugin, name)
        for name in (*TASK_HOOKS, "dispatcher_run_started", "dispatcher_run_finished")
    )
