"""Call counters for tests that run in this process. Tasks reach them as attributes of this
module, which keys see (a module of the program's own counts by the members its code
names); the log says it is empty when pickled, so counting does not change keys."""

from __future__ import annotations

from typing import Any


class CallLog(list[object]):
    """A list that pickles as an empty one: the tests' side channel, not a value results
    depend on."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (CallLog, ())


calls = CallLog()
