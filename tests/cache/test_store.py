"""The store: atomic entries, damage caught, concurrent writers, eviction, clearing."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import counters
import pytest

from dispatcher import Cache, CacheWarning, op, run
from dispatcher._cache import CacheEntryError
from dispatcher.testing import tasks

KEY = "ab" + "0" * 30


def backing(array: Any) -> Any:
    """The object at the bottom of an array's chain of bases (through memoryviews)."""
    obj = array
    while True:
        if isinstance(obj, memoryview):
            obj = obj.obj
        elif getattr(obj, "base", None) is not None:
            obj = obj.base
        else:
            return obj


def partial_files(root: Path) -> list[Path]:
    """Files being written, or left by a writer that died."""
    return list(root.glob("entries/*/.*"))


def test_round_trip_of_plain_values(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    value = {"a": [1, 2.5, "x"], "b": b"y" * 100_000, "c": None}
    assert cache.save(KEY, value)
    assert cache.contains(KEY)
    assert cache.load(KEY) == value
    assert not cache.contains("cd" + "0" * 30)


def test_a_large_array_is_read_through_a_memory_map(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    cache = Cache(tmp_path)
    array = np.arange(1024 * 1024, dtype=np.float64)  # 8 MiB
    cache.save(KEY, {"x": array})
    loaded = cache.load(KEY)["x"]
    assert np.array_equal(loaded, array)
    assert isinstance(backing(loaded), mmap.mmap)
    assert loaded.ctypes.data % 64 == 0
    loaded[0] = 42.0  # copy on write: the entry is untouched
    assert cache.load(KEY)["x"][0] == 0.0


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) - 7]
    elif how == "corrupted":
        data[len(data) // 2] ^= 0x55
    elif how == "empty":
        data = bytearray()
    elif how == "garbage":
        data = bytearray(os.urandom(len(data)))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "corrupted", "empty", "garbage"])
@pytest.mark.parametrize("size", [1000, 3_000_000])
def test_a_damaged_entry_is_a_warning_and_is_deleted(tmp_path: Path, how: str, size: int) -> None:
    cache = Cache(tmp_path)
    cache.save(KEY, b"v" * size)
    path = Path(cache._entry_path(KEY))
    _damage(path, how)
    with pytest.warns(CacheWarning, match="unusable"), pytest.raises(CacheEntryError):
        cache.load(KEY)
    assert not path.exists()


@pytest.mark.parametrize("keep", [0, 5])
def test_an_entry_cut_shorter_than_its_header_is_a_warning_when_planned(
    tmp_path: Path, keep: int
) -> None:
    """Planning took such an entry for none, silently, and left it in place."""
    cache = Cache(tmp_path)
    cache.save(KEY, "value")
    path = Path(cache._entry_path(KEY))
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.warns(CacheWarning, match=f"truncated to {keep} bytes"):
        assert not cache.contains(KEY)
    assert not path.exists()


def test_without_verify_a_small_entry_is_still_checked(tmp_path: Path) -> None:
    # verify=False spares the read of a large entry's pages; a small entry is read whole
    # anyway, and a flipped byte in it must not come back as a value.
    cache = Cache(tmp_path, verify=False)
    cache.save(KEY, "value-1234")
    path = Path(cache._entry_path(KEY))
    data = bytearray(path.read_bytes())
    data[data.index(b"1234")] = ord("9")
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="unusable"), pytest.raises(CacheEntryError):
        cache.load(KEY)


@pytest.mark.timeout(60)
def test_a_fifo_put_in_an_entrys_place_is_a_warning_not_a_hang(tmp_path: Path) -> None:
    # Another process may replace an entry between the run's planning (which found a
    # regular file) and its reading: opening a FIFO without a writer blocks for ever.
    cache = Cache(tmp_path)
    cache.save(KEY, "value")
    path = Path(cache._entry_path(KEY))
    path.unlink()
    os.mkfifo(path)
    with pytest.warns(CacheWarning, match="not a regular file"), pytest.raises(CacheEntryError):
        cache.load(KEY)
    assert not path.exists()


# A writer in a process of its own: a program, not a function of this module, which the
# test's process imports under a name a child could not import.
WRITE_MANY = """
import sys
from dispatcher import Cache
path, key, size, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cache = Cache(path)
for _ in range(rounds):
    cache.save(key, b"same" * size)
"""


@pytest.mark.timeout(120)
def test_writers_of_one_key_at_once_leave_one_whole_entry(tmp_path: Path) -> None:
    command = [sys.executable, "-c", WRITE_MANY, str(tmp_path), KEY, "500000", "20"]
    writers = [subprocess.Popen(command) for _ in range(3)]
    cache = Cache(tmp_path)
    while any(w.poll() is None for w in writers):
        if cache.contains(KEY):
            assert cache.load(KEY) == b"same" * 500_000  # never a partial entry
    for w in writers:
        assert w.wait() == 0
    assert cache.load(KEY) == b"same" * 500_000
    assert partial_files(tmp_path) == []


