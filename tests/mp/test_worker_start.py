"""Worker start-up: replacements that fail or take long, initializers that hang, the
thread an executor is made in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mp_tasks
import pytest

import dispatcher_mp._process
from dispatcher import DispatcherError, Op, get_executor

pytestmark = pytest.mark.timeout(60)


def worker_pids(ex: Any, workers: int) -> set[int]:
    """The pids of all ``workers`` workers of ``ex``."""
    pids: set[int] = set()
    while len(pids) < workers:
        pids.update(ex.run([Op(mp_tasks.pid) for _ in range(8)]))
    return pids


def gone(pid: int) -> bool:
    psutil = pytest.importorskip("psutil")
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_replacement_that_cannot_start_ends_the_next_run_with_the_reason(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "broken"
    with get_executor(
        "mp", workers=1, initializer=mp_tasks.fail_if_exists, initargs=(str(marker),)
    ) as ex:
        (pid,) = worker_pids(ex, 1)
        marker.touch()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(DispatcherError, match=r"could not be restarted.*fails now"):
            ex.run(Op(mp_tasks.sleep_then, 0, "never"))


def test_a_slow_replacement_holds_up_neither_the_other_workers_nor_close(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "slow"
    with get_executor(
        "mp", workers=2, initializer=mp_tasks.hang_if_exists, initargs=(str(marker),)
    ) as ex:
        victim, survivor = sorted(worker_pids(ex, 2))
        marker.touch()
        os.kill(victim, signal.SIGKILL)
        while not marker.read_text():  # the replacement is in its initializer
            time.sleep(0.02)
        starting = int(marker.read_text())
        assert ex.run([Op(mp_tasks.pid) for _ in range(4)]) == [survivor] * 4
    assert gone(starting), "the replacement outlived the executor"


def test_a_hung_initializer_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(dispatcher_mp._process, "START_TIMEOUT", 2.0)
    marker = tmp_path / "hang"
    marker.touch()
    with pytest.raises(DispatcherError, match="initializer did not return within 2 s"):
        get_executor("mp", workers=1, initializer=mp_tasks.hang_if_exists, initargs=(str(marker),))
    assert gone(int(marker.read_text()))


def test_workers_outlive_the_thread_that_made_their_executor() -> None:
    made: dict[str, Any] = {}

    def make() -> None:
        made["ex"] = get_executor("mp", workers=1, start_method="spawn")
        made["pid"] = made["ex"].run(Op(mp_tasks.pid))

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    with made["ex"] as ex:
        time.sleep(0.5)  # a worker killed with its thread is noticed by now
        assert ex.run(Op(mp_tasks.pid)) == made["pid"]


def test_an_mp_executor_inside_an_mp_task_says_what_to_use_instead() -> None:
    with get_executor("mp", workers=1, retries=0) as ex:
        with pytest.raises(DispatcherError, match="executor='sync' or 'async'"):
            ex.run(Op(mp_tasks.nested_run, "mp"))
        assert ex.run(Op(mp_tasks.nested_run, "sync")) == 3


GUARDED_SCRIPT = """
from dispatcher import op, run

@op
def inc(x):
    return x + 1

if __name__ == "__main__":
    print(run(inc(1), executor="mp", workers=2{options}))
"""


def test_a_script_read_from_standard_input_is_told_why_workers_cannot_start() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-"],
        input=GUARDED_SCRIPT.format(options=""),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 1
    # Said before any worker starts: one message, not a traceback per worker, and not
    # "add the guard" to a script that has it.
    assert done.stderr.count("Traceback") == 1, done.stderr
    assert "guard" not in done.stderr
    assert "the main module was read from <stdin>, not from a file" in done.stderr
    assert "start_method='fork'" in done.stderr
    forked = subprocess.run(
        [sys.executable, "-"],
        input=GUARDED_SCRIPT.format(options=", start_method='fork'"),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert (forked.returncode, forked.stdout) == (0, "2\n"), forked.stderr


class _NeverReported:
    """A process whose exit is never reported (its forkserver is frozen): its
    ``exitcode`` stays ``None``, dead or not."""

    def __init__(self) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        self.pid = self.child.pid
        self.exitcode = None


@pytest.mark.timeout(60)
def test_killing_processes_whose_exit_is_never_reported_ends_once_they_are_dead() -> None:
    """Closing kills the workers still there and waits for their exits: with a frozen
    forkserver it waited the whole grace (five seconds), here an hour."""
    processes = [_NeverReported() for _ in range(4)]
    try:
        dispatcher_mp._process.kill_all(processes, grace=3600.0)
        # Dead, and not reaped by their parent (here, by nobody yet): zombies.
        assert all(p.child.poll() == -signal.SIGKILL for p in processes)
    finally:
        for process in processes:
            process.child.kill()
            process.child.wait()


@pytest.mark.timeout(30)
def test_more_workers_than_the_machine_can_start_is_refused_at_once() -> None:
    # It used to start processes until the machine ran out of them, saying nothing.
    with pytest.raises(ValueError, match=r"workers=1000000 is more than this machine allows"):
        get_executor("mp", workers=10**6)


def test_starting_many_workers_says_how_far_it_got(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dispatcher_mp._process, "STARTING_NOTICE", 0.0)
    with caplog.at_level("WARNING", logger="dispatcher.mp"), get_executor("mp", workers=3):
        pass
    said = [r.getMessage() for r in caplog.records if r.name == "dispatcher.mp"]
    assert said, "nothing was said while the workers started"
    assert said[0].startswith("starting 3 mp workers: 1 ready after"), said


# Makes the processes multiprocessing starts for the executor (the forkserver, or each
# worker under spawn) slow to import, as on a loaded machine: a Ctrl-C can come then.
SLOW_TO_IMPORT = """
import os, time
with open("/proc/self/cmdline", "rb") as cmdline:
    if {match!r} in cmdline.read():
        open(os.path.join({folder!r}, f"starting-{{os.getpid()}}"), "w").close()
        time.sleep(2)
"""

INTERRUPTED_AT_START = """
import sys, time
from dispatcher import Op, get_executor

def slow(x):
    time.sleep(3600)

if __name__ == "__main__":
    try:
        with get_executor("mp", workers=2, start_method=sys.argv[1]) as ex:
            ex.run([Op(slow, i) for i in range(2)])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


@pytest.mark.parametrize(
    ("start_method", "match"),
    [("forkserver", b"multiprocessing.forkserver"), ("spawn", b"--multiprocessing-fork")],
)
def test_a_ctrl_c_while_worker_processes_start_prints_no_traceback_from_them(
    tmp_path: Path, start_method: str, match: bytes
) -> None:
    # The forkserver (or a spawned worker) that was still importing took the Ctrl-C,
    # meant for the caller, and printed a KeyboardInterrupt traceback of its own.
    (tmp_path / "sitecustomize.py").write_text(
        SLOW_TO_IMPORT.format(match=match, folder=str(tmp_path))
    )
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_AT_START)
    out, err = tmp_path / "out", tmp_path / "err"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).parent)]))
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(script), start_method],
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,
            # A shell's background job ignores SIGINT; the child must see it as a terminal would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("starting-*")):
            assert time.monotonic() < deadline, "no process started"
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        child.wait(30)
        time.sleep(2.5)  # for what a slow process would still print
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert out.read_text() == "interrupted\n", err.read_text()
    assert "Traceback" not in err.read_text(), err.read_text()
