"""Real MPI jobs: pytest starts `mpiexec -n N python -m dispatcher_mpi ...` and checks them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mpi_jobs import MISSING, MPIEXEC, job, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)


def test_conformance_suite() -> None:
    done = job(4, "-m", "pytest", "-q", "-p", "no:cacheprovider", "conformance_job.py", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout


def test_worker_ranks_do_the_work_and_arrays_move_rank_to_rank(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import numpy as np
        from mpi4py import MPI
        from dispatcher import Op, run, hookimpl
        from dispatcher_mpi._transport import current_root

        def rank(_):
            return MPI.COMM_WORLD.Get_rank()

        def big(fill):
            return np.full(4 * 1024 * 1024, fill, dtype=np.float64)  # 32 MiB

        def total(a, b):
            return float(a.sum() + b.sum())

        ranks = run([Op(rank, i) for i in range(8)], executor="mpi")
        assert 0 not in ranks, ranks
        assert len(set(ranks)) == 2, ranks

        where = {}
        class Where:
            @hookimpl
            def dispatcher_task_started(self, node, worker):
                where[node.label] = worker

        a, b = Op(big, 1.0), Op(big, 2.0)
        a.label, b.label = "a", "b"
        received = current_root().hub.bytes_received
        assert run(Op(total, a, b), executor="mpi", plugins=[Where()]) == 3.0 * 4 * 1024 * 1024
        through_root = current_root().hub.bytes_received - received
        assert where["a"] != where["b"], where  # so one array had to move
        assert through_root < 1024 * 1024, through_root  # and it did not pass rank 0
        print("ok", through_root)
    """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok" in done.stdout


