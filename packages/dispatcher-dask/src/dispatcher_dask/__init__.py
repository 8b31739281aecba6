"""dispatcher-dask: the ``dask`` executor, graphs run on a dask.distributed cluster.

Installing this distribution is all it takes: ``run(graph, executor="dask", workers=4)``
starts a ``LocalCluster`` of four worker processes for the executor's life;
``address="tcp://host:8786"`` (or a scheduler file) runs on an existing cluster, and
``client=`` on the cluster an existing ``distributed.Client`` talks to. Options besides the
common ones: ``threads_per_worker`` (default 1), ``prefetch`` (tasks queued on a worker
beyond its threads; by default about 0.1 s of work by the tasks' mean run time, 1 to 64
tasks) and ``dashboard_address`` (the local cluster's dashboard, none by default).
dispatcher-dask must be installed on the workers too.
"""

from ._plugin import make_executor as make_executor

__all__ = ["DaskTransport", "make_executor"]


def __getattr__(name: str) -> object:
    # The transport pulls in distributed: load it on first use only.
    if name == "DaskTransport":
        from ._transport import DaskTransport

        return DaskTransport
    raise AttributeError(name)
