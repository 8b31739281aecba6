"""The mp executor's behaviour when things go wrong, and its data path."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import mp_tasks
import pytest

from dispatcher import Op, SerializationError, WorkerLostError, get_executor, hookimpl, op, run

pytestmark = pytest.mark.timeout(120)


def shm_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("dispatcher-")}


def children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def kill_once_started(marker: Path) -> tuple[threading.Thread, list[int]]:
    """A thread that SIGKILLs the worker whose pid a task writes to ``marker``."""
    killed: list[int] = []

    def watch() -> None:
        for _ in range(1000):
            if marker.exists() and marker.read_text():
                killed.append(int(marker.read_text()))
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, killed


def test_worker_killed_from_outside_is_replaced(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    before = Op(mp_tasks.pid)
    victim = op(mp_tasks.report_pid_then_sleep, label="victim")(str(marker), 2)
    with get_executor("mp", workers=2, retries=1) as ex:
        killer, killed = kill_once_started(marker)
        _, final_pid = ex.run([before, victim])
        killer.join()
        assert killed, "the task never started"
        assert final_pid != killed[0]  # it ran again, in the replacement
        # The executor stays usable after the loss.
        assert ex.run(Op(mp_tasks.sleep_then, 0, "still here")) == "still here"


def test_worker_lost_beyond_retries(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    victim = op(mp_tasks.report_pid_then_sleep, label="doomed")(str(marker), 30)
    with get_executor("mp", workers=1, retries=0) as ex:
        killer, _ = kill_once_started(marker)
        with pytest.raises(WorkerLostError, match="doomed") as info:
            ex.run(victim)
        killer.join()
        assert "SIGKILL" in str(info.value)
        assert ex.run(Op(mp_tasks.sleep_then, 0, 1)) == 1


@pytest.mark.timeout(60)
def test_a_task_that_replaces_its_workers_pipe_loses_that_worker_not_the_run() -> None:
    # Its result, and everything after, went to /dev/null: the caller waited for ever.
    clobber = op(mp_tasks.clobber_descriptors, label="clobber")(1)
    with get_executor("mp", workers=1, retries=1) as ex:
        with pytest.raises(WorkerLostError, match=r"clobber.*os.dup2\) its pipe"):
            ex.run(clobber)
        assert ex.run(Op(mp_tasks.sleep_then, 0, "still here")) == "still here"


def test_worker_killed_from_outside_fails_only_the_task_it_ran(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    victim = op(mp_tasks.report_pid_then_sleep, label="victim")(str(marker), 30)
    queued = [op(mp_tasks.sleep_then, label=f"queued{i}")(0, i) for i in range(3)]
    sent: list[str] = []

    class Sends:
        @hookimpl
        def dispatcher_task_started(self, node: Any, worker: str) -> None:
            sent.append(node.label)

    with get_executor("mp", workers=1, retries=0) as ex:
        killer, killed = kill_once_started(marker)
        results = ex.run([victim, *queued], throw=False, plugins=[Sends()])
        killer.join()
    assert killed, "the victim never started"
    # Something was queued behind the victim on the one worker when it was killed.
    assert sent.index("victim") < len(sent) - 1, sent
    assert isinstance(results[0].error, WorkerLostError)
    assert "SIGKILL" in str(results[0].error)
    assert [r.value for r in results[1:]] == [0, 1, 2], [r.error for r in results[1:]]


def test_worker_killed_from_outside_charges_the_task_it_ran_not_one_it_finished(
    tmp_path: Path,
) -> None:
    # `first` finishes on the worker; its completion waits to be sent with the victim's,
    # sent ahead behind it. Killed during the victim, the worker had started the victim.
    marker = tmp_path / "pid"
    first = op(mp_tasks.sleep_then, label="first")(0, 30)
    victim = op(mp_tasks.report_pid_then_sleep, label="victim")(str(marker), first)
    with get_executor("mp", workers=1, retries=0) as ex:
        killer, killed = kill_once_started(marker)
        results = ex.run([first, victim], throw=False)
        killer.join()
    assert killed, "the victim never started"
    assert results[0].value == 30, results[0].error
    assert isinstance(results[1].error, WorkerLostError)
    assert "victim" in str(results[1].error)


def test_a_worker_whose_death_is_not_reported_is_lost_at_the_end_of_its_pipe() -> None:
    # With the forkserver frozen, a worker's exit never reaches the caller (its exit
    # status travels through the forkserver): the end of its pipe has to say it.
    import psutil

    with get_executor("mp", workers=2, start_method="forkserver") as ex:
        pids = set(ex.run([Op(mp_tasks.pid, i) for i in range(8)]))
        forkserver = [
            p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())
        ]
        assert len(forkserver) == 1, forkserver
        forkserver[0].suspend()
        try:
            os.kill(min(pids), signal.SIGKILL)
            # The survivor runs them all (the replacement cannot start meanwhile).
            values = ex.run([op(mp_tasks.sleep_then, label=f"t{i}")(0.05, i) for i in range(4)])
            assert values == [0, 1, 2, 3]
        finally:
            forkserver[0].resume()


@pytest.mark.timeout(60)
def test_closing_with_the_forkserver_frozen_kills_it_rather_than_wait_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker lost while the forkserver is frozen: its replacement's start waits for the
    # forkserver for ever, and closing waited for that start (5 s; here, for ever).
    import psutil

    import dispatcher_mp._process

    monkeypatch.setattr(dispatcher_mp._process, "SPAWNER_STOP_WAIT", 3600.0)
    ex = get_executor("mp", workers=2, start_method="forkserver")
    try:
        pids = set(ex.run([Op(mp_tasks.pid, i) for i in range(8)]))
        forkserver = [
            p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())
        ]
        assert len(forkserver) == 1, forkserver
        forkserver[0].suspend()
        os.kill(min(pids), signal.SIGKILL)
        assert ex.run([Op(mp_tasks.sleep_then, 0.05, i) for i in range(4)]) == [0, 1, 2, 3]
    finally:
        ex.close()
    # Killed (it dies as soon as the kernel gets to it; multiprocessing reaps it later).
    while forkserver[0].is_running() and forkserver[0].status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    # The next executor starts a forkserver of its own.
    with get_executor("mp", workers=1, start_method="forkserver") as again:
        assert again.run(Op(abs, -3)) == 3


FROZEN_FORKSERVER_AT_EXIT = textwrap.dedent(
    """
    import os, signal
    from multiprocessing import forkserver
    from dispatcher import Op, get_executor

    if __name__ == "__main__":
        with get_executor("mp", workers=2, start_method="forkserver") as ex:
            assert ex.run([Op(abs, -i) for i in range(8)]) == list(range(8))
            frozen = forkserver._forkserver._forkserver_pid
            print(frozen, flush=True)
            os.kill(frozen, signal.SIGSTOP)
        print("closed", flush=True)
    """
)


@pytest.mark.timeout(90)
def test_a_program_that_closed_its_executor_with_the_forkserver_frozen_exits(
    tmp_path: Path,
) -> None:
    # The workers' exits travel through the forkserver: frozen, it never reported them,
    # and the interpreter's exit, which joins every process multiprocessing started,
    # waited for them for ever.
    script = tmp_path / "frozen_forkserver.py"
    script.write_text(FROZEN_FORKSERVER_AT_EXIT)
    out, err = tmp_path / "out", tmp_path / "err"
    # Into files: the processes left behind by a hang would hold pipes open.
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen([sys.executable, str(script)], stdout=stdout, stderr=stderr)
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    finally:
        forkserver = out.read_text().split()[:1]
        if forkserver:  # frozen by the program, and left if it hung
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(forkserver[0]), signal.SIGKILL)
    assert child.returncode == 0, (out.read_text(), err.read_text())
    assert out.read_text().split()[1:] == ["closed"]


@pytest.mark.parametrize("timeout", [2.2e6, 1e10, 1e308])
def test_a_timeout_of_years_is_a_valid_timeout(timeout: float) -> None:
    # Waiting for such a deadline overflowed poll() and killed the reader thread.
    with get_executor("mp", workers=1, timeout=timeout) as ex:
        assert ex.run([Op(mp_tasks.sleep_then, 0.05, i) for i in range(3)]) == [0, 1, 2]


def test_a_replacement_killed_while_it_starts_is_started_again() -> None:
    import psutil

    def workers() -> list[Any]:  # children of the forkserver
        found = []
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if "forkserver" in " ".join(child.cmdline()):
                    found.extend(child.children())
        return found

    with get_executor("mp", workers=1, start_method="forkserver") as ex:
        first = ex.run(Op(mp_tasks.pid))
        killed: list[int] = []

        def kill_the_replacement() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for p in workers():
                    if p.pid != first:
                        os.kill(p.pid, signal.SIGKILL)
                        killed.append(p.pid)
                        return
                time.sleep(0.002)

        killer = threading.Thread(target=kill_the_replacement)
        killer.start()
        os.kill(first, signal.SIGKILL)
        killer.join()
        assert killed, "no replacement was seen starting"
        # Once was an executor with no worker left, blaming the main module's guard.
        assert ex.run([Op(mp_tasks.sleep_then, 0, i) for i in range(3)]) == [0, 1, 2]
        assert ex.run(Op(mp_tasks.pid)) not in (first, killed[0])


def test_timeout_kills_and_replaces_the_worker() -> None:
    with get_executor("mp", workers=1) as ex:
        first = ex.run(Op(mp_tasks.pid))
        from dispatcher import TaskTimeoutError

        with pytest.raises(TaskTimeoutError):
            ex.run(op(mp_tasks.sleep_then, timeout=0.3)(60, None))
        assert ex.run(Op(mp_tasks.pid)) != first


def test_print_and_logging_reach_the_caller(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="dispatcher.tests"):
        assert (
            run(Op(mp_tasks.shout, "hello from a worker"), executor="mp", workers=1)
            == "hello from a worker"
        )
    out, _ = capfd.readouterr()
    assert "hello from a worker" in out
    assert "logged hello from a worker" in caplog.text


def test_initializer_runs_once_in_each_worker() -> None:
    with get_executor("mp", workers=2, initializer=mp_tasks.remember, initargs=("ready",)) as ex:
        results = ex.run([Op(mp_tasks.initialized) for _ in range(4)])
    assert all(r == ["ready"] for r in results)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"initializer": 5}, "initializer must be callable"),
        ({"initializer": print, "initargs": 5}, "initargs must be"),
    ],
)
def test_bad_initializer_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(TypeError, match=named):
        get_executor("mp", workers=1, **options)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"workers": True}, "workers must be a positive int, got True"),
        ({"workers": 0}, "workers must be a positive int, got 0"),
        ({"workers": 1, "prefetch": True}, "prefetch must be a non-negative int, got True"),
        ({"workers": 1, "prefetch": -1}, "prefetch must be a non-negative int, got -1"),
    ],
)
def test_bad_counts_are_named(options: dict[str, Any], named: str) -> None:
    # True was taken for one worker, while retries=True was refused.
    with pytest.raises(ValueError, match=named):
        get_executor("mp", **options)


def test_failing_initializer_is_reported() -> None:
    with pytest.raises(ZeroDivisionError):
        get_executor("mp", workers=1, initializer=divmod, initargs=(1, 0))


def test_large_arrays_travel_through_shared_memory_and_are_freed() -> None:
    pytest.importorskip("numpy")
    seen: list[str] = []

    class Where:
        @hookimpl
        def dispatcher_task_finished(self, node: object, worker: str) -> None:
            seen.append(f"{node}:{worker}")

    before = shm_entries()
    arrays = [Op(mp_tasks.array, 8, i) for i in range(4)]
    pairs = [Op(mp_tasks.array_sum, arrays[i], arrays[(i + 1) % 4]) for i in range(4)]
    total = Op(sum, pairs)
    with get_executor("mp", workers=2) as ex:
        assert ex.run(total, plugins=[Where()]) == 2 * sum(range(4)) * 8 * 1024 * 1024 / 8
        big = ex.run(arrays[0])
        assert big.nbytes == 8 * 1024 * 1024
        assert ex.run(Op(mp_tasks.shm_segments)) == 0  # released after the run
    assert shm_entries() == before


def test_small_dev_shm_falls_back_to_pipes(capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("numpy")
    arrays = [Op(mp_tasks.array, 4, i) for i in range(2)]
    with get_executor("mp", workers=2, initializer=mp_tasks.no_room_in_shm) as ex:
        assert ex.run(Op(mp_tasks.array_sum, *arrays)) == 4 * 1024 * 1024 / 8
        assert float(ex.run(arrays[1]).sum()) == 4 * 1024 * 1024 / 8
    _, err = capfd.readouterr()
    assert "shared memory unavailable" in err


def test_consumer_runs_where_its_big_input_is() -> None:
    pytest.importorskip("numpy")
    where: dict[str, str] = {}

    class Where:
        @hookimpl
        def dispatcher_task_started(self, node: object, worker: str) -> None:
            where[node.label] = worker  # type: ignore[attr-defined]

    big = op(mp_tasks.array, label="big")(16, 1)
    small = op(mp_tasks.array, label="small")(1, 1)
    consumer = op(mp_tasks.array_sum, label="consumer")(big, small)
    with get_executor("mp", workers=2) as ex:
        ex.run(consumer, plugins=[Where()])
    assert where["consumer"] == where["big"]


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from dispatcher import Op, run
    import mp_tasks

    print("ready", flush=True)
    try:
        run([Op(mp_tasks.array, 8, i) for i in range(2)]
            + [Op(mp_tasks.sleep_then, 3600, i) for i in range(4)], executor="mp", workers=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    """
)


