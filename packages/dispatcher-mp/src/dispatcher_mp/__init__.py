"""dispatcher-mp: the ``mp`` executor, worker processes on one machine.

Installing this distribution is all it takes: ``run(graph, executor="mp", workers=4)``.
``workers`` (default: the CPUs this process may use) may not exceed what the machine can
start: the processes this user may run (``RLIMIT_NPROC``) and the memory available at
16 MiB a worker; more is a ``ValueError`` saying which. Options besides the common
ones: ``start_method`` ("forkserver" by default where it exists, else "spawn"),
``initializer`` and ``initargs`` (run once in each worker at start), ``prefetch`` (the
most tasks queued in a worker beyond the one it runs, default 256; the scheduler queues
fewer while tasks are long) and ``shared_memory`` (default True).
"""

from ._plugin import make_executor as make_executor

__all__ = ["MpTransport", "make_executor"]


def __getattr__(name: str) -> object:
    # The transport pulls in multiprocessing machinery: load it on first use only.
    if name == "MpTransport":
        from ._transport import MpTransport

        return MpTransport
    raise AttributeError(name)
