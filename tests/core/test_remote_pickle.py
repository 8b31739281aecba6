"""The kit's out-of-band pickler: large ``bytes`` and ``bytearray`` values leave the pickle
stream wherever they sit, and the stream stays one ``pickle.loads`` reads."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher.remote import OUT_OF_BAND_BYTES, dumps_split

pytestmark = pytest.mark.timeout(60)

BIG = bytes(range(256)) * (4 * 4096)  # 4 MiB


@dataclass
class Holder:
    """Not builtin data: pickled by cloudpickle, not the plain pickler."""

    payload: Any


def round_trip(value: Any, threshold: int = OUT_OF_BAND_BYTES) -> tuple[Any, bytes, list[int]]:
    stream, views = dumps_split(value, threshold)
    return pickle.loads(stream, buffers=views), stream, [v.nbytes for v in views]


@pytest.mark.parametrize(
    "value",
    [BIG, (1, BIG), [BIG], {"k": BIG}, Holder(BIG), bytearray(BIG)],
    ids=["bytes", "in a tuple", "in a list", "in a dict", "in an instance", "bytearray"],
)
def test_a_large_buffer_leaves_the_stream_wherever_it_sits(value: Any) -> None:
    back, stream, sizes = round_trip(value)
    assert sizes == [len(BIG)]
    assert len(stream) < 1024
    assert back == value
    assert type(back) is type(value)


def test_one_buffer_met_twice_travels_once_and_comes_back_shared() -> None:
    other = bytearray(b"y" * (OUT_OF_BAND_BYTES + 1))
    back, stream, sizes = round_trip([BIG, (BIG, other), {"again": BIG}])
    assert sorted(sizes) == sorted([len(BIG), len(other)])
    assert back[0] is back[1][0] is back[2]["again"]
    assert back[0] == BIG
    assert back[1][1] == other
    assert type(back[1][1]) is bytearray


def test_the_threshold_decides_and_short_buffers_stay_in_the_stream() -> None:
    short = b"z" * 1000
    assert round_trip((short, BIG), threshold=len(BIG) + 1)[2] == []
    back, _, sizes = round_trip((short, BIG), threshold=len(BIG))
    assert sizes == [len(BIG)]
    assert back == (short, BIG)
    assert round_trip(short)[2] == []


def test_a_long_pickle_of_small_objects_stays_whole() -> None:
    numbers = [float(i) * 1.5 for i in range(200_000)]
    back, stream, sizes = round_trip(numbers, threshold=64 * 1024)
    assert sizes == []
    assert len(stream) > 64 * 1024
    assert back == numbers


def test_buffers_pickle_passes_out_of_band_keep_their_place_after_the_large_bytes() -> None:
    array = bytearray(b"a" * 10)
    value = (pickle.PickleBuffer(array), BIG)
    stream, views = dumps_split(value)
    assert [v.nbytes for v in views] == [len(BIG), len(array)]
    back = pickle.loads(stream, buffers=views)
    assert bytes(back[0]) == bytes(array)
    assert back[1] == BIG


class MadeOnPickling:
    """Its reducer makes a large ``bytes`` anew each time, and counts its calls."""

    reduced = 0

    def __reduce__(self) -> Any:
        MadeOnPickling.reduced += 1
        return _rebuild, (b"m" * (2 * OUT_OF_BAND_BYTES),)


def _rebuild(data: bytes) -> MadeOnPickling:
    assert data == b"m" * (2 * OUT_OF_BAND_BYTES)
    return MadeOnPickling()


def test_bytes_a_reducer_makes_stay_in_band_and_it_runs_once() -> None:
    MadeOnPickling.reduced = 0
    back, stream, sizes = round_trip([MadeOnPickling(), BIG])
    assert MadeOnPickling.reduced == 2  # the pickle that found BIG, and the one that sent it
    assert sizes == [len(BIG)]
    assert isinstance(back[0], MadeOnPickling)
    assert back[1] == BIG
    MadeOnPickling.reduced = 0
    back, stream, sizes = round_trip(MadeOnPickling())
    assert MadeOnPickling.reduced == 1
    assert sizes == []
    assert isinstance(back, MadeOnPickling)


def test_a_pickler_that_memoised_many_objects_is_replaced_not_reused() -> None:
    """The C pickler's memo table never shrinks, and clearing it clears all of it: after
    one batch of 5,000 results, every small pickle on that thread cost 25x more."""
    from dispatcher.remote import _pickle

    plain = _pickle._plain
    dumps_split(1)
    reused = plain.pickler
    dumps_split((2, "two"))
    assert plain.pickler is reused  # small pickles keep the pickler they were made by
    batch = [[key, str(key)] for key in range(5000)]
    stream, views = dumps_split(batch)
    assert plain.pickler is not reused
    assert pickle.loads(stream, buffers=views) == batch
    assert pickle.loads(dumps_split([3, "three"])[0]) == [3, "three"]


LAZY_PACKAGE = {
    "__init__.py": "from ._impl import Thing, make\n",
    # numpy's way with np.recarray: the class names a submodule loaded on first use.
    "_impl.py": (
        "class Thing:\n"
        "    def __init__(self, n):\n"
        "        self.n = n\n"
        "def make(n):\n"
        "    return Thing(n)\n"
        "Thing.__module__ = make.__module__ = 'lazypkg.sub'\n"
    ),
    "sub.py": "from ._impl import Thing, make\n",
}

PICKLE_LAZY = """
import pickle, sys
import lazypkg
from dispatcher.remote import dumps, dumps_split
assert "lazypkg.sub" not in sys.modules
thing = lazypkg.Thing(5)
stream, buffers = dumps_split([thing])
assert not buffers
made = type("Made", (), {"__module__": "lazypkg.made_at_run_time"})
pickle.dump([dumps(thing), stream, dumps(lazypkg.Thing), dumps(lazypkg.make), dumps(made)],
            sys.stdout.buffer)
