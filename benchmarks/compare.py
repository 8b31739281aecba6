"""Two versions of dispatcher, side by side in one benchmark run.

    python benchmarks/compare.py BASE [NEW] [--executors sync,async0,async,mp,mpi]
                                 [--workloads W1,W2,W3,W4] [--rounds 5] [--repeat 3] [--quick]

BASE and NEW are git revisions (NEW defaults to the working tree, uncommitted changes
included). Each version is installed into a virtual environment of its own (kept under
``benchmarks/.venvs``, one per commit, so a second comparison starts at once), and this
checkout's ``run.py`` measures both with the same workloads. The versions take turns,
round after round, with the order swapped each round, so whatever else the machine does
weighs on both alike. Prints, per workload and executor, the median over rounds of each
version's build + run time and the ratio NEW / BASE (below 1: NEW is faster); then the
same for the caller's CPU time per task of the run (all its threads), which a loaded
machine disturbs far less than wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"
PACKAGES = ("dispatcher-core", "dispatcher-mp", "dispatcher-mpi[mpich]", "dispatcher-dask")
TOOLS = ("numpy", "psutil")


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def _install(venv: Path, tree: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # Each tree's backends pin the core beside them: install them all in one command
    # (those the tree has: dispatcher-dask is younger than the others).
    paths = [
        str(tree / "packages" / name)
        for name in PACKAGES
        if (tree / "packages" / name.split("[")[0]).is_dir()
    ]
    subprocess.run([*pip, *paths, *TOOLS], check=True)


def prepare(revision: str | None) -> tuple[str, Path]:
    """A virtual environment with ``revision`` installed (None: the working tree)."""
    if revision is None:
        name = "working-tree"
        venv = VENVS / name
        shutil.rmtree(venv, ignore_errors=True)  # uncommitted changes: never reuse
        _install(venv, ROOT)
        return name, venv
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    venv = VENVS / commit[:12]
    if not (venv / "bin" / "python").exists():
        with tempfile.TemporaryDirectory() as scratch:
            tree = Path(scratch) / "tree"
            _git("worktree", "add", "--detach", str(tree), commit)
            try:
                _install(venv, tree)
            finally:
                _git("worktree", "remove", "--force", str(tree))
    return f"{revision} ({commit[:9]})", venv


WALL, CPU = "build + run s", "caller CPU us/task"


def measure(venv: Path, args: argparse.Namespace) -> dict[tuple[str, str, str], float]:
    """One run of ``run.py`` in ``venv``: per (metric, workload, runner), build + run
    seconds (``WALL``) and the caller's CPU microseconds per task of the run (``CPU``)."""
    command = [
        str(venv / "bin" / "python"),
        str(HERE / "run.py"),
        "--executors",
        args.executors,
        "--peers",
        "",
        "--workloads",
        args.workloads,
        "--mpi-workloads",
        args.workloads,
        "--repeat",
        str(args.repeat),
        "--json",
        *(["--quick"] if args.quick else []),
    ]
    # Outside the checkout, so `import dispatcher` finds the venv's copy, not the tree's.
    done = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"run.py failed in {venv}")
    times = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if "skipped" not in row and row["runner"].startswith("dispatcher"):
                times[(WALL, row["workload"], row["runner"])] = row["build"] + row["run"]
                if "cpu" in row:
                    times[(CPU, row["workload"], row["runner"])] = row["cpu"] / row["tasks"] * 1e6
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="git revision to compare against")
    parser.add_argument("new", nargs="?", help="git revision (default: the working tree)")
    parser.add_argument("--executors", default="sync,async0,async,mp,mpi")
    parser.add_argument("--workloads", default="W1,W2,W3,W4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions inside each run")
    parser.add_argument("--quick", action="store_true", help="workloads about 10x smaller")
    args = parser.parse_args()
    VENVS.mkdir(exist_ok=True)
    versions = [prepare(args.base), prepare(args.new)]
    samples: list[dict[tuple[str, str, str], list[float]]] = [{}, {}]
    for round_number in range(args.rounds):
        order = (0, 1) if round_number % 2 == 0 else (1, 0)
        for which in order:
            name, venv = versions[which]
            print(f"round {round_number + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            for key, seconds in measure(venv, args).items():
                samples[which].setdefault(key, []).append(seconds)
    base_name, new_name = versions[0][0], versions[1][0]
    print(f"\nmedian of {args.rounds} rounds, each the median of {args.repeat} repetitions\n")
    keys = sorted(set(samples[0]) | set(samples[1]))
    for metric in (WALL, CPU):
        print(f"\n| workload | runner | {base_name} {metric} | {new_name} {metric} | new / base |")
        print("|---|---|---:|---:|---:|")
        for key in (k for k in keys if k[0] == metric):
            old, new = samples[0].get(key), samples[1].get(key)
            old_text = f"{statistics.median(old):.4f}" if old else "-"
            new_text = f"{statistics.median(new):.4f}" if new else "-"
            ratio = f"{statistics.median(new) / statistics.median(old):.3f}" if old and new else ""
            print(f"| {key[1]} | {key[2]} | {old_text} | {new_text} | {ratio} |")


if __name__ == "__main__":
    main()