WRITE_FOREVER = """
import sys
from dispatcher import Cache
cache = Cache(sys.argv[1])
i = 0
while True:
    cache.save(f"{i % 256:02x}" + "0" * 30, b"x" * 4_000_000)
    i += 1
"""


@pytest.mark.timeout(120)
def test_a_writer_killed_midway_leaves_no_entry_that_reads_wrong(tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITE_FOREVER, str(tmp_path)])
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "entries").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        writer.kill()
        writer.wait()
    cache = Cache(tmp_path)
    # Every entry under its own name reads whole; a writer's unfinished file (a dot file)
    # is no entry.
    for entry in (tmp_path / "entries").glob("*/*"):
        if not entry.name.startswith("."):
            assert cache.load(entry.name) == b"x" * 4_000_000
    cache.clear()
    assert partial_files(tmp_path) == []


def test_a_full_disk_is_a_warning_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, buffers: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    with pytest.warns(CacheWarning, match="No space left"):
        assert run(op(sum)([1, 2]), executor="sync", cache=tmp_path) == 3
    assert partial_files(tmp_path) == []
    assert not Cache(tmp_path).contains(KEY)


def test_a_result_that_does_not_pickle_is_a_warning(tmp_path: Path) -> None:
    def gen() -> Any:
        return (i for i in range(3))

    with pytest.warns(CacheWarning, match="does not pickle"):
        result = run(op(gen)(), executor="sync", cache=tmp_path)
    assert list(result) == [0, 1, 2]


class _PicklingFailsUnprintably:
    def __reduce__(self) -> Any:
        raise tasks.BadStrError("unprintable")


def test_a_result_whose_pickling_fails_unprintably_is_a_warning_too(tmp_path: Path) -> None:
    # The warning's text asked str() of that error, which raised: the node failed.
    def make() -> Any:
        return _PicklingFailsUnprintably()

    with pytest.warns(CacheWarning, match=r"does not pickle: <BadStrError: str\(\) failed>"):
        result = run(op(make)(), executor="sync", cache=tmp_path)
    assert isinstance(result, _PicklingFailsUnprintably)


@pytest.mark.parametrize("verify", ["no", 0, None])
def test_verify_is_a_bool(tmp_path: Path, verify: Any) -> None:
    # Cache(path, verify="no") verified every entry, "no" being true.
    with pytest.raises(ValueError, match="verify must be True or False"):
        Cache(tmp_path, verify=verify)


def test_an_empty_path_is_refused_rather_than_the_working_directory_used() -> None:
    with pytest.raises(ValueError, match="path given is empty"):
        Cache("")
    with pytest.raises(ValueError, match="path given is empty"):
        run(op(tasks.inc)(1), executor="sync", cache="")


def test_least_recently_used_entries_are_evicted_past_max_bytes(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=250_000)
    keys = [f"{i:02x}" + "0" * 30 for i in range(3)]
    now = time.time()
    for age, key in zip([3 * 3600, 2 * 3600, 3600], keys, strict=True):
        cache.save(key, b"x" * 100_000)
        os.utime(cache._entry_path(key), (now - age, now - age))
    cache.load(keys[0])  # used now: the most recent
    assert cache.evict() > 0
    assert [cache.contains(k) for k in keys] == [True, False, True]


def test_a_run_evicts_past_max_bytes(tmp_path: Path) -> None:
    def blob(i: int) -> bytes:
        return bytes([i]) * 100_000

    cache = Cache(tmp_path, max_bytes=350_000)
    run([op(blob)(i) for i in range(10)], executor="sync", cache=cache)
    info = cache.info()
    assert info.nbytes <= 350_000
    assert info.entries == 3


