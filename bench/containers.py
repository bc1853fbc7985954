"""Container scenarios of the side-by-side bench (issue 4): the same docker CLI commands
against dockerd and sdcd, one busybox image pulled by both from the bench registry.

A *target* is ``bench.run.Dockerd`` or ``bench.run.Sdcd``: anything with ``cli(*args)``,
``env()``, ``label`` and ``processes()`` (pid -> role of the daemon's own processes, the
containers' supervisors included, the containers' own processes excluded).

Scenarios:

- ``run``: ``docker run --rm busybox true``, one at a time — latency, median and p90.
- ``parallel``: ``docker run -d busybox sleep 600`` from P CLI processes started at once
  — the wall time until the last returns; the containers are removed untimed.
- ``many``: N containers running (``run -d busybox sleep 3600``, 8 at a time), then
  ``docker ps -a`` and ``docker ps -a -q`` timed, then the RSS of the daemon's processes
  and of the containers' supervisors (conmon / containerd-shim), then all removed.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

#: Where the docker CLI is told to pull from and what the image is called on both sides.
IMAGE = "busybox"
#: How many CLI processes populate the N containers of ``many`` at once.
POPULATE_WORKERS = 8
#: How long the idle CPU of the daemons' processes is watched with the N containers up.
IDLE_WINDOW = 10.0
#: At most this many ids per ``docker rm -f`` (the CLI removes them concurrently).
RM_CHUNK = 8
#: No docker CLI call of the bench may take longer: a daemon that hangs (dockerd 20.10's
#: libnetwork can deadlock under container churn, moby/libnetwork#2649) fails the bench
#: instead of stalling it.
CLI_TIMEOUT = 300.0


class Hung(RuntimeError):
    """A daemon did not answer a docker CLI call within CLI_TIMEOUT."""


def docker(target, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """The docker CLI against ``target``, bounded in time (the CLI is killed on Hung)."""
    try:
        return subprocess.run(
            ["docker", *args], capture_output=True, env=target.env(), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        target.hung()
        what = f"docker {' '.join(args)[:80]}"
        raise Hung(f"{target.label}: {what} hung for {timeout:.0f} s") from None


@dataclass
class Row:
    """One line of the bench table: a figure for each daemon, in ``unit``."""

    name: str
    ref: float
    ours: float
    unit: str  # "s" (shown in ms), "MB" (given in KiB, shown in MiB), "%" (a fraction)

    def cells(self) -> tuple[str, str, str]:
        ratio = f"{self.ours / self.ref:.2f}" if self.ref and self.ours == self.ours else "-"
        return self._show(self.ref), self._show(self.ours), ratio

    def _show(self, value: float) -> str:
        if math.isnan(value):
            return "hung"
        if self.unit == "s":  # both in ms, or both in s when either is over 5 s
            return f"{value:.1f} s" if max(self.ref, self.ours) > 5 else f"{value * 1000:.1f} ms"
        if self.unit == "%":
            return f"{value * 100:.1f} %"
        mib = value / 1024
        return f"{mib:.2f} MiB" if mib < 10 else f"{mib:.1f} MiB"


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile (with 20 samples: the 18th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def bench_account(daemon, root: Path) -> Path:
    """An approved account ``bench`` on an sdcd ``daemon`` (tests.conftest.Daemon), its
    client identity written under ``root/client``: the certs directory."""
    from tests.clients import make_cert, make_key, openssh_line, write_identity

    key = make_key("ecdsa-256")
    daemon.admin("account", "create", "bench", "--approved")
    daemon.admin("key", "add", "bench", openssh_line(key))
    certs = root / "client"
    write_identity(certs, key, make_cert(key, "bench"))
    shutil.copy(daemon.ca_path, certs / "ca.pem")
    return certs


def tls_env(daemon, certs: Path, root: Path) -> dict[str, str]:
    """The environment that points the docker CLI at ``daemon`` as the bench account."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(
        DOCKER_HOST=daemon.docker_host,
        DOCKER_TLS_VERIFY="1",
        DOCKER_CERT_PATH=str(certs),
        DOCKER_CONFIG=str(root / "cfg"),
    )
    return env


def check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise RuntimeError(f"{what}: {result.stderr.decode(errors='replace').strip()}")
    return result


def load_image(target, registry_host: str) -> None:
    """Pull the bench registry's busybox and tag it ``busybox``, as a user would."""
    check(target.cli("pull", f"{registry_host}/{IMAGE}"), f"{target.label}: pull")
    check(target.cli("tag", f"{registry_host}/{IMAGE}", IMAGE), f"{target.label}: tag")


def timed_cli(target, *args: str) -> float:
    start = time.perf_counter()
    check(target.cli(*args), f"{target.label}: docker {' '.join(args)}")
    return time.perf_counter() - start


def remove(target, ids: Iterable[str]) -> float:
    """``docker rm -f`` in chunks (one CLI at a time, each removing its chunk
    concurrently); the wall time, which the tables show only as a by-the-way."""
    ids = list(ids)
    start = time.perf_counter()
    for i in range(0, len(ids), RM_CHUNK):
        check(target.cli("rm", "-f", *ids[i : i + RM_CHUNK]), f"{target.label}: rm -f")
    return time.perf_counter() - start


