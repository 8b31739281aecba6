"""Slurm on the emulated hosts, from Debian's packages, for the length of one test.

``slurmctld`` runs in the machine's own network namespace at the bridge's address, under a
hostname of its own (``slurmhead``); one ``slurmd -N nodeN`` runs on each emulated host; a
private ``munged`` authenticates them all. Everything lives in one directory (config, state,
spool, logs, the munge key and socket) and on ports that Slurm does not use by default, so
nothing of the machine's own Slurm, if any, is read or disturbed. ``proctrack/linuxproc``,
``task/none`` and a ``cgroup.conf`` that asks for no cgroup plugin keep Slurm from needing a
cgroup mount.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import netns_cluster

PROGRAMS = ("slurmctld", "slurmd", "srun", "sinfo", "munged", "mungekey")
PACKAGES = "slurmctld slurmd slurm-client munge"
CONTROLLER = "slurmhead"
CONTROLLER_PORT = 16817
NODE_PORT = 16818


def unavailable() -> str | None:
    """Why Slurm cannot be emulated here (beyond the hosts themselves), or None."""
    missing = [program for program in PROGRAMS if _which(program) is None]
    if missing:
        return f"no {', '.join(missing)}: `apt-get install {PACKAGES}` (Debian's packages)"
    return None


def configure(root: Path, hosts: tuple[str, ...]) -> Path:
    """Write slurm.conf and cgroup.conf under ``root``; returns slurm.conf's path."""
    (root / "state").mkdir()
    for host in hosts:
        (root / f"spool-{host}").mkdir()
    nodes = "\n".join(
        f"NodeName={host} NodeAddr={netns_cluster.address(host)} CPUs={os.cpu_count() or 1} "
        "State=UNKNOWN"
        for host in hosts
    )
    conf = root / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName=emulated
SlurmctldHost={CONTROLLER}({netns_cluster.BRIDGE_ADDRESS})
SlurmctldPort={CONTROLLER_PORT}
SlurmdPort={NODE_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "munge.socket"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=10
InactiveLimit=0
KillWait=2
{nodes}
PartitionName=emulated Nodes={",".join(hosts)} Default=YES MaxTime=INFINITE State=UP
"""
    )
    (root / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n")
    return conf


@contextmanager
def running(root: Path, hosts: tuple[str, ...] = netns_cluster.HOSTS) -> Iterator[dict[str, str]]:
    """Slurm up on ``hosts``: yields the environment that srun and sinfo need.

    Everything started here is ended on the way out, whatever happened.
    """
    conf = configure(root, hosts)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen[bytes]] = []
    try:
        key = root / "munge.key"
        subprocess.run([_need("mungekey"), "--create", f"--keyfile={key}"], check=True)
        started.append(
            _daemon(
                [
                    _need("munged"),
                    "--foreground",
                    "--force",
                    f"--socket={root / 'munge.socket'}",
                    f"--key-file={key}",
                    f"--pid-file={root / 'munged.pid'}",
                    f"--log-file={root / 'munged.log'}",
                    f"--seed-file={root / 'munged.seed'}",
                ],
                root / "munged.out",
                env,
            )
        )
        _wait_for(lambda: (root / "munge.socket").exists(), "munged's socket")
        started.append(
            _daemon(
                [
                    "unshare",
                    "--uts",
                    "sh",
                    "-c",
                    f'hostname {CONTROLLER} && exec "$@"',
                    "sh",
                    _need("slurmctld"),
                    "-D",
                    "-i",
                    "-f",
                    str(conf),
                ],
                root / "slurmctld.out",
                env,
            )
        )
        for host in hosts:
            started.append(
                _daemon(
                    [
                        str(netns_cluster.LAUNCHER),
                        host,
                        _need("slurmd"),
                        "-D",
                        "-N",
                        host,
                        "-f",
                        str(conf),
                    ],
                    root / f"slurmd-{host}.out",
                    env,
                )
            )
        _wait_for(lambda: _idle_nodes(env) == len(hosts), "every node to be idle in sinfo", root)
        yield env
    finally:
        for host in hosts:
            netns_cluster.kill(host)
        for process in reversed(started):
            _end(process)


def _idle_nodes(env: dict[str, str]) -> int:
    shown = subprocess.run(
        [_need("sinfo"), "-h", "-N", "-o", "%N %t"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return sum(line.split()[-1] == "idle" for line in shown.stdout.splitlines() if line.strip())


def _daemon(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


def _wait_for(ready: object, what: str, logs: Path | None = None, tries: int = 600) -> None:
    assert callable(ready)
    for _ in range(tries):
        if ready():
            return
        time.sleep(0.1)
    detail = ""
    if logs is not None:
        detail = "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(logs.glob("*.log"))
        )
    raise RuntimeError(f"timed out waiting for {what}\n{detail}")


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def _need(program: str) -> str:
    found = _which(program)
    if found is None:
        raise RuntimeError(f"no {program}: apt-get install {PACKAGES}")
    return found
