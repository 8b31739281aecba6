"""A task whose inputs are held by another rank asks that rank for all of them at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi_jobs import MISSING, MPIEXEC, job, recording, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)

# Started on every rank before dispatcher_mpi: logs the kind of every message a rank posts.
RECORDER = """
import os
import dispatcher_mpi._channel as channel

_post = channel.Hub.post

def post(self, dest, message, sent=None):
    with open(os.path.join(os.environ["POST_LOG"], f"{os.getpid()}.log"), "a") as log:
        log.write(f"{os.environ.get('PMI_RANK', '?')} {type(message).__name__}\\n")
    return _post(self, dest, message, sent)

channel.Hub.post = post
"""


def test_the_inputs_held_by_another_rank_come_in_one_request(tmp_path: Path) -> None:
    env, logs = recording(tmp_path, RECORDER, "POST_LOG")
    program = script(
        tmp_path,
        """
        import os
        from dispatcher import Op, run

        def make(i):
            return os.environ["PMI_RANK"], i

        def gather(*parts):
            return os.environ["PMI_RANK"], parts

        rank, parts = run(Op(gather, *[Op(make, i) for i in range(40)]), executor="mpi")
        assert [i for _, i in parts] == list(range(40))
        print("remote", sum(1 for made_on, _ in parts if made_on != rank))
        """,
    )
    done = job(3, program, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = int(done.stdout.split("remote")[1])
    assert remote > 0, "every input was made where it was used: nothing to fetch"
    posted = [line.split() for log in logs.iterdir() for line in log.read_text().splitlines()]
    fetches = [rank for rank, kind in posted if kind == "Fetch"]
    data = [rank for rank, kind in posted if kind == "Data"]
    assert len(fetches) == 1, posted
    assert len(data) == 1