def remove_all(target) -> None:
    """Whatever containers the target still holds, gone (best effort, for clean-up: a
    daemon that hangs is left to its ``stop``)."""
    with contextlib.suppress(Hung):
        ids = target.cli("ps", "-a", "-q", "--no-trunc").stdout.decode().split()
        for i in range(0, len(ids), RM_CHUNK):
            target.cli("rm", "-f", *ids[i : i + RM_CHUNK])


# -- run --------------------------------------------------------------------------------


def run_latency(ref, ours, runs: int) -> list[Row]:
    """``docker run --rm busybox true``, interleaved so that drift hits both alike."""
    args = ("run", "--rm", IMAGE, "true")
    for target in (ref, ours):  # warm-up: layer unpacked, caches filled
        timed_cli(target, *args)
    times: dict[str, list[float]] = {"ref": [], "ours": []}
    for _ in range(runs):
        times["ref"].append(timed_cli(ref, *args))
        times["ours"].append(timed_cli(ours, *args))
    name = "`docker run --rm busybox true`"
    return [
        Row(f"{name}, median of {runs}", *(statistics.median(times[k]) for k in times), "s"),
        Row(f"{name}, p90 of {runs}", *(p90(times[k]) for k in times), "s"),
    ]


# -- parallel ---------------------------------------------------------------------------