def start_graph_child() -> tuple[subprocess.Popen[str], list[Any]]:
    """A child process running SCRIPT, once its workers are up and busy; and the workers."""
    import psutil

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        # A shell's background job ignores SIGINT; the child must see it as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while len(psutil.Process(child.pid).children(recursive=True)) < 2:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        time.sleep(1.0)  # let the tasks start
        return child, psutil.Process(child.pid).children(recursive=True)
    except BaseException:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        raise


@pytest.mark.parametrize("target", ["pid", "group"])
def test_sigint_stops_everything(target: str) -> None:
    psutil = pytest.importorskip("psutil")
    before = shm_entries()
    child, workers = start_graph_child()
    try:
        if target == "pid":
            os.kill(child.pid, signal.SIGINT)
        else:
            os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert "interrupted" in out
    assert "KeyboardInterrupt" in err
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert shm_entries() == before


def test_workers_exit_when_the_caller_is_killed() -> None:
    psutil = pytest.importorskip("psutil")
    before = shm_entries()
    child, workers = start_graph_child()
    try:
        child.kill()
        child.wait()
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"{len(alive)} processes outlived the caller"
        assert shm_entries() == before
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)


def test_a_task_with_thousands_of_inputs_on_other_workers() -> None:
    # Thousands of fetch requests once filled the pipes both ways while both ends were
    # blocked sending: the run hung. Fetches are now batched, and a worker's listening
    # thread never blocks on a send.
    parts = [Op(mp_tasks.sleep_then, 0, i) for i in range(5000)]
    with get_executor("mp", workers=2) as ex:
        assert ex.run(Op(mp_tasks.total, *parts)) == sum(range(5000))


