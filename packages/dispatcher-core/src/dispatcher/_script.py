"""Loading ``FILE.py:NAME`` for the command line, and showing what went wrong in it.

The file is loaded as a module with its directory importable (here and in worker processes
started meanwhile), ``NAME`` is looked up and, if it is a function without arguments,
called; what comes out must be something ``run`` takes. Mistakes become a
:class:`UsageError` with one line to show; errors raised by the user's own code are shown
as its traceback, without dispatcher's or importlib's frames.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ._graph import DispatchGraph
from ._nodes import DispatchNode

__all__ = [
    "TARGET_KINDS",
    "UsageError",
    "format_exception",
    "load",
    "one_line",
    "split_target",
    "target",
]

TARGET_KINDS = (
    "a node, nodes in lists, tuples and dicts (nested as deep as you like), a "
    "DispatchGraph, or a function without arguments that returns one"
)

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class UsageError(Exception):
    """A mistake in how the command was called; shown as one line, exit status 2."""


def split_target(spec: str) -> tuple[Path, str]:
    """``FILE.py:NAME`` as the file's path and the name, both checked."""
    file, colon, name = spec.rpartition(":")
    if not colon or not file or not name:
        raise UsageError(f"expected FILE.py:NAME, got {spec!r} (e.g. pipeline.py:pipeline)")
    path = Path(file)
    if not path.exists():
        raise UsageError(f"{file}: no such file")
    if not path.is_file():
        raise UsageError(f"{file}: not a file")
    if path.suffix != ".py":
        raise UsageError(f"{file}: expected a Python file (.py)")
    if not name.isidentifier():
        raise UsageError(f"{name!r} is not a Python name")
    return path, name


@contextlib.contextmanager
def load(path: Path) -> Iterator[ModuleType]:
    """Load ``path`` as a module, with its directory importable here and in worker processes.

    The module's functions are pickled by value (as a script's are), so workers need not be
    able to import it by name; its directory also goes on ``PYTHONPATH`` for workers started
    during the command, so that modules next to it import there too. Everything is put back
    on the way out.
    """
    import cloudpickle

    directory = str(path.resolve().parent)
    stem = path.stem
    name = stem if stem.isidentifier() and stem not in sys.modules else _fresh_name(stem)
    saved_path = list(sys.path)
    saved_env = os.environ.get("PYTHONPATH")
    registered = False
    try:
        sys.path.insert(0, directory)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [directory, saved_env]))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            where = f"{exc.filename}:{exc.lineno}" if exc.lineno else str(path)
            raise UsageError(f"{where}: SyntaxError: {exc.msg}") from None
        except ImportError as exc:
            raise UsageError(f"cannot load {path}: {one_line(exc)}") from None
        except Exception as exc:
            print(format_exception(exc), end="", file=sys.stderr)
            raise UsageError(f"cannot load {path}: it raised {type(exc).__name__}") from None
        cloudpickle.register_pickle_by_value(module)
        registered = True
        yield module
    finally:
        if registered:
            cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop(name, None)
        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env


def _fresh_name(stem: str) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
    for i in itertools.count():
        name = f"_dispatcher_script_{base}_{i}"
        if name not in sys.modules:
            return name
    raise AssertionError("unreachable")


def target(module: ModuleType, path: Path, name: str) -> Any:
    """``NAME`` from the module, as something ``run`` takes."""
    try:
        value = getattr(module, name)
    except AttributeError:
        hint = _candidates(module)
        raise UsageError(
            f"{path} has no {name!r}" + (f"; it defines: {', '.join(hint)}" if hint else "")
        ) from None
    if callable(value) and not isinstance(value, (DispatchNode, DispatchGraph)):
        try:
            inspect.signature(value).bind()
        except TypeError:
            raise UsageError(
                f"{name} in {path} is a function that needs arguments; "
                f"dispatcher needs {TARGET_KINDS}"
            ) from None
        except ValueError:
            pass  # no signature to check (a builtin): just call it
        try:
            value = value()
        except Exception as exc:
            print(format_exception(exc), end="", file=sys.stderr)
            raise UsageError(f"{name}() in {path} raised {type(exc).__name__}") from None
        what = f"{name}() in {path} returned"
    else:
        what = f"{name} in {path} is"
    if not _is_target(value):
        raise UsageError(f"{what} {_describe(value)}; dispatcher needs {TARGET_KINDS}")
    return value


def _is_target(value: Any) -> bool:
    """Whether ``run()`` takes ``value`` for its targets: a graph, a node, or nodes in
    lists, tuples and dicts, nested as deep as one likes."""
    if isinstance(value, DispatchGraph):
        return True
    return isinstance(value, (DispatchNode, list, tuple, dict)) and _first_odd(value) is _NONE


_NONE = object()


def _first_odd(value: Any, depth: int = 200) -> Any:
    """The first thing in ``value`` that is neither a node nor a list, tuple or dict
    (``depth`` levels down at most), or ``_NONE``."""
    if isinstance(value, DispatchNode):
        return _NONE
    if isinstance(value, (list, tuple, dict)) and depth:
        for item in value.values() if isinstance(value, dict) else value:
            odd = _first_odd(item, depth - 1)
            if odd is not _NONE:
                return odd
        return _NONE
    return value


def _describe(value: Any) -> str:
    kind = type(value).__name__
    if isinstance(value, (list, tuple, dict)):
        odd = _first_odd(value)
        odd_kind = type(odd).__name__
        return f"{_a(kind)} holding {_a(odd_kind)} ({_clip(repr(odd))}), not only nodes"
    return f"{_a(kind)} ({_clip(repr(value))})"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _candidates(module: ModuleType) -> list[str]:
    """Names in the module that could be given as NAME, for the error message."""
    found = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        if _is_target(value) or (
            inspect.isfunction(inspect.unwrap(value))
            and getattr(inspect.unwrap(value), "__module__", None) == module.__name__
            and _takes_no_arguments(value)
        ):
            found.append(key)
    return found[:12]


def _takes_no_arguments(func: Any) -> bool:
    try:
        inspect.signature(func).bind()
    except (TypeError, ValueError):
        return False
    return True


# -- showing errors ------------------------------------------------------------------------


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` (and of its causes) without dispatcher's or importlib's
    frames: what is left is the user's code, plus the notes (label, remote traceback)."""
    te = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    stack = [te]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        kept = [frame for frame in current.stack if not _internal(frame.filename)]
        current.stack = traceback.StackSummary.from_list(kept)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        stack.extend(current.exceptions or ())
    return "".join(te.format())


def _internal(filename: str) -> bool:
    return filename.startswith((_PACKAGE_DIR, "<frozen importlib"))


def one_line(exc: BaseException) -> str:
    """``Type: message`` with the whole message on one line (a launch hint may span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
