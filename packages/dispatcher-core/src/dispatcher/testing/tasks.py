"""Functions the conformance suite runs as tasks.

They live at module level in an installed module so that any backend, in any process,
can import them. Calls are counted with marker files, which works across processes.
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
import uuid
from pathlib import Path
from typing import Any


def add(a: Any, b: Any) -> Any:
    return a + b


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def adder(n: int) -> Any:
    """A closure adding ``n``: a function no worker holds until it is sent (by value)."""

    def add_n(x: int) -> int:
        return x + n

    return add_n


def identity(x: Any) -> Any:
    return x


async def async_double(x: int) -> int:
    return 2 * x


def returns_a_coroutine(x: int) -> Any:
    """A plain function that returns a coroutine (as ``lambda x: fetch(x)`` does)."""
    return async_double(x)


@types.coroutine
def _generator_double(x: int) -> Any:
    if False:  # a generator, made awaitable by @types.coroutine
        yield
    return 2 * x


def returns_a_generator_coroutine(x: int) -> Any:
    """A plain function that returns an old-style, generator-based coroutine."""
    return _generator_double(x)


def total(*values: Any) -> Any:
    return sum(values)


def pair(a: Any, b: Any) -> tuple[Any, Any]:
    return (a, b)


def describe(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """Returns exactly what it was called with, to check argument substitution."""
    return (args, kwargs)


def kinds(*args: Any) -> tuple[str, ...]:
    """The exact type names of the arguments (containers must keep their types)."""
    return tuple(type(a).__name__ for a in args)


def fail(message: str) -> Any:
    raise ValueError(message)


class TaskFailure(Exception):
    """A user exception type with two arguments, to check type and args survive."""


def fail_with(code: int, text: str) -> Any:
    raise TaskFailure(code, text)


def fail_chained(message: str) -> Any:
    try:
        raise KeyError("inner")
    except KeyError as exc:
        raise RuntimeError(message) from exc


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def pid(_: Any = None) -> int:
    """The process this task ran in: which worker it was."""
    return os.getpid()


def report_pid_then_sleep(path: str, seconds: float) -> int:
    """Writes this worker's pid to ``path`` (so a test can kill it), then sleeps."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def wait_for_file(path: str, seconds: float) -> bool:
    """True as soon as ``path`` exists; False if it did not within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def calls(log: str, name: str) -> int:
    """How many times ``logged``/``flaky`` ran under ``name``."""
    return sum(1 for p in Path(log).iterdir() if p.name.startswith(name + "."))


def logged(log: str, name: str, value: Any) -> Any:
    """Returns ``value``, leaving a marker that it ran."""
    (Path(log) / f"{name}.{uuid.uuid4().hex}").touch()
    return value


def flaky(log: str, name: str, failures: int, value: Any) -> Any:
    """Raises ValueError the first ``failures`` times, then returns ``value``."""
    seen = calls(log, name)
    (Path(log) / f"{name}.{uuid.uuid4().hex}").touch()
    if seen < failures:
        raise ValueError(f"{name} fails on attempt {seen + 1}")
    return value


def hangs_once(log: str, name: str, seconds: float, value: Any) -> Any:
    """Sleeps ``seconds`` the first time (past its timeout, say), then returns ``value``."""
    seen = calls(log, name)
    (Path(log) / f"{name}.{uuid.uuid4().hex}").touch()
    if not seen:
        time.sleep(seconds)
    return value


def die_once(log: str, name: str, value: Any) -> Any:
    """Kills its own process the first time (a worker crash), then returns ``value``."""
    marker = Path(log) / f"{name}.died"
    if not marker.exists():
        marker.touch()
        os._exit(17)
    return value


class Tracked:
    """Counts live instances in this process, to see results being released."""

    live = 0

    def __init__(self, most: int) -> None:
        Tracked.live += 1
        self.most = max(most, Tracked.live)

    def __del__(self) -> None:
        Tracked.live -= 1


def tracked_start() -> Tracked:
    return Tracked(0)


def tracked_step(previous: Tracked) -> Tracked:
    """A fresh object from the previous one; remembers the most ever alive at once."""
    return Tracked(previous.most)


def tracked_most(last: Tracked) -> int:
    return last.most


class Unpicklable:
    """An object that refuses to be pickled."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable objects cannot be pickled")


def make_unpicklable() -> Unpicklable:
    return Unpicklable()


def take(value: Any) -> str:
    return type(value).__name__


class UnpicklableError(Exception):
    """An exception that cannot cross a process boundary."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.handle = Unpicklable()

    def __reduce__(self) -> Any:
        raise TypeError("this exception cannot be pickled")


def fail_unpicklable(message: str) -> Any:
    raise UnpicklableError(message)


# -- odd exceptions and values (the fault checks) -------------------------------------------


class CustomBaseError(BaseException):
    """A user's own BaseException subclass (not an Exception)."""