def test_a_function_workers_cannot_import_is_named_with_the_fix(tmp_path: Path) -> None:
    with get_executor("mp", workers=1) as ex:
        # Made importable here only after the worker started: it cannot import it.
        (tmp_path / "only_here.py").write_text("def twice(x):\n    return 2 * x\n")
        sys.path.insert(0, str(tmp_path))
        try:
            import only_here  # type: ignore[import-not-found]

            with pytest.raises(SerializationError) as info:
                ex.run(Op(only_here.twice, 4))
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop("only_here", None)
        message = str(info.value)
        assert "twice" in message
        assert "No module named 'only_here'" in message
        assert "importable" in message
        assert "cannot be pickled" not in message
        # Named with its arguments, and the worker's traceback (all dispatcher's frames, no
        # user's) does not repeat the message.
        assert "the function of twice(4)" in message
        notes = getattr(info.value, "__notes__", [])
        assert notes == ["dispatcher: raised by node twice(4) on worker 'mp-0'"]
        assert ex.run(Op(mp_tasks.sleep_then, 0, "still serving")) == "still serving"


def test_a_nested_runs_failure_in_a_worker_names_both_nodes() -> None:
    """The failure note of a run nested in a worker's task travels back with the error,
    and stays beside the note of the caller's run (which started before it)."""
    with get_executor("mp", workers=1) as ex, pytest.raises(mp_tasks.Custom) as info:
        ex.run(Op(mp_tasks.nested_failing_run, "sync"))
    notes = [n for n in info.value.__notes__ if n.startswith("dispatcher: raised by")]
    assert len(notes) == 2, notes
    assert "raise_custom()" in notes[0]
    assert "nested_failing_run('sync') on worker 'mp-0'" in notes[1]


