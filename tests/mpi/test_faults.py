"""Faults in real MPI jobs: stuck and dying ranks, odd endings, what each leaves behind.

Every test runs under a hard timeout: a hang fails it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from mpi_jobs import HERE, MISSING, MPIEXEC, command, job, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(150)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)


# Printed by a job's program: the MPICH segments its rank 0 maps, by name (so the test
# checks this job's own files, whatever other jobs on the machine do meanwhile).
SEGMENTS = """
def print_segments():
    with open("/proc/self/maps") as maps:
        names = {l.split()[5] for l in maps if "/dev/shm/mpich_shm_" in l}
    print("segments", sorted(names), flush=True)
"""


def segments_of(output: str) -> list[str]:
    found = re.search(r"segments (\[.*\])", output)
    assert found is not None, output
    names: list[str] = eval(found.group(1))  # a list of str, printed by the program
    return names


# -- what a job leaves in /dev/shm ------------------------------------------------------

ENDINGS = {
    "exception": ("raise RuntimeError('the program failed')", 3),
    "exit": ("import sys; sys.exit(3)", 3),
    "dead rank": (
        "import os, signal\n"
        "from dispatcher import Op, run\n"
        "def die():\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "run([Op(die) for _ in range(2)], executor='mpi')",
        3,
    ),
    "single rank": ("import sys; sys.exit(3)", 1),
    "success": ("pass", 3),
}


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm here")
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_no_ending_leaves_a_segment_in_dev_shm(tmp_path: Path, ending: str) -> None:
    body, ranks = ENDINGS[ending]
    program = script(tmp_path, SEGMENTS + "print_segments()\n" + body + "\n")
    done = job(ranks, program)
    assert (done.returncode == 0) == (ending == "success"), done.stderr[-3000:]
    names = segments_of(done.stdout)
    if ranks > 1:
        assert names, "MPICH made no segment: nothing to check"
    assert [n for n in names if os.path.exists(n)] == []


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm here")
def test_ctrl_c_leaves_no_segment_in_dev_shm(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        SEGMENTS
        + textwrap.dedent(
            """
            import time
            from dispatcher import Op, run
            print_segments()
            run(Op(time.sleep, 3600), executor="mpi")
            """
        ),
    )
    process = subprocess.Popen(
        command(3, program), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        names = segments_of(line)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert names
    assert [n for n in names if os.path.exists(n)] == []


def test_ctrl_c_is_the_programs_to_handle(tmp_path: Path) -> None:
    # mpiexec passes SIGINT to every rank: the worker ranks leave it to rank 0, whose
    # program here catches it, takes its time to save, and ends the job its own way.
    program = script(
        tmp_path,
        """
        import sys, time
        from dispatcher import Op, run
        print("started", flush=True)
        try:
            run([Op(time.sleep, 3600) for _ in range(4)], executor="mpi")
        except KeyboardInterrupt:
            time.sleep(2)
            print("saved", flush=True)
            sys.exit(0)
        """,
    )
    process = subprocess.Popen(
        command(3, program), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "started\n"
        time.sleep(1)  # the sleeps have reached their ranks
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    assert "saved" in out.splitlines(), out
    assert "Traceback" not in err, err[-3000:]


# Every rank, once past MPI_Init and before its segments lose their names, prints them and
# gets SIGINT (Ctrl-C, as mpiexec passes it on): the window a Ctrl-C at start-up can hit.
CTRL_C_AT_START = """
import os, signal, sys
import dispatcher_mpi._channel as channel

real = channel.chunk_limit

def interrupted():
    with open("/proc/self/maps") as maps:
        names = sorted({l.split()[5] for l in maps if "/dev/shm/mpich_shm_" in l})
    # One write per rank: the ranks' outputs reach mpiexec's as chunks, interleaved.
    os.write(1, ("segments " + repr(names) + "\\n").encode())
    os.kill(os.getpid(), signal.SIGINT)
    return real()

channel.chunk_limit = interrupted
"""

# Every rank gets SIGINT as `python -m dispatcher_mpi` starts importing dispatcher's core:
# the window before MPI starts, a few tenths of a second long.
CTRL_C_AT_IMPORT = """
import os, signal, sys

class InterruptsAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == "dispatcher":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptsAtImport())
"""


@pytest.mark.parametrize("when", ["at import", "after MPI_Init"])
def test_ctrl_c_before_the_program_starts_ends_the_job_quietly(tmp_path: Path, when: str) -> None:
    # Before: each rank's traceback through dispatcher's imports, and hydra's "BAD
    # TERMINATION ... Segmentation fault" for ranks that had in fact been interrupted.
    site = tmp_path / "site"
    site.mkdir()
    hook = CTRL_C_AT_IMPORT if when == "at import" else CTRL_C_AT_START
    (site / "sitecustomize.py").write_text(hook)
    program = script(tmp_path, "print('the program ran')\n")
    done = job(3, program, env={"PYTHONPATH": str(site)}, timeout=60)
    assert done.returncode == 130, done.stderr[-3000:]
    assert "the program ran" not in done.stdout
    assert "interrupted (Ctrl-C) before the program started" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm here")
def test_ctrl_c_at_start_leaves_no_segment_in_dev_shm(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CTRL_C_AT_START)
    program = script(tmp_path, "print('the program ran')\n")
    done = job(3, program, env={"PYTHONPATH": str(site)}, timeout=60)
    assert done.returncode != 0
    assert "the program ran" not in done.stdout
    # Three ranks print: their lines may interleave, their segments' names stay whole.
    names = sorted(set(re.findall(r"/dev/shm/mpich_shm_[\w.-]+", done.stdout)))
    assert names, done.stdout + done.stderr[-3000:]
    assert [n for n in names if os.path.exists(n)] == []


# -- timeouts of tasks whose rank cannot say they started -------------------------------

# Backtracks for longer than any test runs, holding the GIL all along.
ENDLESS = """
import re
from dispatcher import op
endless = op(re.match, timeout=1)(r"(a*)*b", "a" * 40)
"""


def test_a_task_holding_the_gil_times_out_and_the_job_ends(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        ENDLESS
        + textwrap.dedent(
            """
            from dispatcher import Op, TaskTimeoutError, run
            try:
                run(endless, executor="mpi")
            except TaskTimeoutError as exc:
                print("timed out:", exc, flush=True)
            print(run([Op(abs, -i) for i in range(6)], executor="mpi"), flush=True)
            """
        ),
    )
    done = job(3, program)
    assert "timed out: match('(a*)*b', 'aaa" in done.stdout, done.stderr
    assert "') ran past its timeout of 1 s" in done.stdout, done.stderr
    assert "[0, 1, 2, 3, 4, 5]" in done.stdout
    # The stuck rank cannot stop: the job ends anyway, with the program's status.
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"rank 1 \(host .*, pid \d+\): still running 'match'", done.stderr)


def test_a_task_whose_rank_never_says_it_started_still_times_out(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        ENDLESS
        + textwrap.dedent(
            """
            from dispatcher import Op, TaskTimeoutError, get_executor
            from dispatcher.remote import Started

            def mute():
                # This rank's "started" reports are lost from now on.
                from dispatcher_mpi._worker import WorkerRank
                send = WorkerRank.send
                def muted(self, message):
                    if type(message) is not Started:
                        send(self, message)
                WorkerRank.send = muted

            with get_executor("mpi", workers=1, retries=0) as ex:
                ex.run(Op(mute))
                try:
                    ex.run(endless)
                except TaskTimeoutError as exc:
                    print("timed out:", exc, flush=True)
            """
        ),
    )
    done = job(2, program)
    assert "timed out: match('(a*)*b', 'aaa" in done.stdout, done.stderr
    assert "') ran past its timeout of 1 s" in done.stdout, done.stderr
    assert done.returncode == 0, done.stderr[-3000:]
    assert "silent since 'match' was due to start" in done.stderr


def test_tasks_queued_behind_a_timed_out_task_run_elsewhere_uncharged(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import time
        from dispatcher import get_executor, hookimpl, op

        sent = []

        class Sends:
            @hookimpl
            def dispatcher_task_started(self, node, worker):
                sent.append((node.label, worker))

        stuck = op(time.sleep, label="stuck", timeout=0.5)(3600)
        quick = [op(abs, label=f"q{i}")(-i) for i in range(8)]
        with get_executor("mpi", retries=0, prefetch=2) as ex:
            results = ex.run([stuck, *quick], throw=False, plugins=[Sends()])
        rank = dict(sent)["stuck"]
        # Sent to the stuck rank after it: queued there when it timed out.
        behind = [label for label, where in sent[sent.index(("stuck", rank)) + 1 :]
                  if where == rank]
        print("queued behind:", behind)
        print("stuck:", type(results[0].error).__name__)
        print("quick:", [r.value if r.ok else repr(r.error) for r in results[1:]])
        """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stuck: TaskTimeoutError" in done.stdout, done.stdout
    assert "queued behind: []" not in done.stdout, done.stdout  # else nothing is tested
    assert "quick: [0, 1, 2, 3, 4, 5, 6, 7]" in done.stdout, done.stdout


