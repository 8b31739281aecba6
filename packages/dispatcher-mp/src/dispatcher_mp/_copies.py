"""The caller's serialised copies of results its workers hold.

Inputs move between ``mp`` workers through the caller. A result fetched from its holder
for a task on another worker is kept here while its holder has it, so that another
reader elsewhere is sent it without asking again; a small result carried along with its
completion (``TaskRunner.carried_types``) is kept the same way, so that no reader waits
for it at all. A copy goes when its holder is told to free the result, when the holder
drops it itself once its last reader ran there (``TaskSpec.last_use``), when the holder
is lost, and at the latest when its run ends: a kept executor grows with no run.

Every method is called under the transport's lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dispatcher.transport import KEY_BITS, Key, TaskSpec

from ._wire import Payload

__all__ = ["Copies"]


class Copies:
    """Serialised copies of results, by key, each with its holder."""

    def __init__(self) -> None:
        self.held: dict[Key, tuple[str, Payload | bytes]] = {}
        """Key -> (holder, serialised form): a :class:`Payload`, or a small result's
        pickle alone, as it was carried along."""
        self._used_up: set[Key] = set()
        """Results whose last reader was sent to their own worker before they finished:
        not to be kept when carried along (see :meth:`used_up_by`)."""

    def __len__(self) -> int:
        return len(self.held)

    def get(self, key: Key) -> Payload | None:
        """The copy of ``key``'s result, if there is one here."""
        cached = self.held.get(key)
        if cached is None:
            return None
        held = cached[1]
        return Payload(held) if isinstance(held, bytes) else held

    def keep(self, holder: str, key: Key, payload: Payload) -> None:
        """``holder`` sent ``key``'s result (fetched, or mapped for the caller)."""
        self.held[key] = (holder, payload)

    def carried(
        self,
        worker: str,
        finished: list[tuple[Key, float, int | None, Any]],
        out: Mapping[Key, TaskSpec],
    ) -> None:
        """Keep the small results ``worker`` sent along unasked with these completions,
        before they are reported. Not a stale one (``out``: the tasks in flight): a task
        run twice may have made two values, and its readers must all get the one the
        scheduler keeps."""
        held, used_up = self.held, self._used_up
        for key, _, _, result in finished:
            if used_up and key in used_up:
                used_up.discard(key)  # read where it is, by its last reader
            elif type(result) is bytes:
                spec = out.get(key)
                if spec is not None and spec.worker == worker:
                    held[key] = (worker, result)

    def used_up_by(self, spec: TaskSpec, out: Mapping[Key, TaskSpec]) -> None:
        """``spec`` is sent: its worker drops the inputs it reads last (its
        ``last_use``) once it has run, and no Free will come for them there; those still
        being made (in ``out``) are not to be kept when they come."""
        held, name = self.held, spec.worker
        for key in spec.last_use:
            cached = held.get(key)
            if cached is not None:
                if cached[0] == name:
                    del held[key]
            elif key in out:
                self._used_up.add(key)

    def freed(self, holder: str, keys: Iterable[Key]) -> None:
        """``holder`` is told to free these."""
        held = self.held
        for key in keys:
            cached = held.get(key)
            if cached is not None and cached[0] == holder:
                del held[key]

    def holder_lost(self, holder: str) -> None:
        """``holder`` is gone: its copies go with it (the scheduler makes again what it
        held alone, and a copy of a value it no longer counts would be kept for good)."""
        held = self.held
        for key in [k for k, (h, _) in held.items() if h == holder]:
            del held[key]

    def run_ended(self, run: int) -> None:
        """What no Free reached (results of tasks the run gave up on, held still): a
        run's copies serve no other run."""
        held = self.held
        for key in [k for k in held if k >> KEY_BITS == run]:
            del held[key]
        if self._used_up:
            self._used_up = {k for k in self._used_up if k >> KEY_BITS != run}
