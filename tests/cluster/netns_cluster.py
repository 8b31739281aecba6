"""Emulated hosts on one Linux machine: one network namespace per host, all on one bridge.

Host ``nodeN`` is the network namespace ``dsp-nodeN``. Inside it, ``eth0`` is one end of a
veth pair whose other end, ``dsp-nodeN`` in the machine's own namespace, is a port of the
bridge ``dsp-br0``. Its processes see ``/dev/shm/dsp-nodeN`` as their ``/dev/shm``, so
that ranks on different hosts cannot meet in shared memory, and nothing outside the
cluster (another MPI job sweeping its segments) touches theirs.

The hosts have the addresses 10.212.0.N/24 and the bridge 10.212.0.254: a range that
nothing else on the machine uses, so every byte sent to one of these addresses stays on
the bridge. The counters of the ``dsp-nodeN`` links therefore count exactly the
traffic between hosts.

Processes enter a host through ``netns-rsh HOST COMMAND...`` (next to this file), which also
gives them a UTS namespace whose hostname is the host's name; MPICH's hydra uses it as its
launcher (:func:`mpiexec_prefix`).

Run as a script to bring hosts up or down by hand::

    python tests/cluster/netns_cluster.py up        # three hosts
    python tests/cluster/netns_cluster.py kill node2
    python tests/cluster/netns_cluster.py down      # everything, even after a crash
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

PREFIX = "dsp-"
BRIDGE = f"{PREFIX}br0"
SUBNET = "10.212.0"
BRIDGE_ADDRESS = f"{SUBNET}.254"
HOSTS = ("node1", "node2", "node3")
LAUNCHER = Path(__file__).with_name("netns-rsh")
SHARED_MEMORY = Path("/dev/shm")

# Run the job's traffic over TCP between hosts: the wheel's UCX would otherwise find the
# other "hosts" on the same machine and move data through shared memory, past the links.
TCP_ONLY = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "eth0"}
# The wheel's other network module, libfabric, with its TCP provider: no such trap there.
OFI_TCP = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"}


def namespace(host: str) -> str:
    """The network namespace that is ``host``."""
    return PREFIX + host


def link(host: str) -> str:
    """The bridge port of ``host``: its veth end in the machine's own namespace."""
    return PREFIX + host


def address(host: str) -> str:
    """The IPv4 address of ``host`` on the bridge."""
    return f"{SUBNET}.{HOSTS.index(host) + 1}"


def unavailable() -> str | None:
    """Why emulated hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "emulated hosts need root (network namespaces, veth links, a bridge)"
    for tool in ("ip", "unshare", "nsenter", "hostname"):
        if shutil.which(tool) is None:
            return f"emulated hosts need `{tool}`, which is not on PATH"
    probe = f"{PREFIX}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not allowed here: {made.stderr.strip()}"
    try:
        # What netns-rsh does: a hostname of its own, and a directory over /dev/shm.
        entered = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                probe,
                "unshare",
                "--uts",
                "sh",
                "-c",
                "hostname probe && mount --bind /dev/shm /dev/shm",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if entered.returncode != 0:
            return (
                "cannot enter a namespace with its own hostname and /dev/shm: "
                + entered.stderr.strip()
            )
        bridge = _ip("link", "add", f"{PREFIX}probe", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot make a bridge: {bridge.stderr.strip()}"
        _ip("link", "del", f"{PREFIX}probe", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def up(hosts: tuple[str, ...] = HOSTS) -> None:
    """Make ``hosts`` on a fresh bridge, first removing whatever an earlier run left."""
    down()
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for host in hosts:
            ns = namespace(host)
            shared_memory(host).mkdir()
            shared_memory(host).chmod(0o1777)
            _ip("netns", "add", ns)
            _ip("link", "add", link(host), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", link(host), "master", BRIDGE, "up")
            _ip("-n", ns, "addr", "add", f"{address(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        for host in hosts:
            _wait_reachable(host)
    except BaseException:
        down()
        raise


def down() -> None:
    """End every process on every emulated host and remove the hosts and the bridge.

    Safe to call at any time, any number of times: it removes only what carries this
    module's prefix, and whatever of it is there; where nothing can have been made (not
    root, no ``ip``), it does nothing.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return
    for ns in namespaces():
        _kill_namespace(ns)
        _ip("netns", "del", ns, check=False)
    for name in _links():
        _ip("link", "del", name, check=False)
    for directory in SHARED_MEMORY.glob(f"{PREFIX}*"):
        shutil.rmtree(directory, ignore_errors=True)


def kill(host: str) -> list[int]:
    """SIGKILL every process on ``host`` (a dead host); returns the pids that were killed."""
    return _kill_namespace(namespace(host))


def cut_off(host: str) -> None:
    """Take ``host``'s link down: its processes live on, but nothing reaches them."""
    _ip("link", "set", link(host), "down")


def reconnect(host: str) -> None:
    """Bring ``host``'s link back up after :func:`cut_off`."""
    _ip("link", "set", link(host), "up")
    # What was sent meanwhile left failed neighbour entries on both ends: each would refuse
    # the next connection ("No route to host") until probed again.
    _ip("-n", namespace(host), "neigh", "flush", "all", check=False)
    _ip("neigh", "flush", "to", address(host), check=False)
    _wait_reachable(host)


def pids(host: str) -> list[int]:
    """The processes running on ``host``."""
    return _namespace_pids(namespace(host))