def test_chunked_messages_arrive_whole(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import numpy as np
        from dispatcher import Op, run

        def make(n):
            return np.arange(n, dtype=np.int64)

        def check(a, b):
            return int(a.sum() + b.sum()), a.dtype.name, a.shape

        a, b = Op(make, 100_003), Op(make, 77_777)
        assert run(Op(check, a, b), executor="mpi") == (
            100_003 * 100_002 // 2 + 77_777 * 77_776 // 2, "int64", (100_003,))
        assert int(run(a, executor="mpi")[-1]) == 100_002
        print("ok")
    """,
    )
    done = job(3, program, env={"DISPATCHER_MPI_CHUNK": "1000"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok" in done.stdout


def test_a_result_sent_to_the_caller_is_not_copied_on_its_rank(tmp_path: Path) -> None:
    # A 32 MiB result wanted by the caller leaves its rank as a raw buffer: the rank
    # never holds a second, pickled copy of it (it once checked that the result pickles
    # by pickling it whole, in-band).
    program = script(
        tmp_path,
        """
        import tracemalloc
        import numpy as np
        from dispatcher import Op, run

        def make():
            tracemalloc.start()
            tracemalloc.reset_peak()
            return np.ones(32 * 1024 * 1024, dtype=np.uint8)

        def peak_after(a):
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return peak

        made = Op(make)
        array, peak = run([made, Op(peak_after, made)], executor="mpi")
        assert array.nbytes == 32 * 1024 * 1024
        print("peak", peak / array.nbytes)
    """,
    )
    done = job(2, program)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = float(done.stdout.split("peak")[1])
    assert peak < 1.5, f"the rank held {peak:.1f} copies of the result at once"


def test_task_error_then_recovery_in_the_same_script(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        from dispatcher import Op, get_executor

        class Oops(Exception):
            pass

        def bad():
            raise Oops("broken", 7)

        def inc(x):
            return x + 1

        with get_executor("mpi") as ex:
            try:
                ex.run(Op(inc, Op(bad)))
            except Oops as exc:
                assert exc.args == ("broken", 7)
                assert any("Traceback from the worker" in n for n in exc.__notes__)
            else:
                raise AssertionError("no error")
            assert ex.run(Op(inc, Op(inc, 1))) == 3
        print("recovered")
    """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recovered" in done.stdout


def test_a_tasks_own_use_of_comm_world_never_meets_dispatchers_messages(
    tmp_path: Path,
) -> None:
    # They went on COMM_WORLD: a receive a task posted there took the next message
    # dispatcher sent its rank, lost to the rank's own listener.
    program = script(
        tmp_path,
        """
        import time
        from dispatcher import Op, run

        def listen(seconds):
            from mpi4py import MPI

            request = MPI.COMM_WORLD.irecv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if request.test()[0]:
                    return "took a message"
                time.sleep(0.01)
            request.Cancel()
            request.Free()
            return "nothing"

        print(run([Op(listen, 3), Op(listen, 3)], executor="mpi"), flush=True)
        print(run([Op(abs, -i) for i in range(4)], executor="mpi"), flush=True)
        """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "['nothing', 'nothing']\n[0, 1, 2, 3]" in done.stdout, done.stdout


def test_an_uncaught_task_error_shows_the_users_code_only(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        from dispatcher import op, run

        @op
        def parse(text):
            return int(text)  # the failing line

        run([parse("1"), parse("b.txt")], executor="mpi")
    """,
    )
    done = job(3, program)
    assert done.returncode != 0
    err = done.stderr
    # As `python program.py` shows it: no launcher, runpy or worker frames, and the task's
    # own file, line and source line (the function went to the rank by value).
    assert err.startswith(f'Traceback (most recent call last):\n  File "{program}", line 8'), err
    assert "runpy" not in err
    assert "dispatcher_mpi" not in err.split("dispatcher_mpi: the program on rank 0 failed")[0]
    assert f'File "{program}", line 6, in parse\n    return int(text)  # the failing line' in err
    assert "<dynamic-code>" not in err
    assert "Traceback from the worker that ran parse('b.txt'):" in err
    assert "dispatcher: raised by node parse('b.txt') on worker 'rank-" in err


def test_queueing_ahead_on_ranks(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import os
        import sys
        from collections import Counter

        from dispatcher import Op, get_executor, hookimpl, op
        from dispatcher.testing import Recorder, tasks

        with get_executor("mpi") as ex:
            # A tree over two ranks: tasks queued behind others never start twice.
            level = [Op(tasks.inc, i) for i in range(256)]
            while len(level) > 1:
                level = [Op(tasks.add, a, b) for a, b in zip(level[::2], level[1::2])]
            recorder = Recorder()
            assert ex.run(level[0], plugins=[recorder]) == sum(range(1, 257))
            started = Counter(id(e[1]) for e in recorder.of("started"))
            assert len(started) == 511 and max(started.values()) == 1, started

        # Queued together on one rank: the second returns True only if rank 0 heard of
        # the first while the second was still running.
        marker = os.path.join(sys.argv[1], "first-reported")

        class MarkFirst:
            @hookimpl
            def dispatcher_task_finished(self, node):
                if node.label == "first":
                    open(marker, "w").close()

        first = op(tasks.sleep_then, label="first")(0.05, 1)
        second = op(tasks.wait_for_file, label="second")(marker, 10)
        with get_executor("mpi", workers=1, prefetch=1) as one:
            assert one.run([first, second], plugins=[MarkFirst()]) == [1, True]
        print("queued ahead")
    """,
    )
    done = job(3, program, str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "queued ahead" in done.stdout


def test_timeout_fails_the_node_and_the_job_goes_on(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import time
        from dispatcher import Op, op, run, TaskTimeoutError

        stuck = op(time.sleep, timeout=0.5)(3600)
        try:
            run(stuck, executor="mpi")
        except TaskTimeoutError as exc:
            print("timed out:", exc)
        print(run([Op(abs, -i) for i in range(10)], executor="mpi"))
    """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "timed out" in done.stdout
    assert "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in done.stdout


def test_argv_exit_status_and_modes(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import sys
        print("argv", sys.argv)
        sys.exit(int(sys.argv[1]))
    """,
    )
    done = job(2, program, "3", "--flag")
    assert done.returncode == 3
    assert f"argv ['{program}', '3', '--flag']" in done.stdout
    done = job(2, "-c", "import sys; print('code', sys.argv[1:])", "x")
    assert done.returncode == 0
    assert "code ['x']" in done.stdout
    done = job(2, "-m", "json.tool", "--help")
    assert done.returncode == 0


def test_failure_on_rank_zero_ends_the_job(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        raise RuntimeError("the program itself failed")
    """,
    )
    done = job(3, program)
    assert done.returncode != 0
    assert "the program itself failed" in done.stderr


def test_a_dead_rank_ends_the_job(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import os, signal
        from dispatcher import Op, run

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        run([Op(die) for _ in range(2)], executor="mpi")
        print("should not get here")
    """,
    )
    done = job(3, program, timeout=120)
    assert done.returncode != 0
    assert "should not get here" not in done.stdout


def test_without_the_launcher_the_error_says_how(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        from dispatcher import DataNode, run, DispatcherError
        try:
            run(DataNode(1), executor="mpi")
        except DispatcherError as exc:
            print("error:", exc)
    """,
    )
    plain = subprocess.run([sys.executable, program], capture_output=True, text=True, timeout=60)
    assert "mpiexec -n" in plain.stdout
    assert "python -m dispatcher_mpi" in plain.stdout
    single = job(1, program)
    assert single.returncode == 0, single.stderr
    # One sentence: the launch help goes on from the reason, not as a lower-case sentence.
    assert "no worker ranks (-n 1): the 'mpi' executor runs inside" in single.stdout


def test_discovery_does_not_start_mpi() -> None:
    code = (
        "import sys, dispatcher, dispatcher_mpi; "
        "assert 'mpi' in dispatcher.available_executors(); "
        "assert 'mpi4py.MPI' not in sys.modules, 'MPI was initialised'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_idle_worker_ranks_do_not_burn_a_core(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import os, time
        from dispatcher import Op, run

        def cpu(_):
            t = os.times()
            return os.getpid(), t.user + t.system

        before = dict(run([Op(cpu, i) for i in range(4)], executor="mpi"))
        time.sleep(2.0)
        after = dict(run([Op(cpu, i) for i in range(4)], executor="mpi"))
        used = max(after[p] - before[p] for p in before if p in after)
        print("idle cpu fraction", used / 2.0)
        assert used / 2.0 < 0.2, used
    """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


@pytest.mark.timeout(150)
def test_odd_exceptions_fail_their_node_and_the_rank_keeps_serving(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import os, sys
        from dispatcher import Op, RemoteError, SerializationError, get_executor

        class Custom(BaseException):
            pass

        class Unprintable(Exception):
            def __str__(self):
                raise RuntimeError("no message")

        class Weird(Exception):
            def __reduce__(self):
                return (str, ("x",))

        class ExitsWhenUnpickled:
            def __reduce__(self):
                return (sys.exit, (3,))

        def exits():
            sys.exit(4)

        def interrupt():
            raise KeyboardInterrupt

        def generator_exit():
            raise GeneratorExit

        def custom():
            raise Custom("mine")

        def unprintable():
            raise Unprintable("hidden")

        def from_weird():
            raise ValueError("visible") from Weird()

        def odd_result():
            return ExitsWhenUnpickled()

        with get_executor("mpi", workers=1, retries=0) as ex:
            pid = ex.run(Op(os.getpid))
            for task, expected in [
                (exits, SystemExit), (interrupt, KeyboardInterrupt),
                (generator_exit, GeneratorExit), (custom, Custom),
                (unprintable, Unprintable), (from_weird, ValueError),
                (odd_result, SerializationError),
            ]:
                result = ex.run(Op(task), throw=False)
                assert type(result.error) is expected, (task.__name__, repr(result.error))
                assert ex.run(Op(os.getpid)) == pid, task.__name__
        print("all failed cleanly")
    """,
    )
    done = job(2, program, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all failed cleanly" in done.stdout


@pytest.mark.timeout(150)
def test_fresh_closures_do_not_pile_up_on_the_ranks(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import os
        from dispatcher import Op, get_executor
        from dispatcher_mpi._transport import current_root

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        def closure_of(size, tag):
            payload = bytes([tag % 256]) * size
            def fresh():
                return len(payload) + tag
            return fresh

        with get_executor("mpi", workers=1) as ex:
            start = ex.run(Op(rss))
            for i in range(300):
                ex.run(Op(closure_of(200_000, i)))
            grown = ex.run(Op(rss)) - start
        print("grown", grown)
        assert grown < 40_000_000, grown
        pickled = current_root().shipper.pickled_bytes
        assert pickled < 20_000_000, pickled
    """,
    )
    done = job(2, program, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "grown" in done.stdout