def test_the_run_after_a_fail_fast_one_is_not_charged_for_what_it_abandoned(
    tmp_path: Path,
) -> None:
    # A rank answered the abandoning with "busy" naming the task it ran at that moment:
    # one of the next run's, or one started just before (then sent again, under the same
    # key): that task was charged a worker loss, which failed the next run (retries=0).
    program = script(
        tmp_path,
        """
        import time
        from dispatcher import WorkerLostError, get_executor, op

        def step(i, bad):
            time.sleep(0.002 * (i % 5))
            if i == bad:
                raise ValueError(f"task {i} fails on purpose")
            return i

        lost = 0
        with get_executor("mpi", retries=0) as ex:
            for attempt in range(20):
                try:
                    ex.run([op(step)(i, 5) for i in range(40)])
                except ValueError:
                    pass
                try:
                    assert ex.run([op(step)(i, -1) for i in range(20)]) == list(range(20))
                except WorkerLostError as exc:
                    lost += 1
                    print("lost:", exc, flush=True)
        print("lost", lost)
        """,
    )
    done = job(3, program, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lost 0" in done.stdout, done.stdout[-3000:]


def test_an_mpi_run_inside_an_mpi_task_is_refused_naming_what_to_use(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        from dispatcher import DispatcherError, op, run

        def inner(n):
            return run([op(abs)(-i) for i in range(n)], executor="mpi")

        try:
            run(op(inner)(3), executor="mpi")
        except DispatcherError as exc:
            print("refused:", exc)
        """,
    )
    done = job(3, program)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: an mpi executor cannot be used inside an mpi task" in done.stdout
    assert "executor='sync' or 'async'" in done.stdout


# -- no capacity left --------------------------------------------------------------------


def test_when_every_rank_is_stuck_the_next_run_says_so(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        ENDLESS
        + textwrap.dedent(
            """
            from dispatcher import DispatcherError, Op, TaskTimeoutError, get_executor, run

            with get_executor("mpi", retries=0) as ex:
                try:
                    ex.run(endless)
                except TaskTimeoutError as exc:
                    print("timed out:", exc, flush=True)
                # The same executor, whose only rank is stuck.
                result = ex.run(Op(abs, -1), throw=False)
                print("kept executor:", result.error, flush=True)
            # A new executor.
            try:
                run(Op(abs, -1), executor="mpi")
            except DispatcherError as exc:
                print("new executor:", exc, flush=True)
            """
        ),
    )
    done = job(2, program)
    assert "timed out: match('(a*)*b', 'aaa" in done.stdout, done.stderr[-3000:]
    for where in ("kept executor", "new executor"):
        found = re.search(
            where + r": no capacity left.*\n  rank-1: still running 'match'.* \(on host .*\)",
            done.stdout,
        )
        assert found, done.stdout
    assert done.returncode == 0, done.stderr[-3000:]


# -- a rank that dies ---------------------------------------------------------------------


def test_a_dead_rank_is_named_with_what_it_was_running(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        """
        import os, signal, time
        from dispatcher import Op, op, run

        def die():
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)

        run([op(die, label="the-killer")(), Op(time.sleep, 5)], executor="mpi")
        print("should not get here")
        """,
    )
    # Best effort: the clean-up may kill rank 0 and the watcher's line may be lost in its
    # forwarding. Every job must end; every line must be right; one in three must say it.
    named = 0
    for _ in range(3):
        done = job(3, program)
        assert done.returncode != 0
        assert "should not get here" not in done.stdout
        lines = [line for line in done.stderr.splitlines() if "dispatcher_mpi: lost" in line]
        assert len(lines) <= 1, done.stderr[-3000:]
        if lines:
            # Seen in time, the lost rank alone; seen late, with the ranks the clean-up
            # ended meanwhile.
            assert re.search(
                r"lost\b.*rank \d \(host .*, pid \d+\) while running 'the-killer'", lines[0]
            ), lines[0]
            named += 1
            break
    assert named, "no job named its lost rank"


def test_jobs_that_end_on_purpose_name_no_lost_rank(tmp_path: Path) -> None:
    for body in ("raise RuntimeError('x')", "import sys; sys.exit(3)", "print('fine')"):
        program = script(
            tmp_path, "from dispatcher import Op, run\nrun(Op(abs, -1), executor='mpi')\n" + body
        )
        done = job(3, program)
        assert "dispatcher_mpi: lost" not in done.stderr, (body, done.stderr[-3000:])


_BAD_SETTINGS = [
    *[
        ("DISPATCHER_MPI_CHUNK", v, "must be a whole number of bytes")
        for v in ("abc", "0", "-5", str(2**31))
    ],
    *[
        ("DISPATCHER_MPI_SILENCE_LIMIT", v, "must be the seconds")
        for v in ("abc", "0", "-5", "nan")
    ],
]


@pytest.mark.parametrize(("variable", "value", "says"), _BAD_SETTINGS)
def test_a_bad_setting_is_a_clear_error(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    program = script(tmp_path, "print('ran')\n")
    done = job(2, program, env={variable: value})
    assert done.returncode == 2
    assert "ran" not in done.stdout
    assert done.stderr.count(f"{variable} {says}") == 1
    assert "Traceback" not in done.stderr, done.stderr


def test_a_frozen_rank_with_an_untimed_task_is_given_up_on(tmp_path: Path) -> None:
    """A rank that says nothing with tasks out (here frozen; a host cut off from the
    network looks the same) is given up on after the silence limit: its task runs on
    another rank, the run ends, and so does the job."""
    program = script(
        tmp_path,
        f"""
        import os, signal
        from dispatcher import Op, run

        def freeze_once(i):
            try:
                os.mkdir({str(tmp_path / "frozen")!r})
            except FileExistsError:
                return i
            os.kill(os.getpid(), signal.SIGSTOP)  # the whole rank: its hub too
            return i

        print(run([Op(freeze_once, i) for i in range(4)], executor="mpi"), flush=True)
        """,
    )
    done = job(3, program, env={"DISPATCHER_MPI_SILENCE_LIMIT": "2"}, timeout=90)
    assert "[0, 1, 2, 3]" in done.stdout, done.stderr[-3000:]
    assert re.search(r"rank \d \(host .*, pid \d+\) silent for \d+ s with tasks out", done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_task_that_silences_every_rank_it_runs_on_ends_out_of_retries(tmp_path: Path) -> None:
    """Each attempt freezes its rank for 4 s (a task holding the GIL past the limit looks
    the same): each silence is charged, so the run ends once retries are spent, and the
    ranks, once they speak again, serve the next run."""
    program = script(
        tmp_path,
        """
        import os, signal, subprocess, sys, time
        from dispatcher import Op, WorkerLostError, get_executor

        def freeze_for(seconds):
            waker = f"import os, signal, time; time.sleep({seconds}); "
            waker += f"os.kill({os.getpid()}, signal.SIGCONT)"
            subprocess.Popen([sys.executable, "-c", waker])
            os.kill(os.getpid(), signal.SIGSTOP)
            return os.getpid()

        def pid_after(seconds):
            time.sleep(seconds)
            return os.getpid()

        with get_executor("mpi", retries=1) as ex:
            result = ex.run(Op(freeze_for, 4), throw=False)
            print("error:", type(result.error).__name__, result.error, flush=True)
            time.sleep(5)  # both ranks speak again
            print("ranks used after:", len(set(ex.run([Op(pid_after, 0.5) for _ in range(8)]))))
        """,
    )
    done = job(3, program, env={"DISPATCHER_MPI_SILENCE_LIMIT": "2"}, timeout=90)
    assert "error: WorkerLostError" in done.stdout, done.stderr[-3000:]
    assert "silent for" in done.stdout, done.stdout
    assert done.stderr.count("silent for") == 2, done.stderr[-3000:]  # once per attempt
    assert "ranks used after: 2" in done.stdout, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]


def test_rank_0_holding_the_gil_does_not_take_the_ranks_for_silent(tmp_path: Path) -> None:
    """While the program holds the GIL on rank 0, its hub hears nothing: the ranks'
    silence counts from when it runs again, so none is given up on for it."""
    program = script(
        tmp_path,
        """
        import re, threading, time
        from dispatcher import Op, get_executor

        with get_executor("mpi", retries=0) as ex:
            ran = []
            tasks = [Op(time.sleep, 2.0), Op(time.sleep, 2.0)]
            thread = threading.Thread(target=lambda: ran.append(ex.run(tasks)))
            thread.start()
            time.sleep(0.5)  # the tasks are out
            started = time.monotonic()
            re.match(r"(a*)*b", "a" * 26)  # holds the GIL for seconds, past the limit
            print(f"held the GIL for {time.monotonic() - started:.1f} s", flush=True)
            thread.join()
            print("ran:", ran, flush=True)
        """,
    )
    done = job(3, program, env={"DISPATCHER_MPI_SILENCE_LIMIT": "2"}, timeout=90)
    assert "ran: [[None, None]]" in done.stdout, done.stderr[-3000:]
    assert "silent for" not in done.stderr, done.stdout + done.stderr[-3000:]


# -- tasks that raise what ends a program -----------------------------------------------


@pytest.mark.parametrize(
    ("raise_it", "status", "says"),
    [
        ("import sys; sys.exit(4)", 4, ""),
        ("raise KeyboardInterrupt", 1, "KeyboardInterrupt"),
        ("raise Unprintable('hidden')", 1, "Unprintable"),
    ],
)
def test_a_task_raising_what_ends_a_program_ends_the_job_with_it(
    tmp_path: Path, raise_it: str, status: int, says: str
) -> None:
    program = script(
        tmp_path,
        f"""
        from dispatcher import Op, run

        class Unprintable(Exception):
            def __str__(self):
                raise RuntimeError("no message")

        def task():
            {raise_it}

        run(Op(task), executor="mpi")
        print("should not get here")
        """,
    )
    done = job(3, program)
    assert done.returncode == status, done.stderr[-3000:]
    assert "should not get here" not in done.stdout
    assert says in done.stderr
    assert "dispatcher_mpi: lost" not in done.stderr


# -- code a task leaves behind at the job's end ---------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "leave_behind",
    [
        "atexit.register(time.sleep, 1000)",
        "threading.Thread(target=time.sleep, args=(1000,), daemon=False).start()",
    ],
    ids=["atexit-hook", "non-daemon-thread"],
)
def test_code_a_task_leaves_behind_does_not_keep_the_job(tmp_path: Path, leave_behind: str) -> None:
    """A worker rank whose tasks left an atexit hook that waits, or a non-daemon thread,
    behind: the job still ends, with the program's status, naming the rank."""
    program = script(
        tmp_path,
        f"""
        import atexit, sys, threading, time
        from dispatcher import Op, run

        def task():
            {leave_behind}
            return 1

        assert run([Op(task) for _ in range(4)], executor="mpi") == [1, 1, 1, 1]
        sys.exit(3)
        """,
    )
    done = job(3, program, timeout=60)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "has not exited 5 s after the job's end" in done.stderr, done.stderr[-3000:]
    assert "BAD TERMINATION" not in done.stdout + done.stderr
