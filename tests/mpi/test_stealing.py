"""Ranks gone idle take back work queued behind long tasks on another rank."""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi_jobs import MISSING, MPIEXEC, job, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)


def test_a_function_tiny_at_first_and_long_later_does_not_queue_on_one_rank(
    tmp_path: Path,
) -> None:
    # The same function runs hundreds of tiny calls first, so placement takes it for
    # tiny; its long calls then all read one large value held on one rank, and tiny
    # tasks stay with their data: they all queue there (up to ``prefetch``, 1024) while
    # the other rank idles, unless that rank takes them back.
    program = script(
        tmp_path,
        """
        import time
        from collections import Counter

        from dispatcher import get_executor, op
        from dispatcher.testing import Recorder

        def work(seconds, data, i):
            if seconds:  # (sleep(0) yields to the ranks' busy polling: not tiny)
                time.sleep(seconds)
            return i

        def count(*values):
            return len(values)

        def blob(n):
            return bytes(2_000_000 + n)

        with get_executor("mpi") as ex:
            tiny = [op(work, label="tiny")(0, None, i) for i in range(300)]
            data = op(blob, label="blob")(op(count, label="count")(*tiny))
            long = [op(work, label="long")(0.1, data, i) for i in range(40)]
            recorder = Recorder()
            assert ex.run(long, plugins=[recorder]) == list(range(40))
            where = Counter(e[2] for e in recorder.of("finished") if e[1].label == "long")
            started = Counter(id(e[1]) for e in recorder.of("started") if e[1].label == "long")
            assert len(started) == 40 and set(started.values()) == {1}, started
            assert len(where) == 2, where  # both ranks ran some
            print("spread", sorted(where.values()))
        """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "spread" in done.stdout
