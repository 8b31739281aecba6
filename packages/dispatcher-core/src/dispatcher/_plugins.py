"""The process-wide plugin manager, and the observers one run gets from it.

The manager knows the hook specifications and every plugin installed under the entry-point
group; core's own executors are added by :mod:`dispatcher._registry`, the one module that
needs them. :func:`run_observers` gives a run its bound hooks: the installed observers plus
the ones ``run()`` asked for (``plugins``, ``progress``, ``report``, logging).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pluggy

from ._hooks import OBSERVER_HOOKS, PROJECT, HookSpecs, Observers
from ._logging import log_observer

__all__ = ["ENTRY_POINT_GROUP", "PluginManager", "plugin_manager", "run_observers"]

ENTRY_POINT_GROUP = "dispatcher"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting the changes to its set of plugins: what is derived from
    the plugins (the executor table, the installed observers) is kept until it changes."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(HookSpecs)
        self.generation = 0
        """Bumped by every registration and unregistration."""
        self._observers: tuple[int, Observers] | None = None

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        self.generation += 1
        return registered

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        unregistered = super().unregister(plugin, name)
        self.generation += 1
        return unregistered

    def observers(self) -> Observers:
        """The observer hooks of this manager's plugins, bound once per generation."""
        kept = self._observers
        if kept is None or kept[0] != self.generation:
            kept = self._observers = (self.generation, Observers(self))
        return kept[1]


_lock = threading.Lock()
_manager: PluginManager | None = None


def plugin_manager() -> PluginManager:
    """The process-wide manager: the hook specifications and every installed plugin."""
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                manager = PluginManager()
                manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
                manager.check_pending()
                _manager = manager
    return _manager


def run_observers(plugins: Iterable[object], *, progress: bool, report: str | None) -> Observers:
    """The observer hooks of one run: installed observers, then ``plugins``, the progress
    bar (``progress``), the HTML report (``report``, a path) and the loggers' observer
    (when the ``dispatcher`` loggers are enabled)."""
    extra = list(plugins)
    logger = log_observer()
    if logger is not None:
        extra.append(logger)
    if progress:
        from ._progress import ProgressBar  # tqdm and drawing: only for runs that draw

        extra.append(ProgressBar())
    if report is not None:
        from ._report import ReportWriter

        extra.append(ReportWriter(report))
    installed = plugin_manager()
    if not extra:
        return installed.observers()
    # Per-run observers go into a manager of their own, so concurrent runs never see each
    # other's; the installed observers join it, the executor providers are not needed.
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(HookSpecs)
    for name, plugin in installed.list_name_plugin():
        if plugin is not None and _observes(plugin):
            manager.register(plugin, name=name)
    for plugin in extra:
        manager.register(plugin)
    manager.check_pending()
    return Observers(manager)


def _observes(plugin: object) -> bool:
    return any(hasattr(plugin, name) for name in OBSERVER_HOOKS)
