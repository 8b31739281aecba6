"""The caller's deadlines of running dask tasks: each expires once, in order, unless it
was discarded; a thread that dies hands over and is replaced."""

from __future__ import annotations

import queue
import time

import pytest

from dispatcher_dask._deadlines import Deadlines

pytestmark = pytest.mark.timeout(30)


class Task:
    def __init__(self, name: str) -> None:
        self.name = name


def test_deadlines_expire_in_order_and_discarded_ones_never() -> None:
    expired: queue.Queue[str] = queue.Queue()
    deadlines: Deadlines[Task] = Deadlines(lambda t: expired.put(t.name), lambda e: None)
    late, early, dropped = Task("late"), Task("early"), Task("dropped")
    deadlines.add(late, 0.3)
    deadlines.add(dropped, 0.1)
    deadlines.add(early, 0.05)  # earlier than the one the thread waits for: it wakes
    deadlines.discard(dropped)
    # A retry is a new task under the same key: the old one's deadline is not its own.
    retry = Task("late")
    deadlines.add(retry, 60)
    assert [expired.get(timeout=10), expired.get(timeout=10)] == ["early", "late"]
    deadlines.close()
    assert expired.empty()


def test_a_dying_thread_hands_over_and_the_next_deadline_starts_another() -> None:
    died: queue.Queue[BaseException] = queue.Queue()
    expired: queue.Queue[str] = queue.Queue()
    calls = iter([SystemExit("boom")])

    def expire(task: Task) -> None:
        failure = next(calls, None)
        if failure is not None:
            raise failure
        expired.put(task.name)

    deadlines: Deadlines[Task] = Deadlines(expire, died.put)
    deadlines.add(Task("first"), 0.01)
    assert isinstance(died.get(timeout=10), SystemExit)
    deadlines.add(Task("second"), 0.01)
    assert expired.get(timeout=10) == "second"
    deadlines.close()


def test_a_deadline_years_away_keeps_the_thread_and_the_nearer_ones() -> None:
    """A valid timeout past ``threading.TIMEOUT_MAX`` (``1e10`` s) used to kill the
    thread with an OverflowError, failing every timed task as lost."""
    died: queue.Queue[BaseException] = queue.Queue()
    expired: queue.Queue[str] = queue.Queue()
    deadlines: Deadlines[Task] = Deadlines(lambda t: expired.put(t.name), died.put)
    deadlines.add(Task("years"), 1e10)
    deadlines.add(Task("soon"), 0.2)
    assert expired.get(timeout=10) == "soon"
    deadlines.close()
    assert died.empty(), died.get()


def test_a_deadline_missed_while_the_caller_did_not_run_waits_for_the_reports() -> None:
    # The deadlines' thread cannot wake while the test holds its lock, as if the caller
    # were stopped: back, it must leave the client time to read what arrived meanwhile (a
    # completion in time, discarding the deadline) before judging.
    expired: queue.Queue[str] = queue.Queue()
    deadlines: Deadlines[Task] = Deadlines(lambda t: expired.put(t.name), lambda e: None)
    reported, late = Task("reported"), Task("late")
    deadlines.add(reported, 0.05)
    deadlines.add(late, 0.06)
    with deadlines._wake:
        time.sleep(1.5)  # the thread's wait ends, and it cannot go on
    time.sleep(0.05)  # the client's thread reads the completion
    deadlines.discard(reported)
    assert expired.get(timeout=10) == "late"  # judged all the same, after the grace
    deadlines.close()
    assert expired.empty()
