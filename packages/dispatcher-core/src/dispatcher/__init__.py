"""dispatcher: build a graph from ordinary function calls and run it anywhere.

The public surface; everything here is documented in README.md.
"""

from ._api import arun as arun
from ._api import run as run
from ._cache import Cache as Cache
from ._cache import CacheWarning as CacheWarning
from ._errors import CycleError as CycleError
from ._errors import DependencyError as DependencyError
from ._errors import DispatcherError as DispatcherError
from ._errors import ExecutorNotFound as ExecutorNotFound
from ._errors import RemoteError as RemoteError
from ._errors import SerializationError as SerializationError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import WorkerLostError as WorkerLostError
from ._executor import Executor as Executor
from ._executor import ExecutorInfo as ExecutorInfo
from ._graph import DispatchGraph as DispatchGraph
from ._hooks import hookimpl as hookimpl
from ._nodes import CollectNode as CollectNode
from ._nodes import DataNode as DataNode
from ._nodes import DispatchNode as DispatchNode
from ._nodes import IndexNode as IndexNode
from ._nodes import Op as Op
from ._nodes import OpFunction as OpFunction
from ._nodes import op as op
from ._plan import Result as Result
from ._registry import available_executors as available_executors
from ._registry import get_executor as get_executor
from ._version import __version__ as __version__

__all__ = [
    "Cache",
    "CacheWarning",
    "CollectNode",
    "CycleError",
    "DataNode",
    "DependencyError",
    "DispatchGraph",
    "DispatchNode",
    "DispatcherError",
    "Executor",
    "ExecutorInfo",
    "ExecutorNotFound",
    "IndexNode",
    "Op",
    "OpFunction",
    "RemoteError",
    "Result",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
    "arun",
    "available_executors",
    "get_executor",
    "hookimpl",
    "op",
    "run",
]