def test_clear_older_than(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    old, new = "aa" + "0" * 30, "bb" + "0" * 30
    cache.save(old, 1)
    cache.save(new, 2)
    past = time.time() - 3 * 86400
    os.utime(cache._entry_path(old), (past, past))
    assert cache.clear(older_than=86400) == 1
    assert not cache.contains(old)
    assert cache.contains(new)
    assert cache.clear() == 1
    assert cache.info().entries == 0


def test_cache_argument_is_checked(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cache takes"):
        run(op(sum)([1]), executor="sync", cache=42)
    with pytest.raises(ValueError, match="max_bytes"):
        Cache(tmp_path, max_bytes=-1)


def quick(x: int) -> int:
    counters.calls.append("quick")
    return x + 1


def slow(x: int) -> int:
    counters.calls.append("slow")
    time.sleep(0.3)
    return x * 2


def test_min_seconds_stores_only_slow_results(tmp_path: Path) -> None:
    counters.calls.clear()
    cache = Cache(tmp_path, min_seconds=0.25)  # far from both calls: no flake under load
    for _ in range(2):
        assert run(op(slow)(op(quick)(1)), executor="sync", cache=cache) == 4
    assert counters.calls == ["quick", "slow"]  # the slow one was stored and is a hit
    for _ in range(2):
        assert run(op(quick)(5), executor="sync", cache=cache) == 6
    assert counters.calls == ["quick", "slow", "quick", "quick"]
    with pytest.raises(ValueError, match="min_seconds"):
        Cache(tmp_path, min_seconds=-1)


def test_files_left_by_dead_writers_are_ignored_then_swept(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=10**9)
    cache.save(KEY, 1)
    shard = Path(cache._entry_path(KEY)).parent
    fresh, stale = shard / f".{KEY}.fresh", shard / f".{KEY}.stale"
    fresh.write_bytes(b"half an entr")
    stale.write_bytes(b"half an entr")
    past = time.time() - 2 * 3600
    os.utime(stale, (past, past))
    assert cache.info().entries == 1
    cache.evict()
    assert fresh.exists()  # perhaps still being written
    assert not stale.exists()
    assert cache.load(KEY) == 1


class RaisesWhenPickled:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> Any:
        raise self.error


def make_odd(kind: str) -> RaisesWhenPickled:
    return RaisesWhenPickled(SystemExit(3) if kind == "exit" else GeneratorExit())


def kind_of(value: Any) -> str:
    return type(value).__name__


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["sync", "async"])
@pytest.mark.parametrize("kind", ["exit", "generator exit"])
def test_a_result_whose_pickling_raises_oddly_is_a_warning(
    tmp_path: Path, executor: str, kind: str
) -> None:
    # Without a cache such a result never pickles on these executors and the run succeeds;
    # with one, its store must not end the run (SystemExit would end the program).
    from dispatcher import op, run

    with pytest.warns(CacheWarning, match="not stored"):
        value = run(op(kind_of)(op(make_odd)(kind)), executor=executor, cache=tmp_path)
    assert value == "RaisesWhenPickled"


@pytest.mark.timeout(60)
def test_a_directory_where_an_entry_belongs_is_a_miss(tmp_path: Path) -> None:
    # It cannot be read nor deleted: taken for an entry, it would be planned as a hit and
    # found unreadable in every run, each then planned again.
    from dispatcher import hookimpl, op, run

    class Replans:
        count = 0

        @hookimpl
        def dispatcher_run_replanned(self) -> None:
            Replans.count += 1

    cache = Cache(tmp_path)
    assert run(op(kind_of)(1), executor="sync", cache=cache) == "int"
    (entry,) = (tmp_path / "entries").glob("*/*")
    entry.unlink()
    (entry / "inside").mkdir(parents=True)
    assert not cache.contains(entry.name)
    with pytest.warns(CacheWarning, match="not stored"):
        assert run(op(kind_of)(1), executor="sync", cache=cache, plugins=[Replans()]) == "int"
    assert Replans.count == 0


def test_clear_removes_a_directory_found_in_an_entrys_place(tmp_path: Path) -> None:
    # No entry: not counted as one, and swept by clear as a dead writer's file is, so
    # that the key can be stored again.
    cache = Cache(tmp_path)
    cache.save(KEY, "value")
    path = Path(cache._entry_path(KEY))
    path.unlink()
    (path / "inside").mkdir(parents=True)
    assert cache.info().entries == 0
    cache.clear()
    assert not path.exists()
    assert cache.save(KEY, "value")
    assert cache.load(KEY) == "value"


def test_an_entry_moved_to_another_keys_name_is_not_served_for_it(tmp_path: Path) -> None:
    # Both stay whole (their checksums hold): only the key in the header tells them apart.
    cache = Cache(tmp_path)
    other = "cd" + "0" * 30
    cache.save(KEY, "value of KEY")
    cache.save(other, "value of other")
    mine, theirs = Path(cache._entry_path(KEY)), Path(cache._entry_path(other))
    swap = mine.read_bytes()
    mine.write_bytes(theirs.read_bytes())
    theirs.write_bytes(swap)
    for key in (KEY, other):
        with pytest.warns(CacheWarning, match="another key"), pytest.raises(CacheEntryError):
            cache.load(key)


def test_an_entry_written_without_a_key_check_is_still_read(tmp_path: Path) -> None:
    from dispatcher._cache import _HEADER

    cache = Cache(tmp_path)
    cache.save(KEY, "value")
    path = Path(cache._entry_path(KEY))
    data = bytearray(path.read_bytes())
    data[_HEADER.size - 4 : _HEADER.size] = bytes(4)  # as entries had it before
    path.write_bytes(bytes(data))
    assert cache.load(KEY) == "value"
