"""Tasks the scheduler calls itself and tasks it submits follow one rule.

Each scenario runs twice on a one-worker fake transport: once with every task called in
the caller (the hot loop of the in-process executors), once with every task submitted to
the worker. Results and the sequence of hooks must be the same: one settle rule, one
retry budget, whichever way a task ran.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher import CollectNode, DataNode, IndexNode, Op, op
from dispatcher.testing import FakeTransport, Recorder, fake_executor, tasks

Scenario = Callable[[str], tuple[Any, dict[str, Any]]]
"""Given a directory for call markers: the targets, and the options of the run."""


def chain(log: str) -> tuple[Any, dict[str, Any]]:
    node = op(tasks.inc, label="link0")(0)
    for i in range(1, 20):
        node = op(tasks.inc, label=f"link{i}")(node)
    return node, {}


def diamond_and_fan_in(log: str) -> tuple[Any, dict[str, Any]]:
    top = op(tasks.inc, label="top")(1)
    left = op(tasks.double, label="left")(top)
    right = op(tasks.inc, label="right")(top)
    bottom = op(tasks.add, label="bottom")(left, right)
    leaves = [op(tasks.identity, label=f"leaf{i}")(i) for i in range(5)]
    total = op(tasks.total, label="total")(*leaves, bottom)
    return [bottom, total], {}


def shapes_and_constants(log: str) -> tuple[Any, dict[str, Any]]:
    data = DataNode({"a": [1, 2]})
    first = IndexNode(data, "a")
    described = op(tasks.describe, label="described")(
        first, [tasks.inc, Op(tasks.inc, 1)], key=Op(tasks.double, 3)
    )
    collected = CollectNode([first, described, DataNode(7)])
    return [collected, described], {}


def reduction_tree(log: str) -> tuple[Any, dict[str, Any]]:
    level = [op(tasks.identity, label=f"l0-{i}")(i) for i in range(16)]
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            op(tasks.add, label=f"l{depth}-{i}")(level[2 * i], level[2 * i + 1])
            for i in range(len(level) // 2)
        ]
    return level[0], {}


def random_dag(log: str) -> tuple[Any, dict[str, Any]]:
    rng = random.Random(7)
    nodes = [op(tasks.identity, label=f"n{i}")(i) for i in range(4)]
    for i in range(4, 40):
        picked = rng.sample(nodes, k=min(len(nodes), rng.randint(1, 3)))
        nodes.append(op(tasks.total, label=f"n{i}")(*picked))
    return nodes[-5:], {}


def inputs_given(log: str) -> tuple[Any, dict[str, Any]]:
    a = op(tasks.inc, label="a")(1)
    b = op(tasks.inc, label="b")(a)
    c = op(tasks.add, label="c")(b, a)
    return c, {"inputs": {b: 100}}


def failure_skips_downstream(log: str) -> tuple[Any, dict[str, Any]]:
    bad = op(tasks.fail, label="bad")("boom")
    after = op(tasks.inc, label="after")(bad)
    later = op(tasks.add, label="later")(after, op(tasks.inc, label="free")(1))
    fine = op(tasks.double, label="fine")(4)
    return [later, fine, bad], {"throw": False}


def failure_stops_the_run(log: str) -> tuple[Any, dict[str, Any]]:
    done_first = op(tasks.inc, label="done_first")(1)
    bad = op(tasks.fail, label="bad")("stop")
    never = op(tasks.inc, label="never")(bad)
    return [never, done_first], {}


def retried_then_succeeds(log: str) -> tuple[Any, dict[str, Any]]:
    # Its input is a constant: a worker may drop an input a task used last, and the retry
    # then recomputes it, which a task called in the caller never needs.
    flaky = op(tasks.flaky, label="flaky")(log, "flaky", 2, DataNode(1))
    return op(tasks.inc, label="after")(flaky), {"retry_on": ValueError, "retries": 2}


def retries_run_out(log: str) -> tuple[Any, dict[str, Any]]:
    hopeless = op(tasks.flaky, label="hopeless")(log, "hopeless", 5, 0)
    other = op(tasks.inc, label="other")(3)
    return [op(tasks.inc, label="after")(hopeless), other], {
        "retry_on": ValueError,
        "retries": 1,
        "throw": False,
    }


SCENARIOS: list[Scenario] = [
    chain,
    diamond_and_fan_in,
    shapes_and_constants,
    reduction_tree,
    random_dag,
    inputs_given,
    failure_skips_downstream,
    failure_stops_the_run,
    retried_then_succeeds,
    retries_run_out,
]


def _describe(value: Any) -> Any:
    """Results and errors in a form two runs can be compared by."""
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value))
    if isinstance(value, list):
        return [_describe(v) for v in value]
    if hasattr(value, "ok") and hasattr(value, "error"):
        return ("Result", _describe(value.value), _describe(value.error))
    return value


def _hooks(recorder: Recorder, constants: bool = True) -> list[tuple[Any, ...]]:
    """Every hook call, in order, without what differs by where a task ran (the worker's
    name, the time it took); without those of constants unless ``constants``."""
    seen = []
    for event in recorder.events:
        kind = event[0]
        if not constants and isinstance(event[1], DataNode):
            continue
        if kind in ("started", "finished"):
            seen.append((kind, event[1].label))
        elif kind == "failed":
            seen.append((kind, event[1].label, _describe(event[2])))
        elif kind == "retried":
            seen.append((kind, event[1].label, _describe(event[2]), event[3]))
        else:
            seen.append((kind, _describe(event[1])))
    return seen


def _run(scenario: Scenario, log: Path, in_caller: bool) -> tuple[Any, Recorder, FakeTransport]:
    log.mkdir()
    targets, options = scenario(str(log))
    run_options = {k: options.pop(k) for k in ("inputs", "throw") if k in options}
    transport = FakeTransport(workers=1, in_caller=(lambda func: True) if in_caller else None)
    recorder = Recorder()
    with fake_executor(transport, **options) as ex:
        try:
            outcome: Any = ex.run(targets, plugins=[recorder], **run_options)
        except Exception as exc:
            outcome = exc
    return _describe(outcome), recorder, transport


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_tasks_called_in_the_caller_and_submitted_ones_look_the_same(
    scenario: Scenario, tmp_path: Path
) -> None:
    # One log directory, emptied in between: messages name nodes with their arguments.
    log = tmp_path / "log"
    here, here_hooks, here_transport = _run(scenario, log, in_caller=True)
    log.rename(tmp_path / "caller")
    there, there_hooks, there_transport = _run(scenario, log, in_caller=False)
    # Every task ran in the caller, then every task but constants ran on the worker.
    assert here_transport.ran == []
    assert {e[2] for e in here_hooks.of("started")} == {"main"}
    submitted = [e[1].label for e in there_hooks.of("started") if e[2] != "main"]
    assert submitted
    assert submitted == [label for label, _ in there_transport.ran]
    assert here == there
    # The caller takes a constant when it reaches it on the ready stack: while a task is
    # out on a worker, that can be before the task's report. Everything else is in step.
    assert _hooks(here_hooks, constants=False) == _hooks(there_hooks, constants=False)
    assert sorted(map(repr, _hooks(here_hooks))) == sorted(map(repr, _hooks(there_hooks)))