NEVER_CLOSED = """
import os
import sys

from dispatcher import Op, get_executor

if __name__ == "__main__":
    ex = get_executor("mp", workers=2)
    print(sorted(set(ex.run([Op(os.getpid), Op(os.getpid)]))) != [], flush=True)
"""


@pytest.mark.timeout(90)
def test_an_executor_never_closed_is_closed_quietly_at_exit(tmp_path: Path) -> None:
    """multiprocessing's exit handler, registered after dispatcher's, ran first and
    terminated the workers: the executor closing then warned of each as lost."""
    script = tmp_path / "never_closed.py"
    script.write_text(NEVER_CLOSED)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]
    assert done.stderr == ""


def test_a_ctrl_c_before_a_batch_is_sent_leaves_its_functions_to_be_sent_again() -> None:
    """The worker was counted as holding the function of a batch that a KeyboardInterrupt
    kept from being sent: every later task calling it failed there ("no function N")."""
    with get_executor("mp", workers=1) as ex:
        transport: Any = ex._transport
        pack = transport.shared_arguments.pack
        calls = []

        def interrupted(*args: Any) -> Any:
            calls.append(args)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return pack(*args)

        transport.shared_arguments.pack = interrupted
        numpy = pytest.importorskip("numpy")
        large = numpy.ones(1 << 18)  # packed apart from the batch: where Ctrl-C came
        with pytest.raises(KeyboardInterrupt):
            ex.run(Op(mp_tasks.array_sum, large))
        for _ in range(3):
            assert ex.run(Op(mp_tasks.array_sum, large)) == float(1 << 18)