class BadStrError(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of BadStrError fails")


class Weird(Exception):
    """An exception whose pickle round trip gives a str, not an exception."""

    def __reduce__(self) -> Any:
        return (str, ("x",))


def _raise_weird_cause() -> Any:
    raise ValueError("chained to a Weird") from Weird()


class BadNotesError(Exception):
    """An exception whose ``__notes__`` is not a list, so that ``add_note`` refuses it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.__notes__ = "not a list"  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """An exception declared as a frozen dataclass: setting any attribute raises, its
    ``__traceback__`` and ``__cause__`` included."""

    reason: str = "frozen"


ODD_EXCEPTIONS: dict[str, tuple[type[BaseException], Any]] = {
    "KeyboardInterrupt": (KeyboardInterrupt, lambda: KeyboardInterrupt()),
    "SystemExit": (SystemExit, lambda: SystemExit(4)),
    "GeneratorExit": (GeneratorExit, lambda: GeneratorExit()),
    "CustomBaseError": (CustomBaseError, lambda: CustomBaseError("custom")),
    "BadStrError": (BadStrError, lambda: BadStrError("unprintable")),
    "BadNotesError": (BadNotesError, lambda: BadNotesError("notes refused")),
    "FrozenError": (FrozenError, lambda: FrozenError("cannot be changed")),
}
"""Name -> (the type a task raises, a factory for the exception)."""


def raise_odd(kind: str) -> Any:
    """Raises the odd exception named ``kind`` (a key of ``ODD_EXCEPTIONS``, or
    ``"WeirdCause"``: a ValueError whose ``__cause__`` cannot make a pickle round trip)."""
    if kind == "WeirdCause":
        _raise_weird_cause()
    raise ODD_EXCEPTIONS[kind][1]()


def _exit_when_loaded() -> Any:
    raise SystemExit("unpickling this result exits")


class ExitsWhenLoaded:
    """A value that pickles fine and whose unpickling raises SystemExit."""

    def __reduce__(self) -> Any:
        return (_exit_when_loaded, ())


def make_exits_when_loaded() -> ExitsWhenLoaded:
    return ExitsWhenLoaded()


class ExitsWhenPickled:
    """A value whose pickling raises SystemExit (or ``exception``, a BaseException)."""

    def __init__(self, exception: BaseException | None = None) -> None:
        self.exception = exception if exception is not None else SystemExit(7)

    def __reduce__(self) -> Any:
        raise self.exception


def meet_then_make_exits_when_loaded(
    log: str, name: str, count: int, seconds: float
) -> ExitsWhenLoaded:
    """:func:`meet`, then an :class:`ExitsWhenLoaded`: such values on different workers."""
    meet(log, name, count, seconds, None)
    return ExitsWhenLoaded()


# -- abandoned work -------------------------------------------------------------------------


def blocked(log: str, name: str, gate: str, seconds: float) -> str:
    """Leaves a ``name.started`` marker, then waits for the file ``gate`` (at most
    ``seconds``: a guard so that no test leaves it behind for long) and leaves
    ``name.finished``."""
    logged(log, name + "-started", None)
    wait_for_file(gate, seconds)
    logged(log, name + "-finished", None)
    return name


def fail_once_started(log: str, name: str, seconds: float, message: str) -> Any:
    """Waits (at most ``seconds``) until a ``blocked`` task ``name`` has started, then
    raises ``ValueError(message)``: a failure while other work provably runs."""
    deadline = time.monotonic() + seconds
    while calls(log, name + "-started") == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    raise ValueError(message)


def meet(log: str, name: str, count: int, seconds: float, value: Any) -> Any:
    """Returns ``value`` once ``count`` tasks ``meet(..., name, count, ...)`` run at the same
    time; raises TimeoutError if they did not all get there within ``seconds``."""
    logged(log, name, None)
    deadline = time.monotonic() + seconds
    while calls(log, name) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {calls(log, name)} of {count} tasks {name!r} ran at the same time"
            )
        time.sleep(0.005)
    return value


# -- values slow to unpickle ----------------------------------------------------------------


def _loaded_when_open(log: str, name: str, gate: str, seconds: float, value: Any) -> Any:
    """What unpickling a :class:`HeldWhenLoaded` (or a :class:`HeldWhenLoadedError`)
    runs where it arrives: leaves a ``name-loading`` marker, waits for the file ``gate``
    (at most ``seconds``: a guard), leaves ``name-loaded`` and gives ``value``."""
    logged(log, name + "-loading", None)
    wait_for_file(gate, seconds)
    logged(log, name + "-loaded", None)
    return value


class HeldWhenLoaded:
    """A value that pickles at once and whose unpickling waits for a gate: it holds up
    whatever unpickles it until the test opens the gate. It unpickles as ``value``."""

    def __init__(self, log: str, name: str, gate: str, seconds: float, value: Any) -> None:
        self.held = (log, name, gate, seconds, value)

    def __reduce__(self) -> Any:
        return (_loaded_when_open, self.held)


def make_held_when_loaded(log: str, name: str, gate: str, seconds: float, value: Any) -> Any:
    return HeldWhenLoaded(log, name, gate, seconds, value)


class HeldWhenLoadedError(Exception):
    """An exception whose unpickling waits for a gate, like :class:`HeldWhenLoaded`; it
    unpickles as ``ValueError(message)``."""

    def __init__(self, log: str, name: str, gate: str, seconds: float, message: str) -> None:
        super().__init__(message)
        self.held = (log, name, gate, seconds, ValueError(message))

    def __reduce__(self) -> Any:
        return (_loaded_when_open, self.held)


def fail_held_when_loaded(log: str, name: str, gate: str, seconds: float, message: str) -> Any:
    raise HeldWhenLoadedError(log, name, gate, seconds, message)
