"""Shared memory when the caller is killed, and multiprocessing's resource tracker frozen:
nothing left in /dev/shm, nothing blocked."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def shm_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("dispatcher-")}


def janitors(prefix: str) -> list[int]:
    """The processes still alive that watch over segments named ``prefix...``."""
    psutil = pytest.importorskip("psutil")
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if prefix in " ".join(process.info["cmdline"] or ()):
            found.append(process.pid)
    return found


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL", "SIGKILL to its process group"])
def test_a_killed_caller_leaves_no_segment(how: str) -> None:
    # The caller writes a large DataNode into shared memory; killed, it cannot unlink it.
    kill = (
        "os.killpg(0, signal.SIGKILL)"  # the workers, and anything else in the group, too
        if how.endswith("group")
        else f"os.kill(os.getpid(), signal.{how})"
    )
    code = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from dispatcher import DataNode, Op, get_executor

        if __name__ == "__main__":
            with get_executor("mp", workers=1) as ex:
                data = DataNode(np.ones(2**20))  # held: its segment stays for reuse
                ex.run(Op(len, data))
                print(sorted(n for n in os.listdir("/dev/shm")
                             if n.startswith(f"dispatcher-{{os.getpid()}}-")), flush=True)
                {kill}
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # its process group is its own
    )
    segments = eval(done.stdout.strip().splitlines()[0])  # a list of names, printed
    assert segments, done.stdout + done.stderr  # else nothing is tested
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(segments) & shm_entries():
        time.sleep(0.1)
    assert not set(segments) & shm_entries()
    prefix = segments[0].rsplit("-", 2)[0] + "-"
    while time.monotonic() < deadline and janitors(prefix):
        time.sleep(0.1)
    assert not janitors(prefix), "the janitor outlived its work"


FROZEN_TRACKER = textwrap.dedent(
    """
    import os, signal
    import numpy as np
    from multiprocessing import resource_tracker
    from dispatcher import Op, get_executor

    if __name__ == "__main__":
        with get_executor("mp", workers=1) as ex:
            ex.run(Op(len, np.ones(10)))
            tracker = resource_tracker._resource_tracker._pid  # started with the workers
            print(tracker, flush=True)
            os.kill(tracker, signal.SIGSTOP)
            # Each run writes its large argument to a segment: told to the tracker, these
            # filled its pipe after some 460 runs, and the caller blocked for ever.
            for i in range(1000):
                assert ex.run(Op(len, np.full(2**16, i))) == 2**16
            # A worker lost is replaced: starting a process speaks to the tracker too.
            os.kill(ex.run(Op(os.getpid)), signal.SIGKILL)
            assert ex.run([Op(len, np.ones(3)) for _ in range(4)]) == [3] * 4
        print("done", flush=True)
    """
)


def test_a_frozen_resource_tracker_blocks_nothing(tmp_path: Path) -> None:
    # Files, not pipes: the frozen tracker holds the caller's stdout and stderr open.
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", FROZEN_TRACKER],
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    tracker = None
    try:
        deadline = time.monotonic() + 60
        while not out.read_text() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        tracker = int(out.read_text().split()[0])
        child.wait(timeout=90)
        assert child.returncode == 0, err.read_text()
        assert out.read_text().split()[1:] == ["done"], err.read_text()
    finally:
        if tracker is not None:
            os.kill(tracker, signal.SIGCONT)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


DAEMON = textwrap.dedent(
    """
    import multiprocessing.forkserver, os, sys, time
    from multiprocessing import resource_tracker
    from dispatcher import Op, get_executor

    def start_daemon(path):
        if os.fork() == 0:  # a daemon: a session of its own, outliving the task
            os.setsid()
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
            os._exit(0)
        return 1

    if __name__ == "__main__":
        with get_executor("mp", workers=1) as ex:
            assert ex.run(Op(start_daemon, sys.argv[1])) == 1
            helpers = [
                multiprocessing.forkserver._forkserver._forkserver_pid,
                resource_tracker._resource_tracker._pid,
            ]
        print(*helpers, flush=True)
    """
)


def test_a_daemon_a_task_started_keeps_no_helper_process_alive(tmp_path: Path) -> None:
    # It inherited the worker's pipes to multiprocessing's forkserver and resource
    # tracker, which wait for them to close to end: both outlived the program, orphaned.
    psutil = pytest.importorskip("psutil")
    daemon_file, out, err = tmp_path / "daemon", tmp_path / "out", tmp_path / "err"
    # Files, not pipes: the daemon holds the program's stdout and stderr.
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", DAEMON, str(daemon_file)], stdout=stdout, stderr=stderr
        )
    try:
        assert child.wait(timeout=60) == 0, err.read_text()
        pids = [int(pid) for pid in out.read_text().split()]
        helpers = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
        _, alive = psutil.wait_procs(helpers, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if child.poll() is None:
            child.kill()
        deadline = time.monotonic() + 10
        while not daemon_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if daemon_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(daemon_file.read_text()), signal.SIGKILL)
