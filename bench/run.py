"""Side-by-side benchmarks: the same client commands against sdcd and a reference dockerd.

Starts a reference dockerd (Debian's docker.io: its own data dir, socket and bridge,
``--iptables=false``) and an sdcd on the embedded default, both on this machine, runs
each scenario against each in turn, and prints medians and sdcd/dockerd ratios as a
Markdown table (``docs/benchmarks.md`` keeps the latest).

Usage, as root: ``.venv/bin/python -m bench.run [--runs N] [--only GROUP[,GROUP...]]
[--containers N] [--stream-mib N] [--stream-runs N] [--execs N]``. Groups: ``api``,
``pulls``, ``containers`` (= ``run``, ``parallel``, ``many``; see ``bench/containers.py``),
``streams`` (= ``attach``, ``logs``, ``exec``; see ``bench/streams.py``), ``files``
(= ``cp``, ``build``; see ``bench/files.py``), ``fleet`` (sdcd with three agents
nodes; see ``bench/fleet.py``), or one
scenario's name. Nothing is left behind: both daemons' containers, mounts, namespaces,
processes, bridges and data dirs go.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import containers, files, fleet, streams  # noqa: E402
from tests.conftest import Daemon, wait_for  # noqa: E402
from tests.imagebuilder import busybox_image, push  # noqa: E402
from tests.test_images import CONFIG, Registry, tar_layer  # noqa: E402

BRIDGE = "sdcdbench0"
#: Room for 500+ containers on each side, outside the 10.200-249.x.0/24 that test
#: daemons pick at random (tests may run beside the bench).
DOCKERD_SUBNET = "10.196.0.1/21"
SDCD_SUBNET = "10.197.0.0/21"
#: dockerd's containers' cgroups go under this (removed after), not the system's /docker.
CGROUP_PARENT = "sdcdbench"


class Dockerd:
    """A private dockerd: nothing shared with any system Docker."""

    label = "dockerd"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise SystemExit("dockerd not found: apt-get install docker.io")
        subprocess.run(
            ["ip", "link", "add", BRIDGE, "type", "bridge"], check=False, stderr=subprocess.DEVNULL
        )
        subprocess.run(
            ["ip", "addr", "add", DOCKERD_SUBNET, "dev", BRIDGE],
            check=False,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                dockerd,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "dockerd.pid"),
                "-H",
                f"unix://{self.socket}",
                "--bridge",
                BRIDGE,
                "--iptables=false",
                "--ip6tables=false",
                "--containerd-namespace",
                "sdcdbench",
                "--containerd-plugins-namespace",
                "sdcdbench-p",
                "--cgroup-parent",
                f"/{CGROUP_PARENT}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.cli("version").returncode == 0, 60, 0.2)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER_CONFIG"] = str(self.root / "client")
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return containers.docker(self, *args)

    def connection(self) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(str(self.socket))

    def hung(self) -> None:
        """dockerd writes its goroutines' stacks to the exec root (kept with --logs)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)

    def forget_blobs(self) -> None:
        """rmi already removed the layers: dockerd keeps no other copy."""

    def processes(self) -> dict[int, str]:
        """dockerd, the containerd it spawned (no ``--containerd`` given) and the shims
        that containerd started: all name our exec root on their command lines."""
        roles = {"dockerd": "daemon", "containerd": "helper", "containerd-shim": "supervisor"}
        found = containers.processes_with_arg(str(self.root))
        return {pid: roles[comm] for pid, comm in found.items() if comm in roles}

    def stop(self) -> None:
        """Containers removed, dockerd stopped, then whatever is left of ours — shims,
        mounts, the bridge, the cgroup parent — removed (the data dir goes with the
        bench's temp dir)."""
        if self.proc and self.proc.poll() is None:
            containers.remove_all(self)
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # A dockerd that hung leaves containers: their shims, containerd, and the
        # containers' own processes (found by their cgroups) go by SIGKILL.
        doomed = set(containers.processes_with_arg(str(self.root)))
        for procs in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}/*/cgroup.procs"):
            with contextlib.suppress(OSError):
                doomed.update(int(pid) for pid in procs.read_text().split())
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if doomed:
            time.sleep(1)
        _unmount_under(self.root)  # overlays and network namespaces (their veths go too)
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, stderr=subprocess.DEVNULL)
        for veth in _stray_veths():
            subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        for cgroup in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"):
            for child in sorted(cgroup.glob("**/"), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    child.rmdir()


