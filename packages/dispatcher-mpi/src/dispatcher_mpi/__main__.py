"""``mpiexec -n N python -m dispatcher_mpi script.py [args...]`` (or ``-m module``,
``-c code``): rank 0 runs the program, ranks 1..N-1 serve as workers until it ends."""

from __future__ import annotations

import atexit
import faulthandler
import math
import os
import runpy
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import Any

from dispatcher.remote import ctrl_c_held

from . import _early_ctrl_c

USAGE = """usage: mpiexec -n N python -m dispatcher_mpi (script.py | -m module | -c code) [args...]

Runs the program on rank 0; ranks 1..N-1 serve as workers for run(..., executor="mpi").
"""


def _parse(argv: list[str]) -> tuple[str, str, list[str]]:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        raise SystemExit(0 if argv else 2)
    if argv[0] in ("-m", "-c"):
        if len(argv) < 2:
            sys.stderr.write(USAGE)
            raise SystemExit(2)
        kind = "module" if argv[0] == "-m" else "code"
        rest = [argv[0] if kind == "code" else argv[1], *argv[2:]]
        return kind, argv[1], rest
    return "path", argv[0], argv


def _program_dir(kind: str, target: str) -> str:
    return os.path.dirname(os.path.abspath(target)) if kind == "path" else os.getcwd()


def main() -> None:
    kind, target, argv = _parse(sys.argv[1:])
    # The program's directory is importable on every rank, as `python script.py` makes it.
    sys.path.insert(0, _program_dir(kind, target))

    # Ctrl-C before every rank has its MPI segments and has unlinked their names would
    # leave them in /dev/shm: it is raised once they are gone.
    came_early = _early_ctrl_c.release()
    with ctrl_c_held() as interrupted:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            if comm.Get_rank() == 0:
                sys.stderr.write(
                    "dispatcher_mpi needs an MPI with MPI_THREAD_SERIALIZED or "
                    "better; this one offers less\n"
                )
            comm.Abort(2)
        # dispatcher's messages go on a communicator of their own: a task's own use of
        # COMM_WORLD (a receive from any rank, say) never sees them, nor they its.
        comm = comm.Dup()
        from ._channel import FINALIZE_WAIT, abort_job, finalize
        from ._segments import unlink_own_segments

        _check_environment(comm)

        # Every rank's host and pid, so that rank 0 can say where a rank it lost ran. Having
        # returned, it also means every rank is past MPI_Init: the segments can lose their names.
        peers = comm.allgather((MPI.Get_processor_name(), os.getpid()))
        unlink_own_segments()
        if came_early or interrupted():
            _interrupted_while_starting(comm)

    if comm.Get_rank() != 0:
        from . import _transport
        from ._worker import WorkerRank

        _transport.IN_WORKER_RANK = True

        # A task that crashes the interpreter (a segfault in C code) shows where it was.
        faulthandler.enable()
        # Ctrl-C (mpiexec passes it to every rank) is rank 0's to act on: its program may
        # catch it and go on, or save its work first; the ranks stop when it says so.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        try:
            WorkerRank(comm, peers).serve()
        except BaseException:
            abort_job(comm, traceback.format_exc(), 1)
        _exit_within(EXIT_GRACE, comm.Get_rank(), peers[comm.Get_rank()])
        # Now, not at exit: code a task left behind runs before the interpreter's own
        # finalisation, and the rank must have said its goodbye to MPI if it is ended.
        finalize(comm)
        return

    from ._transport import Root, install_root

    root = Root(comm, peers)
    install_root(root)
    root.start()
    sys.argv = argv
    # After the program's own exit hooks (registered later, so run first): MPI is
    # finalised at exit, as it would be without dispatcher.
    atexit.register(_finalize_within, math.ceil(FINALIZE_WAIT))
    MPI.Finalize = _finalized_at_the_end  # a common habit, which would stop the hub
    status = _run_program(comm, kind, target)
    _join_program_threads()  # the program ends with them, as any Python program does
    try:
        with ctrl_c_held():
            # The open mpi executor's work is dropped and the worker ranks stop; other
            # executors close at interpreter exit as anywhere else.
            stuck = root.stop()
    except KeyboardInterrupt:  # the job ends all the same, and says it was interrupted
        status = status or 130
    install_root(None)
    _end_rank_0(comm, stuck, status)