def wait_empty(
    hosts: tuple[str, ...] = HOSTS, tries: int = 100, daemons: frozenset[str] = frozenset()
) -> dict[str, list[int]]:
    """The processes still running on each host after a bounded wait for them to end.

    Processes whose command name is in ``daemons`` (a host's own services) do not count.
    """
    left: dict[str, list[int]] = {}
    for _ in range(tries):
        left = {}
        for host in hosts:
            running = [pid for pid in pids(host) if _command_name(pid) not in daemons]
            if running:
                left[host] = running
        if not left:
            break
        time.sleep(0.1)
    return left


def shared_memory(host: str) -> Path:
    """The directory that processes on ``host`` see as their /dev/shm."""
    return SHARED_MEMORY / namespace(host)


def clear_shared_memory(hosts: tuple[str, ...] = HOSTS) -> list[Path]:
    """Remove what processes left in the hosts' /dev/shm; returns what was there.

    MPICH leaves its segments behind when ranks are killed, as the tests do on purpose.
    """
    left = [path for host in hosts for path in shared_memory(host).glob("*")]
    for path in left:
        path.unlink(missing_ok=True)
    return left


def namespaces() -> list[str]:
    """The emulated hosts' namespaces that exist now."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def link_bytes(host: str) -> tuple[int, int]:
    """Bytes (sent by ``host``, received by ``host``) on its link so far."""
    stats = Path("/sys/class/net") / link(host) / "statistics"
    # The bridge port's counters are seen from the bridge: what it receives, the host sent.
    return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())


def crossing_bytes(hosts: tuple[str, ...] = HOSTS) -> int:
    """Bytes that ``hosts`` have sent onto the bridge so far: what crossed from one host to
    another (and the little they said to mpiexec, at the bridge's address).

    Callable on an emulated host too (a rank counting the bytes of its own job): the
    links are read from the machine's own namespace, entered through the nearest
    ancestor process that lives there.
    """
    command = ["ip", "-j", "-s", "link", "show"]
    outside = _nearest_outside_pid()
    if outside is not None:
        command = ["nsenter", "-t", str(outside), "-n", *command]
    shown = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
    names = {link(host) for host in hosts}
    return sum(int(entry["stats64"]["rx"]["bytes"]) for entry in shown if entry["ifname"] in names)


def _nearest_outside_pid() -> int | None:
    """An ancestor of this process in the machine's own network namespace (where the
    bridge is), or None when this process is there itself."""
    if Path("/sys/class/net", BRIDGE).exists():
        return None
    own = os.readlink("/proc/self/ns/net")
    pid = os.getpid()
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
        if os.readlink(f"/proc/{pid}/ns/net") != own:
            return pid
    raise RuntimeError("no ancestor of this process is outside its network namespace")


def mpiexec_prefix(
    mpiexec: str,
    ranks_per_host: int = 1,
    hosts: tuple[str, ...] = HOSTS,
    transport: Mapping[str, str] = TCP_ONLY,
) -> list[str]:
    """An ``mpiexec`` command, up to its ``-n``, that places ranks on the emulated hosts.

    Ranks fill the hosts ``ranks_per_host`` at a time, in order, and wrap around. mpiexec
    itself runs in the machine's own namespace and is reached by the hosts at the bridge's
    address.
    """
    command = [
        mpiexec,
        "-launcher",
        "rsh",
        "-launcher-exec",
        str(LAUNCHER),
        "-localhost",
        BRIDGE_ADDRESS,
        "-hosts",
        ",".join(f"{host}:{ranks_per_host}" for host in hosts),
    ]
    for name, value in transport.items():
        command += ["-genv", name, value]
    return command


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _links() -> list[str]:
    shown = _ip("-o", "link", "show", check=False).stdout.split("\n")
    names = [line.split(":")[1].strip().split("@")[0] for line in shown if line.count(":") > 1]
    return [name for name in names if name.startswith(PREFIX)]


def _namespace_pids(ns: str) -> list[int]:
    listed = _ip("netns", "pids", ns, check=False).stdout.split()
    return [int(pid) for pid in listed if pid.isdigit()]


def _kill_namespace(ns: str) -> list[int]:
    killed: list[int] = []
    for _ in range(50):  # processes may fork while they are being killed
        alive = _namespace_pids(ns)
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
        time.sleep(0.1)
    return killed


def _command_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None  # it has just ended


def _wait_reachable(host: str) -> None:
    # A new port forwards once the bridge says so and the host's end of the link is up.
    state = Path("/sys/class/net") / link(host) / "brport" / "state"
    for _ in range(100):
        inside = _ip("-n", namespace(host), "-o", "link", "show", "eth0", check=False).stdout
        if state.read_text().strip() == "3" and "LOWER_UP" in inside:  # 3: forwarding
            return
        time.sleep(0.1)
    raise RuntimeError(f"the link of {host} does not come up")


def main(argv: list[str]) -> int:
    """``up`` | ``down`` | ``kill HOST`` | ``check``."""
    if argv[:1] == ["up"]:
        reason = unavailable()
        if reason:
            print(reason, file=sys.stderr)
            return 1
        up()
        print(" ".join(f"{host}={address(host)}" for host in HOSTS))
    elif argv[:1] == ["down"]:
        down()
    elif argv[:1] == ["kill"] and len(argv) == 2:
        print(kill(argv[1]))
    elif argv[:1] == ["check"]:
        print(unavailable() or "emulated hosts can be made here")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
