"""The executor registry: built once per process, rebuilt when a provider comes or goes."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import Any

import pytest

import dispatcher
from dispatcher import (
    Executor,
    ExecutorInfo,
    Op,
    _registry,
    available_executors,
    get_executor,
    hookimpl,
    run,
)
from dispatcher._plugins import PluginManager, plugin_manager
from dispatcher.testing import FakeTransport, Recorder, tasks


class CountingProvider:
    """Provides the ``counted`` executor and counts how often it is asked."""

    def __init__(self, name: str = "counted", distribution: str = "tests") -> None:
        self.name = name
        self.distribution = distribution
        self.calls = 0

    @hookimpl
    def dispatcher_executors(self) -> list[ExecutorInfo]:
        self.calls += 1

        def factory(**options: Any) -> Executor:
            options.pop("workers", None)
            return Executor(self.name, FakeTransport(), **options)

        return [ExecutorInfo(self.name, factory, "counts its calls", self.distribution)]


@pytest.fixture
def provider() -> Iterator[CountingProvider]:
    provider = CountingProvider()
    manager = plugin_manager()
    manager.register(provider)
    try:
        yield provider
    finally:
        manager.unregister(provider)


def test_the_hook_runs_once_for_any_number_of_lookups(provider: CountingProvider) -> None:
    for _ in range(3):
        assert "counted" in available_executors()
    assert run(Op(tasks.inc, Op(tasks.inc, 1)), executor="counted", retries=0) == 3
    with get_executor("counted"):
        pass
    assert provider.calls == 1


def test_a_provider_that_goes_away_takes_its_executors(provider: CountingProvider) -> None:
    assert "counted" in available_executors()
    plugin_manager().unregister(provider)
    assert "counted" not in available_executors()
    plugin_manager().register(provider)  # for the fixture to unregister
    assert "counted" in available_executors()


def test_the_table_is_a_copy_for_the_caller() -> None:
    executors = available_executors()
    executors.clear()
    assert "sync" in available_executors()


def test_versions_come_from_the_plugin_distributions_not_per_call_metadata(
    provider: CountingProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_metadata(name: str) -> str:
        raise AssertionError(f"importlib.metadata asked for {name!r}")

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    plugin_manager().register(late := CountingProvider("late"))  # forces a rebuild
    try:
        executors = available_executors()
    finally:
        plugin_manager().unregister(late)
    assert executors["sync"].version == executors["async"].version == dispatcher.__version__
    loaded = {
        dist.project_name: dist.version for _, dist in plugin_manager().list_plugin_distinfo()
    }
    for info in executors.values():
        if info.distribution in loaded:
            assert info.version == loaded[info.distribution]
    assert executors["late"].version == ""  # registered by hand: no distribution to ask


def test_core_executors_without_any_plugin_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = PluginManager()  # no entry points: nothing provides an executor yet
    monkeypatch.setattr(_registry, "plugin_manager", lambda: bare)
    assert set(_registry._Table().current()) == {"sync", "async"}


def test_two_providers_of_one_name_is_an_error() -> None:
    twin = CountingProvider("sync", "someone-else")
    plugin_manager().register(twin)
    try:
        with pytest.raises(RuntimeError, match="two plugins provide an executor named 'sync'"):
            available_executors()
        with pytest.raises(RuntimeError):  # every time, not only the first
            get_executor("sync")
    finally:
        plugin_manager().unregister(twin)
    assert available_executors()["sync"].distribution == "dispatcher-core"


def test_an_observer_installed_later_sees_the_next_runs_only_while_installed() -> None:
    recorder = Recorder()
    run(Op(tasks.inc, 1), executor="sync")  # the installed observers are bound by now
    plugin_manager().register(recorder)
    try:
        run(Op(tasks.inc, 1), executor="sync")
    finally:
        plugin_manager().unregister(recorder)
    seen = len(recorder.events)
    run(Op(tasks.inc, 1), executor="sync")
    assert seen > 0
    assert len(recorder.events) == seen
