"""The batches of tasks rank 0 sends: each task's record, by rank, and the functions a
rank must be sent first."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dispatcher import DispatcherError
from dispatcher.remote import packs_arguments, task_record
from dispatcher.transport import TaskSpec

from ._ranks import rank_of

if TYPE_CHECKING:
    from ._transport import MpiTransport

__all__ = ["encode_batches"]


def encode_batches(
    transport: MpiTransport,
    tasks: Sequence[TaskSpec],
    batches: dict[int, list[tuple[Any, ...]]],
    defines: dict[int, list[tuple[int, bytes]]],
) -> None:
    """Serialise ``tasks`` for ``transport``'s ranks into ``batches``, by rank, with the
    functions each rank must be sent first into ``defines`` (arguments held apart are
    posted on the way)."""
    shipper, post = transport.root.shipper, transport.root.hub.post
    out, unstarted = transport.inflight.tasks, transport.unstarted
    for spec in tasks:
        rank = rank_of(spec.worker)
        try:
            token, define = shipper.ship(spec.worker, spec)
            if define is not None:
                # Sent whatever becomes of the task: the shipper counts it held there.
                defines.setdefault(rank, []).append((define.token, define.data))
            packed = None
            if packs_arguments(spec):
                # Unpickled by the task's rank on its task thread: arguments that
                # cannot be fail that task alone.
                packed, before = transport.held.pack_for(spec, rank)
                for message in before:
                    post(rank, message)
        except DispatcherError as error:
            assert transport.events is not None
            transport.events.task_failed(spec.key, spec.worker, error, 0.0)
            continue
        sources = (
            tuple(rank_of(s) if s is not None else 0 for s in spec.sources)
            if spec.sources is not None
            else None
        )
        out[spec.key] = spec  # InFlight.add
        if spec.timeout is not None and spec.timeout < math.inf:
            unstarted[spec.key] = (time.monotonic(), spec)
        batch = batches.get(rank)
        if batch is None:
            batch = batches[rank] = []
        batch.append(task_record(spec, token, packed, sources))
