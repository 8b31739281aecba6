"""The kit a process-based backend is built from.

A backend whose workers live in other processes needs the same parts whatever carries its
bytes (pipes, MPI, sockets): messages with names (:mod:`._messages`), functions shipped
once per worker within a budget (:class:`FunctionShipper`), the caller's table of tasks
out (:class:`InFlight`, its only stale filter, with deadlines), reports turned into
scheduler events with values and exceptions left for the run's driver to unpickle
(:class:`Reports`, :class:`Pickled`, :class:`UnrestoredError`), the worker's task loop
(:class:`TaskRunner`), pickling with large buffers out of band (:func:`dumps_split`), large
plain arguments kept once per run and named in each task's pickle (:class:`LargeArguments`),
exceptions that survive the trip (:func:`capture_error`, :func:`restore_error`), the
one test of which results are awaited (:func:`is_awaitable`), and what a worker does for
the run's cache: stop a task's clock when its function returns, before the store
(:data:`function_returned`, :class:`FunctionClock`, :func:`stores_result`), bound the
store (:func:`store_seconds`), and hand the cache's warnings to the caller
(:func:`send_warnings_to`).
``dispatcher_mp`` and ``dispatcher_mpi`` are built from it, and keep only what is their
own: processes, pipes and shared memory; MPI channels and rank-to-rank fetches.

Worker processes import this package: it stays light.
"""

from .._awaiting import is_awaitable as is_awaitable
from .._cache import send_warnings_to as send_warnings_to
from .._cache_plan import STORE_RATE as STORE_RATE
from .._cache_plan import STORE_SECONDS as STORE_SECONDS
from .._cache_plan import FunctionClock as FunctionClock
from .._cache_plan import function_returned as function_returned
from .._cache_plan import store_seconds as store_seconds
from .._cache_plan import stores_result as stores_result
from .._options import check_count as check_count
from ._errors import WireError as WireError
from ._errors import capture_error as capture_error
from ._errors import dumps_for as dumps_for
from ._errors import restore_error as restore_error
from ._errors import serialization_error as serialization_error
from ._errors import unpickling_error as unpickling_error
from ._functions import FUNCTION_CACHE_BYTES as FUNCTION_CACHE_BYTES
from ._functions import FUNCTION_CACHE_ENTRIES as FUNCTION_CACHE_ENTRIES
from ._functions import FunctionShipper as FunctionShipper
from ._functions import Unloadable as Unloadable
from ._inflight import InFlight as InFlight
from ._interrupts import ctrl_c_blocked_for_children as ctrl_c_blocked_for_children
from ._interrupts import ctrl_c_held as ctrl_c_held
from ._large_arguments import LARGE_ARGUMENT_BYTES as LARGE_ARGUMENT_BYTES
from ._large_arguments import Kept as Kept
from ._large_arguments import LargeArguments as LargeArguments
from ._large_arguments import dumps_naming as dumps_naming
from ._large_arguments import fragment as fragment
from ._large_arguments import objects_in as objects_in
from ._messages import Cancel as Cancel
from ._messages import Define as Define
from ._messages import Done as Done
from ._messages import Failed as Failed
from ._messages import Finished as Finished
from ._messages import Forget as Forget
from ._messages import Free as Free
from ._messages import Lost as Lost
from ._messages import Run as Run
from ._messages import RunEnded as RunEnded
from ._messages import Started as Started
from ._messages import Stop as Stop
from ._messages import Storing as Storing
from ._messages import TakeBack as TakeBack
from ._messages import TakenBack as TakenBack
from ._messages import Task as Task
from ._messages import as_task as as_task
from ._messages import from_wire as from_wire
from ._messages import message as message
from ._messages import packs_arguments as packs_arguments
from ._messages import reported_keys as reported_keys
from ._messages import task_record as task_record
from ._messages import to_wire as to_wire
from ._pickle import OUT_OF_BAND_BYTES as OUT_OF_BAND_BYTES
from ._pickle import dumps as dumps
from ._pickle import dumps_split as dumps_split
from ._pickle import loads as loads
from ._pickle import pickle_by_reference as pickle_by_reference
from ._reports import CacheWarnings as CacheWarnings
from ._reports import Pickled as Pickled
from ._reports import Reports as Reports
from ._reports import UnrestoredError as UnrestoredError
from ._worker import BATCH_SIZE as BATCH_SIZE
from ._worker import REPORT_NOW as REPORT_NOW
from ._worker import InputError as InputError
from ._worker import TaskRunner as TaskRunner
from ._worker import held_here as held_here
from ._worker import size_of as size_of
from ._worker import start_thread as start_thread
from ._worker import supervised as supervised

__all__ = [
    "BATCH_SIZE",
    "FUNCTION_CACHE_BYTES",
    "FUNCTION_CACHE_ENTRIES",
    "LARGE_ARGUMENT_BYTES",
    "OUT_OF_BAND_BYTES",
    "REPORT_NOW",
    "STORE_RATE",
    "STORE_SECONDS",
    "CacheWarnings",
    "Cancel",
    "Define",
    "Done",
    "Failed",
    "Finished",
    "Forget",
    "Free",
    "FunctionClock",
    "FunctionShipper",
    "InFlight",
    "InputError",
    "Kept",
    "LargeArguments",
    "Lost",
    "Pickled",
    "Reports",
    "Run",
    "RunEnded",
    "Started",
    "Stop",
    "Storing",
    "TakeBack",
    "TakenBack",
    "Task",
    "TaskRunner",
    "Unloadable",
    "UnrestoredError",
    "WireError",
    "as_task",
    "capture_error",
    "ctrl_c_blocked_for_children",
    "ctrl_c_held",
    "dumps",
    "dumps_for",
    "dumps_naming",
    "dumps_split",
    "fragment",
    "from_wire",
    "function_returned",
    "held_here",
    "loads",
    "message",
    "objects_in",
    "packs_arguments",
    "pickle_by_reference",
    "reported_keys",
    "restore_error",
    "send_warnings_to",
    "serialization_error",
    "size_of",
    "start_thread",
    "store_seconds",
    "stores_result",
    "supervised",
    "task_record",
    "to_wire",
    "unpickling_error",
]
