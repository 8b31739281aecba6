"""dispatcher-mp: the ``mp`` executor, worker processes on one machine.

Installing this distribution is all it takes: ``run(graph, executor="mp", workers=4)``.
Options besides the common ones: ``start_method`` ("forkserver" by default where it
exists, else "spawn"), ``initializer`` and ``initargs`` (run once in each worker at
start), ``prefetch`` (the most tasks queued in a worker beyond the one it runs, default
16; the scheduler queues fewer while tasks are long) and ``shared_memory`` (default True).
"""

from ._plugin import make_executor as make_executor

__all__ = ["MpTransport", "make_executor"]


def __getattr__(name: str) -> object:
    # The transport pulls in multiprocessing machinery: load it on first use only.
    if name == "MpTransport":
        from ._transport import MpTransport

        return MpTransport
    raise AttributeError(name)
