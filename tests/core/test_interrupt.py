"""Ctrl-C around run(): outstanding work is abandoned and KeyboardInterrupt surfaces."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from dispatcher import Op, run

    def slow(x):
        time.sleep(3600)

    print("ready", flush=True)
    try:
        run([Op(slow, i) for i in range(3)], executor=sys.argv[1], **eval(sys.argv[2]))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("executor", "options"),
    [("sync", "{}"), ("async", "{'threads': 2}"), ("async", "{'threads': 0}")],
)
def test_sigint_interrupts_a_run(executor: str, options: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, executor, options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT; the child must see it as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # let the task start
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=50)
    finally:
        if child.poll() is None:  # never leave a stuck child behind
            child.kill()
            child.wait()
    assert "interrupted" in out
    assert "KeyboardInterrupt" in err
    assert child.returncode != 0