def _stray_veths() -> list[str]:
    """Veths dockerd made for our containers and left in the host's namespace when it
    hung: those whose MAC is dockerd's 02:42 + an address of DOCKERD_SUBNET."""
    net = ipaddress.ip_interface(DOCKERD_SUBNET).network
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True
    ).stdout
    stray = []
    for line in out.splitlines():
        _index, name, rest = line.split(": ", 2)
        _, _, after = rest.partition("link/ether ")
        octets = after.split(" ", 1)[0].split(":")
        if len(octets) == 6 and octets[:2] == ["02", "42"]:
            ip = ipaddress.ip_address(".".join(str(int(o, 16)) for o in octets[2:]))
            if ip in net:
                stray.append(name.split("@")[0])
    return stray


def _unmount_under(root: Path) -> None:
    """Lazily unmount every mount point below ``root``, deepest first."""
    points = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(root) + "/")
    ]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


class Sdcd:
    """An sdcd with one account, reached by the docker CLI as a user would."""

    label = "sdcd"

    def __init__(self, root: Path) -> None:
        self.daemon = Daemon(root)
        self.daemon.subnet = SDCD_SUBNET
        self.daemon.write_config()
        self.root = root

    def start(self) -> None:
        self.daemon.start()
        self.certs = containers.bench_account(self.daemon, self.root)

    def env(self) -> dict[str, str]:
        return containers.tls_env(self.daemon, self.certs, self.root)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return containers.docker(self, *args)

    def forget_blobs(self) -> None:
        """rmi garbage-collects blobs nothing references: the next pull is a full one."""

    def hung(self) -> None:
        """Nothing to collect: the access log says which requests were slow."""

    def connection(self) -> http.client.HTTPConnection:
        context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        context.load_cert_chain(str(self.certs / "cert.pem"), str(self.certs / "key.pem"))
        return http.client.HTTPSConnection(
            "localhost", self.daemon.docker_port, timeout=60, context=context
        )

    def processes(self) -> dict[int, str]:
        """sdcd itself, its embedded redis-server and the conmons of its containers (each
        names the node's data dir on its command line)."""
        pid = self.daemon.proc.pid if self.daemon.proc else None
        found = containers.processes_with_arg(str(self.root))
        roles = {"redis-server": "helper", "conmon": "supervisor"}
        chosen = {p: roles[c] for p, c in found.items() if c in roles}
        if pid is not None:
            chosen[pid] = "daemon"
        return chosen

    def stop(self) -> None:
        """Containers removed, then sdcd stopped and its node purged (processes, mounts,
        namespaces, veths, cgroups, bridge)."""
        if hasattr(self, "certs") and self.daemon.proc and self.daemon.proc.poll() is None:
            containers.remove_all(self)
        self.daemon.destroy()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self._path)


class _Done:
    returncode = 0


def api_requests(target, path: str, count: int = 100) -> _Done:
    """``count`` requests on one keep-alive connection: the server's own cost per request."""
    conn = target.connection()
    try:
        for _ in range(count):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: {resp.status}")
    finally:
        conn.close()
    return _Done()


def big_layers(total_mb: int, count: int) -> list[bytes]:
    """Incompressible layers (random data): the registry transfer is what is measured."""
    size = total_mb * 1024 * 1024 // count
    return [tar_layer({f"data/blob{i}": os.urandom(size)}) for i in range(count)]


def pull_scenario(repo: str):
    """Pull ``repo`` from the bench registry, then remove it again (outside the timing
    would be better; rmi is cheap beside a pull and both daemons pay it)."""

    def run(target):
        result = target.cli("pull", f"{target.registry}/{repo}")
        if result.returncode == 0:
            target.cli("rmi", f"{target.registry}/{repo}")
            target.forget_blobs()
        return result

    return run


def timed(run: Callable[[], subprocess.CompletedProcess]) -> float:
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode(errors="replace"))
    return elapsed


