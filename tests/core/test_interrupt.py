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
    out, err, returncode = interrupted(SCRIPT, executor, options)
    assert "interrupted" in out
    assert "KeyboardInterrupt" in err
    assert returncode != 0


# Coroutines that clean up when cancelled and return, as is usual.
CLEANS_UP = textwrap.dedent(
    """
    import asyncio, sys
    from dispatcher import Op, run

    async def work(i):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "cleaned up"

    print("ready", flush=True)
    try:
        print(run([Op(work, i) for i in range(3)], executor=sys.argv[1]), flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["sync", "async"])
def test_ctrl_c_in_a_coroutine_that_cleans_up_still_stops_the_run(executor: str) -> None:
    # On sync, asyncio took the Ctrl-C for the coroutine's cancellation alone: the first
    # one returned "cleaned up", and the run went on to the next for an hour.
    out, err, returncode = interrupted(CLEANS_UP, executor)
    assert "interrupted" in out, (out, err)
    assert "KeyboardInterrupt" in err
    assert returncode != 0


# Coroutines that block the loop (a blocking call where an await belongs, a common slip).
BLOCKS_THE_LOOP = textwrap.dedent(
    """
    import sys, time
    from dispatcher import Op, get_executor

    async def work(i):
        time.sleep(3600)

    print("ready", flush=True)
    try:
        with get_executor(sys.argv[1], **eval(sys.argv[2])) as ex:
            ex.run([Op(work, i) for i in range(3)])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("executor", "options"),
    [
        ("sync", "{}"),
        ("async", "{'threads': 2}"),
        ("async", "{'threads': 0}"),
        ("async", "{'backend': 'trio'}"),
    ],
)
def test_one_ctrl_c_stops_a_coroutine_blocking_the_loop_and_says_nothing_else(
    executor: str, options: str
) -> None:
    # On sync, the Ctrl-C waited for the coroutine's next await (an hour here). On async,
    # the run stopped, but asyncio printed "Task exception was never retrieved" with a
    # second traceback, and the next task's coroutine ran its first step (an hour too).
    out, err, returncode = interrupted(BLOCKS_THE_LOOP, executor, options)
    assert "interrupted" in out, (out, err)
    assert returncode == 0
    assert err == ""


# A function that blocks once it is proven tiny, and a coroutine that makes a run need a loop.
BLOCKS_WHEN_TOLD = textwrap.dedent(
    """
    import time
    import anyio
    from dispatcher import Op, get_executor, op

    def step(mode):
        if mode == "block":
            time.sleep(3600)
        return mode

    async def coroutine():
        await anyio.sleep(0)
    """
)

ON_A_LOOP = BLOCKS_WHEN_TOLD + textwrap.dedent(
    """

    with get_executor("async", threads=2, backend=BACKEND) as ex:
        while not ex._loop_transport.tiny.allows(step):
            ex.run([Op(step, "fast") for _ in range(12)])
        print("ready", flush=True)
        try:
            # step blocks the loop (no timeout), or a thread while the loop waits
            ex.run([Op(coroutine), op(step, timeout=TIMEOUT)("block")])
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("where", ["on the loop", "in a thread"])
def test_ctrl_c_interrupts_a_run_on_a_loop(backend: str, where: str) -> None:
    """Whether a tiny function turned slow blocks the loop, or a call in a thread keeps
    the loop waiting (a timeout sends it there), Ctrl-C interrupts the run."""
    timeout = "None" if where == "on the loop" else "3600"
    script = ON_A_LOOP.replace("BACKEND", repr(backend)).replace("TIMEOUT", timeout)
    out, err, returncode = interrupted(script)
    assert "interrupted" in out, err
    assert "KeyboardInterrupt" in err
    assert returncode != 0


def interrupted(script: str, *args: str) -> tuple[str, str, int]:
    """Run ``script`` in a child; once it prints "ready" and its call has had time to
    start, send it SIGINT as Ctrl-C would. Its output, errors and exit status."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT; the child must see it as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # let the call start
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=50)
    finally:
        if child.poll() is None:  # never leave a stuck child behind
            child.kill()
            child.wait()
    return out, err, child.returncode


IN_THE_USERS_LOOP = BLOCKS_WHEN_TOLD + textwrap.dedent(
    """

    async def main():
        with get_executor("async", threads=2) as ex:
            while not ex._loop_transport.tiny.allows(step):
                await ex.arun([Op(step, "fast") for _ in range(12)])
            print("ready", flush=True)
            try:
                await ex.arun([Op(coroutine), op(step)("block")])  # step blocks the loop
            except BaseException as exc:
                print("stopped by", type(exc).__name__, flush=True)
                raise

    anyio.run(main, backend=BACKEND)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_one_ctrl_c_interrupts_a_task_blocking_the_users_own_loop(backend: str) -> None:
    """Inside the user's own ``asyncio.run``, the runner answers Ctrl-C by cancelling its
    main task, which a function proven tiny that turned blocking on the loop never
    notices: one Ctrl-C must still stop it, as it does under trio."""
    out, err, returncode = interrupted(IN_THE_USERS_LOOP.replace("BACKEND", repr(backend)))
    assert "stopped by" in out, err
    assert "KeyboardInterrupt" in err
    assert returncode != 0


BLOCKING_RUN_IN_A_COROUTINE = textwrap.dedent(
    """
    import sys, threading
    import anyio
    from dispatcher import Op, run

    release = threading.Event()

    def waits(x):
        release.wait(60)  # (not interrupted: the run outlives the test's timeout)
        return x

    async def main():
        print("ready", flush=True)
        try:
            run([Op(waits, i) for i in range(4)], executor=sys.argv[1])
        except BaseException as exc:
            print("stopped by", type(exc).__name__, flush=True)
            release.set()
            raise

    anyio.run(main, backend=sys.argv[2])
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("executor", ["async", "sync"])
def test_one_ctrl_c_stops_a_blocking_run_called_in_a_coroutine(backend: str, executor: str) -> None:
    """``run()`` (not ``arun``) in the user's coroutine blocks the loop: asyncio's runner
    answers Ctrl-C by cancelling its main task, which that call never notices."""
    out, err, returncode = interrupted(BLOCKING_RUN_IN_A_COROUTINE, executor, backend)
    assert "stopped by KeyboardInterrupt" in out, err
    assert returncode != 0


def test_asyncio_gets_its_own_ctrl_c_handler_back_after_a_run() -> None:
    """While a run is driven on the loop of ``asyncio.run`` its Ctrl-C handler is wrapped;
    after it, the runner finds its own, so that it restores the default at its end."""
    import asyncio

    from dispatcher import Op, get_executor

    async def handler_now() -> object:
        return signal.getsignal(signal.SIGINT)

    async def main() -> tuple[object, list[object], object]:
        with get_executor("async", threads=2) as ex:
            before = signal.getsignal(signal.SIGINT)
            during = await asyncio.gather(*(ex.arun(Op(handler_now)) for _ in range(3)))
            return before, during, signal.getsignal(signal.SIGINT)

    before, during, after = asyncio.run(main())
    assert all(handler is not before for handler in during)
    assert after is before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