def parallel_runs(target, count: int) -> tuple[float, list[str]]:
    """``count`` CLI processes of ``docker run -d busybox sleep 600`` started at once;
    the wall time until the last one returned, and the ids they printed."""
    argv = ["docker", "run", "-d", IMAGE, "sleep", "600"]
    env = target.env()
    start = time.perf_counter()
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(count)
    ]
    try:
        outputs = [p.communicate(timeout=CLI_TIMEOUT) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        target.hung()
        raise Hung(f"{target.label}: {count} x docker run -d hung") from None
    elapsed = time.perf_counter() - start
    ids = [out.decode().strip() for out, _err in outputs if out.strip()]
    failed = [
        err.decode(errors="replace").strip()
        for p, (_out, err) in zip(procs, outputs, strict=True)
        if p.returncode != 0
    ]
    if failed:
        remove(target, ids)
        raise RuntimeError(f"{target.label}: {len(failed)} of {count} failed: {failed[0]}")
    return elapsed, ids


def parallel(ref, ours, count: int, reps: int) -> list[Row]:
    """Median over ``reps`` interleaved rounds; the containers are removed between rounds
    (untimed) so that every round starts from none."""
    times: dict[str, list[float]] = {"ref": [], "ours": []}
    for _ in range(reps):
        for key, target in (("ref", ref), ("ours", ours)):
            elapsed, ids = parallel_runs(target, count)
            times[key].append(elapsed)
            remove(target, ids)
    name = f"{count} x `docker run -d busybox sleep 600` all at once, wall (median of {reps})"
    return [Row(name, *(statistics.median(times[k]) for k in times), "s")]


# -- many: ps and memory ----------------------------------------------------------------


def populate(target, count: int) -> tuple[float, list[str]]:
    """``count`` running containers, ``POPULATE_WORKERS`` CLI processes at a time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(POPULATE_WORKERS) as pool:
        results = list(
            pool.map(lambda _i: target.cli("run", "-d", IMAGE, "sleep", "3600"), range(count))
        )
    elapsed = time.perf_counter() - start
    ids = [r.stdout.decode().strip() for r in results if r.returncode == 0]
    failed = [r for r in results if r.returncode != 0]
    if failed:
        remove(target, ids)
        detail = failed[0].stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{target.label}: {len(failed)} of {count} runs failed: {detail}")
    return elapsed, ids


def _status_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def processes_with_arg(needle: str) -> dict[int, str]:
    """pid -> command name of every process whose command line mentions ``needle``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if needle in cmdline:
            found[int(entry.name)] = comm
    return found


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def idle_cpu(targets: Iterable, seconds: float = IDLE_WINDOW) -> dict[str, float]:
    """CPU (in cores) that each target's processes use while nobody asks anything: the
    cost of watching its running containers. All targets are watched over one window."""
    pids = {t.label: list(t.processes()) for t in targets}
    before = {label: {p: _cpu_ticks(p) for p in ps} for label, ps in pids.items()}
    time.sleep(seconds)
    after = {label: {p: _cpu_ticks(p) for p in ps} for label, ps in pids.items()}
    cores = os.sysconf("SC_CLK_TCK") * seconds
    used = {
        label: sum(after[label][p] - t0 for p, t0 in before[label].items() if after[label][p])
        for label in pids
    }
    return {label: ticks / cores for label, ticks in used.items()}


@dataclass
class Memory:
    """RSS (and PSS) in KiB by role: ``daemon`` (dockerd | sdcd), ``helper`` (containerd |
    redis-server), ``supervisors`` (containerd-shims | conmons, summed), and how many
    supervisors there were."""

    daemon: int
    helper: int
    supervisors: int
    supervisor_count: int
    pss_total: int

    @property
    def total(self) -> int:
        return self.daemon + self.helper + self.supervisors


def memory(target) -> Memory:
    rss = {"daemon": 0, "helper": 0, "supervisor": 0}
    count = pss = 0
    for pid, role in target.processes().items():
        rss[role] += _status_kib(pid)
        pss += _pss_kib(pid)
        count += role == "supervisor"
    return Memory(rss["daemon"], rss["helper"], rss["supervisor"], count, pss)


def many(ref, ours, count: int, ps_runs: int) -> list[Row]:
    """N running containers on each side: populate, ps, memory, removal."""
    idle = {t.label: memory(t) for t in (ref, ours)}
    populated: dict[str, tuple[float, list[str]]] = {t.label: (0.0, []) for t in (ref, ours)}
    try:
        # In alternating rounds: each daemon sees about as many of the other's containers
        # (mounts, processes, idle CPU) beside its own while it starts its own.
        rounds = max(1, min(10, count // POPULATE_WORKERS))
        for i in range(rounds):
            batch = count // rounds + (i < count % rounds)
            for target in (ref, ours):
                elapsed, ids = populate(target, batch)
                total, held = populated[target.label]
                populated[target.label] = (total + elapsed, held + ids)
        rows = [
            Row(
                f"{count} x `docker run -d busybox sleep 3600`, {POPULATE_WORKERS} at a time, wall"
                f" (in {rounds} rounds alternating between the two)",
                populated[ref.label][0],
                populated[ours.label][0],
                "s",
            )
        ]
        for args in (("ps", "-a"), ("ps", "-a", "-q")):
            for target in (ref, ours):  # warm-up, and a check that all are listed
                listed = check(target.cli(*args), f"{target.label}: ps").stdout.splitlines()
                if len(listed) != count + (len(args) == 2):
                    raise RuntimeError(f"{target.label}: ps listed {len(listed)} lines")
            times: dict[str, list[float]] = {"ref": [], "ours": []}
            for _ in range(ps_runs):
                times["ref"].append(timed_cli(ref, *args))
                times["ours"].append(timed_cli(ours, *args))
            rows.append(
                Row(
                    f"`docker {' '.join(args)}`, {count} containers (median of {ps_runs})",
                    statistics.median(times["ref"]),
                    statistics.median(times["ours"]),
                    "s",
                )
            )
        full = {t.label: memory(t) for t in (ref, ours)}
        rows += memory_rows(idle, full, count)
        cpu = idle_cpu((ref, ours))
        rows.append(
            Row(
                f"CPU while idle with {count} running, all processes above (% of a core)",
                cpu[ref.label],
                cpu[ours.label],
                "%",
            )
        )
        removal = {}
        for target in (ref, ours):
            try:
                removal[target.label] = remove(target, populated.pop(target.label)[1])
            except Hung as e:  # reported in the table; the daemon's stop cleans up
                print(e, file=sys.stderr)
                removal[target.label] = math.nan
        rows.append(
            Row(
                f"`docker rm -f` of the {count}, {RM_CHUNK} ids per CLI, wall",
                removal[ref.label],
                removal[ours.label],
                "s",
            )
        )
        return rows
    finally:  # after a failure: best effort, the original error is the one to see
        for target in (ref, ours):
            if target.label in populated:
                with contextlib.suppress(RuntimeError):
                    remove(target, populated[target.label][1])


def memory_rows(idle: dict[str, Memory], full: dict[str, Memory], n: int) -> list[Row]:
    """The memory figures; ``idle`` and ``full`` by target label, before and at ``n``."""
    ref0, ours0, ref, ours = idle["dockerd"], idle["sdcd"], full["dockerd"], full["sdcd"]
    for label, m in (("dockerd", ref), ("sdcd", ours)):
        if m.supervisor_count != n:
            raise RuntimeError(f"{label}: {m.supervisor_count} supervisors for {n} containers")
    at = f"at {n} running"
    return [
        Row("RSS, no containers: dockerd+containerd / sdcd+redis", ref0.total, ours0.total, "MB"),
        Row(f"RSS {at}: dockerd / sdcd process", ref.daemon, ours.daemon, "MB"),
        Row(f"RSS {at}: containerd / redis-server", ref.helper, ours.helper, "MB"),
        Row(f"RSS {at}: all shims / all conmons", ref.supervisors, ours.supervisors, "MB"),
        Row(f"RSS {at}: total", ref.total, ours.total, "MB"),
        Row(f"RSS {at}: total / {n}, per container", ref.total / n, ours.total / n, "MB"),
        Row("RSS per shim / per conmon", ref.supervisors / n, ours.supervisors / n, "MB"),
        Row(f"PSS {at}: total (shared pages counted once)", ref.pss_total, ours.pss_total, "MB"),
        Row(f"PSS {at}: total / {n}, per container", ref.pss_total / n, ours.pss_total / n, "MB"),
    ]