#: The simple scenarios: one callable per target, timed as a whole.
SCENARIOS: dict[str, tuple[str, Callable]] = {
    "docker version": ("api", lambda t: t.cli("version")),
    "docker info": ("api", lambda t: t.cli("info")),
    "100 x GET /v1.41/info, one connection": ("api", lambda t: api_requests(t, "/v1.41/info")),
    "100 x GET /_ping, one connection": ("api", lambda t: api_requests(t, "/_ping")),
    "docker pull, 200 MB in 1 layer": ("pulls", pull_scenario("big1")),
    "docker pull, 200 MB in 10 layers": ("pulls", pull_scenario("big10")),
}
#: The container scenarios (bench/containers.py), in the order they run.
CONTAINER_SCENARIOS = ("run", "parallel", "many")
#: The stream scenarios (bench/streams.py), in the order they run.
STREAM_SCENARIOS = ("attach", "logs", "exec")
#: The file scenarios (bench/files.py): docker cp and docker build.
FILE_SCENARIOS = ("cp", "build")
GROUPS = {"api", "pulls", "containers", "streams", "files", "fleet", *CONTAINER_SCENARIOS,
          *STREAM_SCENARIOS, *FILE_SCENARIOS}  # fmt: skip


def selected(only: set[str] | None, name: str, group: str) -> bool:
    """``--only`` names groups (api, pulls, containers, run, parallel, many, streams,
    attach, logs, exec, files, cp, build) or scenarios."""
    if only is None:
        return True
    if name in only or group in only:
        return True
    if group in STREAM_SCENARIOS:
        return "streams" in only
    if group in FILE_SCENARIOS:
        return "files" in only
    return group in CONTAINER_SCENARIOS and "containers" in only


def simple_scenarios(ref, ours, runs: int, only: set[str] | None) -> list[containers.Row]:
    rows = []
    for name, (group, scenario) in SCENARIOS.items():
        if not selected(only, name, group):
            continue
        for target in (ref, ours):  # warm-up
            timed(lambda t=target, s=scenario: s(t))
        ref_times, our_times = [], []
        for _ in range(runs):  # interleaved, so drift hits both alike
            ref_times.append(timed(lambda s=scenario: s(ref)))
            our_times.append(timed(lambda s=scenario: s(ours)))
        rows.append(
            containers.Row(
                f"`{name}` (median of {runs})",
                statistics.median(ref_times),
                statistics.median(our_times),
                "s",
            )
        )
    return rows


def container_scenarios(ref, ours, args: argparse.Namespace) -> list[containers.Row]:
    rows = []
    if selected(args.only, "run", "run"):
        rows += containers.run_latency(ref, ours, args.runs)
    if selected(args.only, "parallel", "parallel"):
        rows += containers.parallel(ref, ours, args.parallel, args.parallel_runs)
    if selected(args.only, "many", "many"):
        rows += containers.many(ref, ours, args.containers, args.ps_runs)
    if selected(args.only, "attach", "attach"):
        rows += streams.attach_throughput(ref, ours, args.stream_mib, args.stream_runs)
        rows += streams.attach_throughput(
            ref, ours, args.stream_mib, args.stream_runs, ("--log-driver", "none")
        )
    if selected(args.only, "logs", "logs"):
        rows += streams.logs_throughput(ref, ours, args.stream_mib, args.stream_runs)
    if selected(args.only, "exec", "exec"):
        rows += streams.exec_latency(ref, ours, args.execs)
    if selected(args.only, "cp", "cp"):
        rows += files.cp_throughput(ref, ours, args.cp_mib, args.file_runs)
    if selected(args.only, "build", "build"):
        rows += files.build_times(ref, ours, args.file_runs)
    return rows


