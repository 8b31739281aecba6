"""The API reference: every public name documents itself, and docs/api.md, generated from
those docstrings by docs/make_api.py, says what the code says today."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "make_api.py"


def load_generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("make_api", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_api = load_generator()


def test_every_public_name_has_a_docstring() -> None:
    assert make_api.missing_docstrings() == []


@pytest.mark.parametrize("plugin", make_api.PLUGINS)
def test_every_public_name_of_a_plugin_has_a_docstring(plugin: str) -> None:
    if importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{plugin} is not installed here")
    assert make_api.missing_docstrings([plugin]) == []


def test_the_api_page_is_up_to_date() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    assert page == make_api.render(), "docs/api.md is stale: run python docs/make_api.py"


def test_the_page_covers_what_the_readme_points_to() -> None:
    page = make_api.render()
    for name in ("run(", "arun(", "get_executor(", "DispatchGraph(", "Result("):
        assert name in page
    # Hooks with their arguments, and the pluggy rule about **kwargs.
    assert "dispatcher_task_finished(node: DispatchNode, worker: str, duration: float" in page
    assert "`**kwargs` receives\nnothing" in page
    # Methods are shown as methods, with their return types.
    assert "#### method `sources() -> list[DispatchNode]`" in page


def test_an_undocumented_name_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("dispatcher_undocumented")
    exec(
        "class Documented:\n"
        "    '''Has one.'''\n"
        "    def quiet(self): pass\n"
        "    def _private(self): pass\n"
        "def bare(): pass\n"
        "LIMIT = 3\n"
        "__all__ = ['Documented', 'bare', 'LIMIT']\n",
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert make_api.missing_docstrings([module.__name__]) == [
        "dispatcher_undocumented.Documented.quiet",
        "dispatcher_undocumented.bare",
        "dispatcher_undocumented.LIMIT",
    ]


def test_the_check_mode_fails_on_a_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "api.md"
    stale.write_text("# API reference\n\nout of date\n")
    monkeypatch.setattr(make_api, "OUTPUT", stale)
    monkeypatch.setattr(sys, "argv", ["make_api.py", "--check"])
    assert make_api.main() == 1
    monkeypatch.setattr(sys, "argv", ["make_api.py"])
    assert make_api.main() == 0
    monkeypatch.setattr(sys, "argv", ["make_api.py", "--check"])
    assert make_api.main() == 0