REPLACEMENT_EXITS_ONCE = textwrap.dedent(
    """
    import os, signal, sys
    from dispatcher import Op, get_executor

    MARKER = sys.argv[1]
    if __name__ != "__main__" and os.path.exists(MARKER):
        os.unlink(MARKER)  # (imported in a worker starting: as a Ctrl-C there would)
        raise SystemExit(1)

    def pid(_):
        return os.getpid()

    if __name__ == "__main__":
        with get_executor("mp", workers=1) as ex:
            first = ex.run(Op(pid, 0))
            open(MARKER, "w").close()
            os.kill(first, signal.SIGKILL)
            print("next run:", ex.run(Op(pid, 1)) != first, flush=True)
    """
)


@pytest.mark.timeout(60)
def test_a_replacement_that_exits_while_it_starts_is_started_again(tmp_path: Path) -> None:
    # A Ctrl-C reaching a replacement while it imports the main module (it ignores
    # Ctrl-C only once it runs) gave the worker up for good, with a message blaming the
    # main module: the executor went on with one worker fewer, or none.
    script = tmp_path / "replacement_exits_once.py"
    script.write_text(REPLACEMENT_EXITS_ONCE)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "marker")],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert "next run: True" in done.stdout, done.stdout + done.stderr
    assert "the replacement of worker mp-0 exited while it started; starting another" in (
        done.stderr
    ), done.stderr
