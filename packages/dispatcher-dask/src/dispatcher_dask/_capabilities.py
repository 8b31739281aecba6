"""What the dask transport can do, importable without loading distributed."""

from __future__ import annotations

from dispatcher.transport import Capabilities

CAPABILITIES = Capabilities(
    survives_worker_loss=True, separate_processes=True, accepts_pending_inputs=True
)
"""Workers lost are survived (dispatcher recomputes what they held); tasks run in the workers'
processes; a running task is not interrupted (a thread cannot be stopped): a task over its
timeout fails at its deadline, and its thread stays taken until it returns (see _giving_up);
a task may be sent before its inputs are made, anywhere on the cluster (dask holds it until
they are, and moves them). dask starts such a task once its inputs are made, which the
caller learns from their completions: the scheduler tells its start then, so the transport
reports no starts; an input that fails reaches the task waiting for it as that input's
failure, which the transport reports as inputs lost."""