def _check_environment(comm: Any) -> None:
    """End the job, rank 0 saying why, if a ``DISPATCHER_MPI_*`` variable is bad."""
    from ._channel import chunk_limit
    from ._silence import root_silence_limit, silence_limit

    try:
        chunk_limit()
        silence_limit()
        root_silence_limit()
    except ValueError as exc:
        # Every rank reads the same environment: each stops, rank 0 says why.
        if comm.Get_rank() == 0:
            sys.stderr.write(f"dispatcher_mpi: {exc}\n")
        raise SystemExit(2) from None


def _interrupted_while_starting(comm: Any) -> None:
    """Ctrl-C came before the program started: every rank (``mpiexec`` passed it to
    each) ends with the status of an interrupted program, and rank 0 says so."""
    if comm.Get_rank() == 0:
        sys.stderr.write("dispatcher_mpi: interrupted (Ctrl-C) before the program started\n")
    raise SystemExit(130)


def _end_rank_0(comm: Any, stuck: str | None, status: int) -> None:
    """The program is over with ``status``, the worker ranks stopped but for ``stuck``
    (why some did not): end the job."""
    from ._channel import abort_job, discard_unreceived

    sys.stdout.flush()
    sys.stderr.flush()
    if stuck is not None:
        abort_job(comm, stuck, status)
    discard_unreceived(comm)  # every rank said goodbye: what none received is late
    # Every rank has stopped cleanly, so the job can end the ordinary way: MPI is finalized
    # at exit and the launcher reports the highest status of its ranks. (MPI_Abort would
    # also carry the status, but it can cut off output still on its way to the launcher,
    # and srun turns it into 137.)
    if status:
        raise SystemExit(status)


def _finalize_within(seconds: int) -> None:
    """The last exit hook: ``MPI_Finalize`` comes next (mpi4py's, once Python is done),
    and waits for the process manager, for ever when it is out of reach (this host cut
    off from the network). The kernel's alarm, which needs no Python, then ends rank 0.
    (Not where the program handles SIGALRM itself.)"""
    if signal.getsignal(signal.SIGALRM) is signal.SIG_DFL:
        signal.alarm(seconds)


def _finalized_at_the_end() -> None:
    """``MPI.Finalize()`` on rank 0 under ``python -m dispatcher_mpi``: MPI is finalised
    when the job ends, after the worker ranks stop; finalised sooner, rank 0 could no
    longer reach them, and the job would hang."""
    warnings.warn(
        "MPI.Finalize() is left to dispatcher_mpi, which finalizes MPI when the job ends",
        RuntimeWarning,
        stacklevel=2,
    )


def _join_program_threads() -> None:
    """Wait for the threads the program started and left running (not daemon threads):
    Python ends a program once they end, and they may still run graphs on the ranks."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()


EXIT_GRACE = 5.0
"""How long a worker rank may take to exit once the job is over (seconds)."""


def _exit_within(seconds: float, rank: int, where: tuple[str, int]) -> None:
    """The job is over and this worker rank exits: the interpreter joins non-daemon
    threads and runs ``atexit`` hooks, which tasks may have left behind (a thread that
    never ends, a hook that waits), and ``mpiexec`` would wait for them for ever. Past
    ``seconds``, say so and end the rank; its MPI is finalised by then, so the job's
    status stays the program's."""
    from dispatcher.remote import start_thread

    def watch() -> None:
        time.sleep(seconds)
        os.write(
            2,
            (
                f"dispatcher_mpi: rank {rank} (host {where[0]}, pid {where[1]}) has not "
                f"exited {seconds:g} s after the job's end: code a task left behind (a "
                "non-daemon thread, an atexit hook) still runs there; ending it\n"
            ).encode("utf-8", "replace"),
        )
        os._exit(0)

    start_thread("dispatcher-mpi-exit", watch, lambda exc: os._exit(1))


def _run_program(comm: Any, kind: str, target: str) -> int:
    """Run the user's program on rank 0; its exit status. An exception it does not catch
    ends the whole job: one failing rank must not leave the others waiting."""
    try:
        if kind == "path":
            runpy.run_path(target, run_name="__main__")
        elif kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write(f"{code}\n")
        return 1
    except BaseException as exc:
        from ._channel import abort_job

        abort_job(
            comm,
            _program_traceback(exc)
            + "dispatcher_mpi: the program on rank 0 failed; ending the job\n",
            1,
        )
    return 0


def _program_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as ``python script.py`` would show it: from the program's code,
    without the frames of this launcher and of runpy above it."""
    tb = exc.__traceback__
    # This file runs as __main__, as the program does: tell them apart by file.
    while tb is not None and (
        tb.tb_frame.f_code.co_filename == __file__
        or tb.tb_frame.f_globals.get("__name__") == "runpy"
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


if __name__ == "__main__":
    main()