"""

# Unpickled in another process, as a worker would: cloudpickle gives a process back the
# very class it copied, so a round trip in one process cannot tell a copy.
LOAD_LAZY = """
import pickle, sys
import lazypkg
thing, in_list, cls, func, made = [pickle.loads(p) for p in pickle.load(sys.stdin.buffer)]
print(
    type(thing) is lazypkg.Thing,
    type(in_list[0]) is lazypkg.Thing,
    cls is lazypkg.Thing,
    func is lazypkg.make,
    made.__name__,
)
"""


def test_a_class_of_a_lazily_loaded_submodule_travels_by_reference(tmp_path: Any) -> None:
    # cloudpickle copies a class whose module is not in sys.modules, and the copy is
    # another class where it arrives (np.recarray's methods then fail on it). A class
    # made at run time under a module name that does not import still travels by value.
    package = tmp_path / "lazypkg"
    package.mkdir()
    for name, text in LAZY_PACKAGE.items():
        (package / name).write_text(text)
    options: dict[str, Any] = {
        "capture_output": True,
        "timeout": 60,
        "cwd": tmp_path,
        "env": {**os.environ, "PYTHONPATH": str(tmp_path)},
    }
    pickled = subprocess.run([sys.executable, "-c", PICKLE_LAZY], **options)
    assert pickled.returncode == 0, pickled.stderr.decode()
    loaded = subprocess.run([sys.executable, "-c", LOAD_LAZY], input=pickled.stdout, **options)
    assert loaded.returncode == 0, loaded.stderr.decode()
    assert loaded.stdout.decode().split() == ["True", "True", "True", "True", "Made"]


class _ExitsWhenPickled:
    def __reduce__(self) -> Any:
        raise SystemExit("no pickling")


def test_a_member_whose_pickling_exits_is_named_not_its_container() -> None:
    """Without a pickling message to go by, the arguments' tuple was named."""
    from dispatcher.remote import serialization_error

    arguments = (1, {"x": [2, _ExitsWhenPickled()]})
    error = serialization_error("f", "arguments", arguments, SystemExit("no pickling"))
    assert error.type_name.endswith("_ExitsWhenPickled"), error.type_name
    assert "raised SystemExit" in str(error)
