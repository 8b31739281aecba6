"""A task spec and a task runner that records its reports through a pickle, as on a
wire: what the tests of the worker kit (``dispatcher.remote``) drive it with."""

from __future__ import annotations

import pickle
from typing import Any

from dispatcher.remote import Run, TaskRunner, from_wire, task_record, to_wire
from dispatcher.transport import SHAPE_CALL, TaskSpec


def spec(key: int, func: Any, *args: Any, worker: str = "w", **options: Any) -> TaskSpec:
    return TaskSpec(
        key,
        f"task-{key}",
        func,
        args,
        None,
        options.pop("shape", SHAPE_CALL),
        options.pop("deps", ()),
        None,
        None,
        worker,
        options.pop("timeout", None),
        options.pop("want_result", True),
        1,
    )


class Recording(TaskRunner):
    """A runner whose reports go through a pickle into :attr:`sent`."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        # Through a pickle, as on a real wire.
        self.sent.append(from_wire(pickle.loads(pickle.dumps(to_wire(message), protocol=5))))

    def batch(self, *funcs: Any, first_key: int = 1) -> None:
        """Queue one batch calling each of ``funcs`` on its key, in order (held as they
        are: no pickling)."""
        records = []
        for key, func in enumerate(funcs, first_key):
            self.functions[key] = func
            records.append(task_record(spec(key, func, key), key, None, None))
        self.receive(Run(records))
