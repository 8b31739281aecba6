"""A rank times the inputs it fetches from other ranks; rank 0 learns what moves cost."""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi_jobs import MISSING, MPIEXEC, job, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)


def test_the_fetches_between_ranks_are_timed_and_learned(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import time
        from dispatcher import Op, get_executor

        def make(i):
            time.sleep(0.2)  # both run at once, one on each worker rank
            return bytes(1_000_000)

        def join(a, b):
            return len(a) + len(b)

        with get_executor("mpi") as ex:
            for _ in range(6):
                assert ex.run(Op(join, Op(make, 0), Op(make, 1))) == 2_000_000
            links = ex.link_costs
            print("samples", links.within.samples, links.across.samples)
            # Across hosts when the suite runs on several (one rank per host).
            taken = links.within if links.within.samples else links.across
            nbytes, seconds = taken.large[-1]
            print("move", nbytes, seconds)
            print("measured", sum(samples for _, _, samples in links.summary().values()))
        """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stderr[-3000:]
    words = dict((line.split()[0], line.split()[1:]) for line in done.stdout.splitlines() if line)
    within, across = map(int, words["samples"])
    # Each run's consumer took one input from the other worker rank, over one link.
    assert within + across == 6
    assert 0 in (within, across)
    nbytes, seconds = int(words["move"][0]), float(words["move"][1])
    assert nbytes == 1_000_000
    assert 0 < seconds < 10
    assert int(words["measured"][0]) == 6  # enough to be measured, and shown so