def run(args: argparse.Namespace) -> list[containers.Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdcd-bench-") as tmp:
        ref, ours = Dockerd(Path(tmp) / "dockerd"), Sdcd(Path(tmp) / "sdcd")
        (Path(tmp) / "dockerd").mkdir()
        registry = None
        try:
            registry = Registry(Path(tmp) / "registry")
            if any(selected(args.only, n, g) for n, (g, _s) in SCENARIOS.items() if g == "pulls"):
                for repo, count in (("big1", 1), ("big10", 10)):
                    layers = big_layers(200, count)
                    history = [{"created_by": f"layer {i}"} for i in range(count)]
                    registry.push(repo, "latest", layers, {**CONFIG, "history": history})
            wants_containers = any(
                selected(args.only, n, n)
                for n in (*CONTAINER_SCENARIOS, *STREAM_SCENARIOS, *FILE_SCENARIOS, "fleet")
            )
            if wants_containers:
                push(registry.url, containers.IMAGE, "latest", busybox_image())
            ref.registry = ours.registry = registry.host
            ref.start()
            ours.start()
            rows += simple_scenarios(ref, ours, args.runs, args.only)
            if wants_containers:
                for target in (ref, ours):
                    containers.load_image(target, registry.host)
                rows += container_scenarios(ref, ours, args)
            if selected(args.only, "fleet", "fleet"):
                rows += fleet.scenarios(ref, Path(tmp), registry.host, args)
        finally:
            try:
                ours.stop()
            finally:
                ref.stop()
                if registry is not None:
                    registry.stop()
                if args.logs:
                    keep_logs(Path(tmp), args.logs)
        leftovers(Path(tmp), ours)
    return rows


def keep_logs(tmp: Path, where: Path) -> None:
    """The daemons' logs (sdcd's access log has each request's ms), kept for a look."""
    where.mkdir(parents=True, exist_ok=True)
    stacks = (tmp / "dockerd" / "exec").glob("goroutine-stacks-*.log")
    for log in (tmp / "sdcd" / "sdcd.log", tmp / "dockerd" / "dockerd.log", *stacks):
        if log.exists():
            shutil.copy(log, where / log.name)


def leftovers(tmp: Path, ours: Sdcd) -> None:
    """Say so if anything of the bench outlived it: a process, a mount, a link."""
    found = containers.processes_with_arg(str(tmp))
    problems = [f"process {pid} ({comm})" for pid, comm in found.items()]
    problems += [
        f"mount {line.split()[4]}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(tmp))
    ]
    problems += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for name in (BRIDGE, ours.daemon.bridge):
        if f" {name}:" in links or f" {name}@" in links:
            problems.append(f"link {name}")
    if problems:
        print("bench left behind: " + ", ".join(problems), file=sys.stderr)


def table(rows: list[containers.Row]) -> str:
    lines = ["| scenario | dockerd | sdcd | sdcd/dockerd |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.name} | {' | '.join(row.cells())} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each timed command")
    parser.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        help=f"comma-separated groups ({', '.join(sorted(GROUPS))}) or scenario names",
    )
    parser.add_argument(
        "--containers", type=int, default=500, help="containers running for ps and memory"
    )
    parser.add_argument("--parallel", type=int, default=50, help="CLI processes at once")
    parser.add_argument("--parallel-runs", type=int, default=3)
    parser.add_argument("--ps-runs", type=int, default=10)
    parser.add_argument(
        "--stream-mib", type=int, default=2000, help="MiB through attach and logs per run"
    )
    parser.add_argument("--stream-runs", type=int, default=3, help="runs of attach and logs")
    parser.add_argument("--execs", type=int, default=50, help="docker exec runs per daemon")
    parser.add_argument("--cp-mib", type=int, default=500, help="MiB of the docker cp file")
    parser.add_argument("--file-runs", type=int, default=5, help="runs of cp and build")
    parser.add_argument("--fleet-containers", type=int, default=1000,
                        help="containers present for the fleet scenarios")  # fmt: skip
    parser.add_argument("--fleet-parallel", type=int, default=100, help="runs at once, fleet")
    parser.add_argument("--fleet-runs", type=int, default=20, help="timed runs, fleet")
    parser.add_argument("--logs", type=Path, help="copy the daemons' logs here at the end")
    args = parser.parse_args()
    unknown = (args.only or set()) - GROUPS - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario or group: {', '.join(sorted(unknown))}")
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = run(args)
    print(f"{started}, {os.cpu_count()} cores, {args.runs} runs; --only {args.only or 'all'}")
    print(table(rows))


if __name__ == "__main__":
    main()
