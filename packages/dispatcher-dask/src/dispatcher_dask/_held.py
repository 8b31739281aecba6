"""A result the caller does not want, as it stays on its worker: a :class:`Held` value.

dask moves such a result to the worker of a task that reads it by pickling it, in its own
transfer. A value that does not pickle there, or does not unpickle where it arrives, fails
inside that transfer, which dask tries again and again, and the reading task waits for
ever. So a held value pickles itself (:meth:`Held.__reduce__`): it travels as a
:class:`Moved`, its bytes, unpickled only by the task that reads it, or, when it cannot be
pickled, as an :class:`Unsendable` that fails that task. Either way the failure is the
reading task's :class:`~dispatcher.SerializationError`, naming it, as on every backend.

Buffers (NumPy arrays, say) stay out of band: dask sends them as frames of their own,
without a copy into the pickle's bytes.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from dispatcher import SerializationError
from dispatcher.remote import serialization_error, size_of

__all__ = ["Held", "Moved", "Unsendable", "pickled"]


class Held:
    """Task ``key``'s value, on the worker that made it (see the module's docstring)."""

    __slots__ = ("key", "value")

    def __init__(self, key: int, value: Any) -> None:
        self.key = key
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        buffers: list[pickle.PickleBuffer] = []
        data = pickled(self.key, "input", self.value, buffers)
        if isinstance(data, SerializationError):
            return (Unsendable, (data.type_name, data.detail))
        return (Moved, (data, *buffers))

    def load(self) -> Any:
        """The value (it never left its worker)."""
        return self.value


def pickled(
    key: int, what: str, value: Any, buffers: list[pickle.PickleBuffer] | None = None
) -> bytes | SerializationError:
    """``value`` pickled (its buffers out of band into ``buffers``, if given), or the error
    naming the ``what`` of task ``key`` if it cannot be: whatever pickling raises, SystemExit
    included, fails the task and never ends the worker."""
    callback = None if buffers is None else buffers.append
    try:
        return pickle.dumps(value, protocol=5, buffer_callback=callback)
    except BaseException:
        pass
    if buffers is not None:
        buffers.clear()
    try:
        data: bytes = cloudpickle.dumps(value, protocol=5, buffer_callback=callback)
        return data
    except BaseException as exc:
        return serialization_error(key, what, value, exc)


class Moved:
    """A :class:`Held` value arrived on another worker: its pickled bytes and buffers."""

    __slots__ = ("buffers", "data")

    def __init__(self, data: bytes, *buffers: Any) -> None:
        self.data = data
        self.buffers = buffers

    def __reduce__(self) -> tuple[Any, ...]:
        return (Moved, (self.data, *self.buffers))

    def load(self) -> Any:
        """The value, unpickled here: raises what unpickling it raises."""
        return pickle.loads(self.data, buffers=self.buffers)


class Unsendable:
    """A :class:`Held` value that could not be pickled to leave its worker."""

    __slots__ = ("detail", "type_name")

    def __init__(self, type_name: str, detail: str | None) -> None:
        self.type_name = type_name
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (Unsendable, (self.type_name, self.detail))

    def load(self) -> Any:
        """Raise the :class:`~dispatcher.SerializationError` of the task that reads it
        (named by the caller, which puts its label in place of the placeholder)."""
        raise _CouldNotSend(self.type_name, self.detail)


class _CouldNotSend(Exception):
    """Raised by :meth:`Unsendable.load`; the reading task makes its own error of it."""

    def __init__(self, type_name: str, detail: str | None) -> None:
        super().__init__(type_name, detail)
        self.type_name = type_name
        self.detail = detail

    def error_of(self, key: int) -> SerializationError:
        """The error of task ``key``, which could not be sent this input."""
        return SerializationError(key, "input", self.type_name, self.detail)


def _sizeof_held(held: Held) -> int:
    return size_of(held.value)


def _sizeof_moved(moved: Moved) -> int:
    return len(moved.data) + sum(memoryview(b).nbytes for b in moved.buffers)


def _register_sizeof() -> None:
    try:
        from dask.sizeof import sizeof
    except ImportError:  # dask is distributed's dependency: only without either
        return
    sizeof.register(Held)(_sizeof_held)
    sizeof.register(Moved)(_sizeof_moved)


_register_sizeof()
