"""Values and exceptions reported still serialised (``transport.Unloaded``): loaded by
the driver of their own run as it applies the report, and what a failure to load does."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from dispatcher import Op, SerializationError, op
from dispatcher.remote import Pickled, UnrestoredError, capture_error, dumps
from dispatcher.testing import FakeTransport, fake_executor, tasks
from dispatcher.transport import EventSink, Key, TaskSpec, Unloaded


class Loaded(Unloaded):
    """A value handed over as it is, noting where and how often it is loaded."""

    def __init__(self, value: Any, raises: BaseException | None = None) -> None:
        self.value = value
        self.raises = raises
        self.threads: list[int] = []

    def load(self) -> Any:
        self.threads.append(threading.get_ident())
        if self.raises is not None:
            raise self.raises
        return self.value


class UnloadedReports(FakeTransport):
    """Reports every wanted value (and every exception) as an :class:`Unloaded`:
    ``make(value)`` wraps it."""

    def __init__(self, make: Any = Loaded) -> None:
        super().__init__(workers=1)
        self.make = make
        self.handed: list[Unloaded] = []

    def start(self, events: EventSink) -> Mapping[str, int]:
        transport = self

        class Wrapping:
            def task_finished(
                self, key: Key, worker: str, duration: float, nbytes: int | None, *value: Any
            ) -> None:
                if value:
                    transport.handed.append(transport.make(value[0]))
                    value = (transport.handed[-1],)
                events.task_finished(key, worker, duration, nbytes, *value)

            def task_failed(self, key: Key, worker: str, error: Any, duration: float) -> None:
                transport.handed.append(Loaded(error))
                events.task_failed(key, worker, transport.handed[-1], duration)

            def __getattr__(self, name: str) -> Any:
                return getattr(events, name)

        return super().start(Wrapping())  # type: ignore[arg-type]


def test_a_value_is_loaded_once_by_the_driver_of_its_run() -> None:
    transport = UnloadedReports()
    with fake_executor(transport) as ex:
        assert ex.run(Op(tasks.inc, Op(tasks.inc, 1))) == 3
    assert len(transport.handed) == 1  # only the target's value came back
    loaded = transport.handed[0]
    assert isinstance(loaded, Loaded)
    assert loaded.threads == [threading.get_ident()]


def test_a_value_that_fails_to_load_fails_its_node_and_is_freed() -> None:
    transport = UnloadedReports(lambda value: Loaded(value, SystemExit("no")))
    with fake_executor(transport) as ex:
        bad = op(tasks.inc, label="bad")(1)
        results = ex.run([bad, Op(tasks.inc, 5)], throw=False)
        assert isinstance(results[0].error, SerializationError)
        assert "could not be unpickled" in str(results[0].error)
        assert "SystemExit" in str(results[0].error)
        assert results[0].error.node is bad
        assert isinstance(results[1].error, SerializationError)  # it is loaded too
        assert transport.held() == 0  # the workers' copies are freed
        with pytest.raises(SerializationError, match="bad"):
            ex.run(bad)


def test_an_exception_is_restored_by_the_driver() -> None:
    transport = UnloadedReports()
    with fake_executor(transport) as ex:
        results = ex.run([Op(tasks.fail, "x"), Op(tasks.inc, 1)], throw=False)
    assert isinstance(results[0].error, ValueError)
    assert results[0].error.args == ("x",)
    assert results[1].value == 2


@pytest.mark.timeout(30)
def test_ctrl_c_while_a_value_loads_stops_the_run_and_frees_the_value() -> None:
    transport = UnloadedReports(lambda value: Loaded(value, KeyboardInterrupt()))
    with fake_executor(transport) as ex:
        with pytest.raises(KeyboardInterrupt):
            ex.run([Op(tasks.inc, 1), Op(tasks.inc, 2)])
        assert transport.held() == 0
        transport.make = Loaded
        assert ex.run(Op(tasks.inc, 3)) == 4  # the executor serves the next run


def _spec() -> TaskSpec:
    return TaskSpec(1, "node", tasks.inc, (1,), None, 0, (), None, None, "w", None, True, 1)


def test_pickled_loads_its_stream_with_its_buffers() -> None:
    value = {"a": pickle.PickleBuffer(bytearray(b"out of band"))}
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1  # the bytes are not in the stream: only the buffer has them
    back = Pickled(data, [b.raw() for b in buffers]).load()
    assert bytes(back["a"]) == b"out of band"
    assert Pickled(pickle.dumps([1, "x"])).load() == [1, "x"]


def test_an_unrestored_error_loads_as_the_exception() -> None:
    try:
        tasks.fail_with(3, "three")
    except tasks.TaskFailure as exc:
        wire = capture_error(exc, dumps)
    error = UnrestoredError(wire, _spec()).load()
    assert isinstance(error, tasks.TaskFailure)
    assert error.args == (3, "three")


class _InterruptedWhenLoaded(Exception):
    def __reduce__(self) -> Any:
        return (_interrupt, ())


def _interrupt() -> Any:
    raise KeyboardInterrupt


def test_ctrl_c_while_an_exception_is_restored_is_not_taken_for_its_failure() -> None:
    # restore_error makes any failure to unpickle an exception a RemoteError; the user's
    # Ctrl-C meanwhile must still stop the run.
    wire = capture_error(_InterruptedWhenLoaded(), dumps)
    with pytest.raises(KeyboardInterrupt):
        UnrestoredError(wire, _spec()).load()


def test_loading_reported_values_brings_no_process_kit_into_an_in_process_run() -> None:
    # The driver's loading path is in every run: the kit it uses on a failure (and
    # cloudpickle with it) is imported only then.
    code = (
        "import sys, dispatcher; "
        "print(sorted(m for m in ('cloudpickle', 'dispatcher.remote') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
