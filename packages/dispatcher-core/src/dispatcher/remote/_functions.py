"""Shipping functions: each distinct function pickled once, sent once per worker, and
forgotten again, on both sides, once too many have been sent.

The caller names every function by a token that is never reused (``id()`` would be, once
the function is gone). :class:`FunctionShipper` keeps, within a budget, the pickles it made
and, per worker, which tokens that worker holds; past the budget the least recently used
are dropped, and the worker is told to drop them too (:class:`~._messages.Forget`). A
program that makes a fresh closure for every task thus holds a bounded number of them, in
the caller and in every worker, instead of every closure it ever ran.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._closures import dumps_function
from ._errors import dumps_for
from ._messages import Define, Forget

if TYPE_CHECKING:
    from ..transport import TaskSpec

__all__ = ["FUNCTION_CACHE_BYTES", "FUNCTION_CACHE_ENTRIES", "FunctionShipper", "Unloadable"]

FUNCTION_CACHE_BYTES = 16 * 1024 * 1024
"""Default budget, in pickled bytes, of the functions a worker (and the caller) keeps."""
FUNCTION_CACHE_ENTRIES = 1024
"""Default budget, in functions, of the same."""


class Unloadable:
    """Worker side: stands for a function whose pickle did not load, so that each task
    that calls it fails with the reason."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Held:
    """What one worker holds: tokens in least-recently-used order, with their sizes."""

    __slots__ = ("last", "nbytes", "tokens")

    def __init__(self) -> None:
        self.tokens: OrderedDict[int, int] = OrderedDict()
        self.nbytes = 0
        self.last = 0
        """The token shipped last (the most recently used already), 0 for none."""


class FunctionShipper:
    """Caller side: tokens, pickles and what each worker holds, all bounded.

    Not thread-safe: the owner calls it under its own lock (or from one thread).
    """

    def __init__(
        self,
        dumps: Callable[[Any], bytes],
        max_bytes: int = FUNCTION_CACHE_BYTES,
        max_entries: int = FUNCTION_CACHE_ENTRIES,
    ) -> None:
        self._dumps = dumps
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._weak: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        # Functions that cannot be weakly referenced (builtins, partials...), by id: held
        # for as long as their pickle is.
        self._strong: dict[int, tuple[Any, int]] = {}
        self._strong_ids: dict[int, int] = {}  # token -> id, to drop them with the pickle
        self._next = 0
        # Most tasks of a batch call the function the one before called.
        self._last: tuple[Any, int] = (None, 0)
        self._pickles: OrderedDict[int, bytes] = OrderedDict()
        self._pickled_bytes = 0
        self._held: dict[str, _Held] = {}

    def token(self, func: Any) -> int:
        """The token that names ``func``; a new one the first time it is seen."""
        last, token = self._last
        if last is func:
            return token
        try:
            found = self._weak.get(func)
        except TypeError:  # not weak-referenceable
            entry = self._strong.get(id(func))
            if entry is not None and entry[0] is func:
                self._last = entry
                return entry[1]
            self._next += 1
            self._strong[id(func)] = self._last = (func, self._next)
            self._strong_ids[self._next] = id(func)
            return self._next
        if found is not None:
            self._last = (func, found)
            return found
        self._next += 1
        self._weak[func] = self._next
        self._last = (func, self._next)
        return self._next

    def ship(self, worker: str, spec: TaskSpec) -> tuple[int, Define | None]:
        """The token of ``spec``'s function, and the :class:`Define` to send ``worker``
        first when it does not hold it. Raises :class:`~dispatcher.SerializationError`
        naming the node when the function cannot be pickled."""
        last, token = self._last  # (token()'s first test, written out: once per task)
        if last is not spec.func:
            token = self.token(spec.func)
        held = self._held.get(worker)
        if held is None:
            held = self._held[worker] = _Held()
        if token == held.last:  # most tasks of a batch call what the one before did
            return token, None
        if token in held.tokens:
            held.tokens.move_to_end(token)
            held.last = token
            return token, None
        data = self._pickles.get(token)
        if data is None:
            data = dumps_for(spec, "function", spec.func, self._dump_function)
            self._pickles[token] = data
            self._pickled_bytes += len(data)
            self._trim_pickles(keep=token)
        else:
            self._pickles.move_to_end(token)
        held.tokens[token] = len(data)
        held.nbytes += len(data)
        held.last = token
        return token, Define(token, data)

    def unship(self, worker: str, tokens: list[int]) -> None:
        """The :class:`Define` of each of ``tokens`` that :meth:`ship` gave for ``worker``
        was never sent (the batch carrying it was dropped: Ctrl-C, say): it does not hold
        them, and the next task calling one sends it again."""
        held = self._held.get(worker)
        if held is None:
            return
        for token in tokens:
            size = held.tokens.pop(token, None)
            if size is not None:
                held.nbytes -= size
            if token == held.last:
                held.last = 0

    def _dump_function(self, func: Any) -> bytes:
        return dumps_function(func, self._dumps)

    def trim(self, worker: str) -> Forget | None:
        """What ``worker`` should forget to be back within budget; ``None`` if nothing.

        Call it after the tasks sent with :meth:`ship` are on their way: a worker looks
        functions up as tasks arrive, so it may forget one that queued tasks still call."""
        held = self._held.get(worker)
        if held is None:
            return None
        tokens = held.tokens
        dropped: list[int] = []
        while tokens and (held.nbytes > self.max_bytes or len(tokens) > self.max_entries):
            token, size = tokens.popitem(last=False)
            held.nbytes -= size
            dropped.append(token)
            if token == held.last:
                held.last = 0
        return Forget(dropped) if dropped else None

    def forget_worker(self, worker: str) -> None:
        """``worker`` is gone: a replacement under its name starts with nothing."""
        self._held.pop(worker, None)

    def held_by(self, worker: str) -> int:
        """How many functions ``worker`` holds."""
        held = self._held.get(worker)
        return len(held.tokens) if held is not None else 0

    @property
    def pickled_bytes(self) -> int:
        """Bytes of pickles the caller keeps."""
        return self._pickled_bytes

    def _trim_pickles(self, keep: int) -> None:
        pickles = self._pickles
        while len(pickles) > 1 and (
            self._pickled_bytes > self.max_bytes or len(pickles) > self.max_entries
        ):
            token, data = pickles.popitem(last=False)
            if token == keep:  # never the one just made (it is the newest anyway)
                pickles[token] = data
                break
            self._pickled_bytes -= len(data)
            func_id = self._strong_ids.pop(token, None)
            if func_id is not None:
                entry = self._strong.get(func_id)
                if entry is not None and entry[1] == token:
                    del self._strong[func_id]
                    if self._last is entry:
                        self._last = (None, 0)
