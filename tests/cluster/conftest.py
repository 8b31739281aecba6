"""The cluster tests run on emulated hosts: load the plugin that makes them, once."""

from __future__ import annotations

import cluster_plugin
import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(cluster_plugin):
        config.pluginmanager.register(cluster_plugin, "cluster_plugin")
