"""Large ``bytes`` travel out of band on MPI: from the caller to a rank, from rank to rank
and back to the caller, as raw messages beside a small pickle, and arrive intact."""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi_jobs import MISSING, MPIEXEC, job, recording, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)

# Started on every rank before dispatcher_mpi: records what the out-of-band pickler made of
# each value of a MiB or more, and which function of the kit asked for it.
RECORDER = """
import os, sys
import dispatcher.remote as remote

_dumps_split = remote.dumps_split

def dumps_split(obj, *args, **kwargs):
    stream, views = _dumps_split(obj, *args, **kwargs)
    sizes = [v.nbytes for v in views]
    if len(stream) + sum(sizes) >= 1 << 20:
        caller = sys._getframe(1).f_code.co_name
        if caller == "encode":
            caller = sys._getframe(2).f_code.co_name
        rank = os.environ.get("PMI_RANK", "?")
        with open(os.path.join(os.environ["PICKLE_LOG"], f"{os.getpid()}.log"), "a") as log:
            log.write(f"{rank} {caller} {len(stream)} {' '.join(map(str, sizes))}\\n")
    return stream, views

remote.dumps_split = dumps_split
"""


def test_large_bytes_move_between_ranks_and_the_caller_out_of_band(tmp_path: Path) -> None:
    env, logs = recording(tmp_path, RECORDER, "PICKLE_LOG")
    program = script(
        tmp_path,
        """
        import hashlib, os
        from dispatcher import Op, run

        SIZE = 3 * 1024 * 1024 + 5

        def make(seed):
            return os.environ["PMI_RANK"], bytes([seed]) * SIZE

        def digest(*parts):
            return [hashlib.sha256(p[1] if isinstance(p, tuple) else p).hexdigest()
                    for p in parts]

        def sha(data):
            return hashlib.sha256(data).hexdigest()

        payload = os.urandom(SIZE)
        a, b = Op(make, 1), Op(make, 2)
        (rank_a, data_a), (rank_b, _), digests, echoed = run(
            [a, b, Op(digest, a, b), Op(digest, payload)], executor="mpi")
        assert rank_a != rank_b, "both made on one rank: nothing moved rank to rank"
        assert data_a == bytes([1]) * SIZE
        assert digests == [sha(bytes([1]) * SIZE), sha(bytes([2]) * SIZE)]
        assert echoed == [sha(payload)]
        print("ok")
        """,
    )
    done = job(3, program, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok" in done.stdout
    records = [line.split() for log in logs.iterdir() for line in log.read_text().splitlines()]
    size = 3 * 1024 * 1024 + 5
    # Every value of a MiB or more was pickled into a small stream and one raw buffer.
    for rank, caller, stream, *views in records:
        assert int(stream) < 4096, (rank, caller, stream)
        assert [int(v) for v in views] == [size], (rank, caller, views)
    origins = {(rank == "0", caller) for rank, caller, *_ in records}
    assert (True, "keep") in origins  # the caller's argument, pickled once for every rank
    assert (False, "_serve_fetch") in origins  # a result fetched by another rank
    assert (False, "pack_result") in origins  # results sent to the caller
