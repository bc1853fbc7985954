"""Stream scenarios of the side-by-side bench (issue 5): the same docker CLI commands
against dockerd and sdcd, the CLI's stdout read and counted by the bench itself.

- ``attach``: ``docker run --rm busybox dd if=/dev/zero bs=1M count=N`` (N MiB through
  attach, multiplexed: the CLI demultiplexes, dd's summary goes to stderr), the CLI's
  stdout piped into this process and counted — MiB/s, median of R runs. Goal: sdcd at
  least half of dockerd's throughput.
- ``logs``: the same dd run detached (``run -d``, then ``docker wait``, untimed), then
  ``docker logs c`` timed into the same counter, R times — MiB/s of stdout.
- ``exec``: ``docker exec c true`` against a running ``busybox sleep 3600``, E times
  interleaved — median and p90. Goal: sdcd no slower than 1.5x dockerd.

Every byte count is checked (exactly N MiB of stdout, or that side fails). A side that
fails (an error from its daemon, a wrong count, a hang) is reported in its row and in
stderr, and the run carries on with the other side. While a transfer runs, each
target's processes are sampled: the daemon's peak RSS, and CPU by role (daemon,
supervisor: containerd-shim | conmon) and of the docker CLI, per GiB moved — where the
time goes. Every container made here is removed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.containers import (
    CLI_TIMEOUT,
    IMAGE,
    Hung,
    Row,
    _cpu_ticks,
    _status_kib,
    check,
    docker,
    p90,
    remove,
    timed_cli,
)

MIB = 1024 * 1024
#: Linux's fcntl to resize a pipe; the CLI's stdout pipe gets 1 MiB on both sides.
F_SETPIPE_SZ = 1031
#: How often the daemon's processes are sampled during a transfer (each sample scans
#: /proc: kept coarse so that the sampling costs little of the 2 cores).
SAMPLE_INTERVAL = 0.25
#: The attach warm-up moves this many MiB (layers unpacked, caches filled).
WARMUP_MIB = 10
#: A transfer (or the dd that writes a log) may take CLI_TIMEOUT plus this per MiB before
#: it counts as hung: 2000 MiB at dockerd's ~35 MiB/s here (zeros cost its json-file log
#: 6 bytes each) is a minute, under load several.
SECONDS_PER_MIB = 0.25


@dataclass
class StreamRow(Row):
    """A row whose ratio may have a goal (``("≥", 0.5)``: sdcd/dockerd at least 0.5) and
    whose sides may have failed (``errors`` by label: the cell says "failed")."""

    goal: tuple[str, float] | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def cells(self) -> tuple[str, str, str]:
        both = not (math.isnan(self.ref) or math.isnan(self.ours)) and self.ref > 0
        ratio = self.ours / self.ref if both else math.nan
        text = f"{ratio:.2f}" if both else "-"
        if self.goal is not None:
            op, bound = self.goal
            met = both and (ratio >= bound if op == "≥" else ratio <= bound)
            text += f" (goal {op} {bound}: {'met' if met else 'NOT met'})"
        return self._side(self.ref, "dockerd"), self._side(self.ours, "sdcd"), text

    def _side(self, value: float, label: str) -> str:
        if label in self.errors:
            return "failed"
        if self.unit == "B/s":
            return f"{value / MIB:.0f} MiB/s"
        return self._show(value)


def _short(error: str) -> str:
    """An error's first line, fit for a Markdown table cell."""
    lines = error.strip().splitlines() or ["?"]
    return lines[0].replace("|", "/")[:100]


class Sides:
    """Results of one scenario for both targets; a side that fails is recorded (and
    said on stderr) and skipped from then on, the other side carries on."""

    def __init__(self, ref, ours, scenario: str) -> None:
        self.targets = (ref, ours)
        self.scenario = scenario
        self.values: dict[str, list[float]] = {ref.label: [], ours.label: []}
        self.errors: dict[str, str] = {}

    def live(self) -> list:
        return [t for t in self.targets if t.label not in self.errors]

    def attempt(self, target, fn: Callable[[Any], Any]) -> Any:
        """``fn(target)``, or None when that side has failed (now or before)."""
        if target.label in self.errors:
            return None
        try:
            return fn(target)
        except RuntimeError as e:  # Hung is one
            self.errors[target.label] = str(e)
            print(f"{self.scenario}: {target.label} FAILED: {e}", file=sys.stderr)
            return None

    def row(
        self,
        name: str,
        reduce: Callable[[list[float]], float],
        unit: str,
        goal: tuple[str, float] | None = None,
        values: dict[str, list[float]] | None = None,
        say_errors: bool = True,
    ) -> StreamRow:
        values = self.values if values is None else values
        ref, ours = (
            reduce(values[t.label]) if values[t.label] and t.label not in self.errors else math.nan
            for t in self.targets
        )
        if self.errors and say_errors:
            name += "; " + "; ".join(
                f"{label} failed: {_short(e)}" for label, e in self.errors.items()
            )
        return StreamRow(name, ref, ours, unit, goal, dict(self.errors))


# -- the byte counter -------------------------------------------------------------------


class Watch:
    """Samples a target's own processes (``target.processes()``) in a thread while a
    transfer runs: the daemon's peak RSS (KiB), and CPU seconds by role — those that
    existed at the start counted from then, those born during it (a ``run --rm``'s
    conmon or shim) from birth; a process's ticks after the last sample are missed."""

    def __init__(self, target) -> None:
        self.target = target
        self.base = {pid: _cpu_ticks(pid) for pid in target.processes()}
        self.last: dict[int, tuple[str, int]] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def _sample(self) -> None:
        for pid, role in self.target.processes().items():
            ticks = _cpu_ticks(pid)
            if ticks:
                self.last[pid] = (role, ticks - self.base.get(pid, 0))
            if role == "daemon":
                self.peak_rss = max(self.peak_rss, _status_kib(pid))

    def cpu(self, role: str) -> float:
        """CPU seconds that processes of ``role`` used during the watch."""
        ticks = sum(t for r, t in self.last.values() if r == role)
        return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Transfer:
    """One counted CLI run: stdout bytes, wall seconds, and what the watch saw."""

    count: int
    seconds: float
    peak_rss: int
    cpu: dict[str, float]


def _widen(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, MIB)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def counted(target, *args: str, timeout: float = CLI_TIMEOUT) -> Transfer:
    """``docker *args`` with its stdout read here, counted and dropped (its stderr to a
    temporary file); raises RuntimeError when the CLI fails, Hung when it outlasts
    ``timeout`` (the CLI is killed)."""
    buf = memoryview(bytearray(MIB))
    killed = threading.Event()
    with tempfile.TemporaryFile() as err, Watch(target) as watch:
        cli_cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["docker", *args], stdout=subprocess.PIPE, stderr=err, env=target.env(), bufsize=0
        )

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _widen(proc.stdout.fileno())
            total = 0
            while n := proc.stdout.readinto(buf):
                total += n
            proc.wait()
        finally:
            timer.cancel()
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        elapsed = time.perf_counter() - start
        cli_cpu = _children_cpu() - cli_cpu
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
    if killed.is_set():
        target.hung()
        raise Hung(f"{target.label}: docker {' '.join(args)[:80]} hung for {timeout:.0f} s")
    if proc.returncode != 0:
        raise RuntimeError(f"{target.label}: docker {' '.join(args)}: {stderr}")
    roles = {"daemon": watch.cpu("daemon"), "supervisor": watch.cpu("supervisor")}
    return Transfer(total, elapsed, watch.peak_rss, {**roles, "cli": cli_cpu})


def exact(transfer: Transfer, expected: int, what: str) -> Transfer:
    """The transfer, when it moved exactly ``expected`` bytes of stdout."""
    if transfer.count != expected:
        raise RuntimeError(f"{what}: {transfer.count} bytes of stdout, expected {expected}")
    return transfer


# -- attach and logs ----------------------------------------------------------------------


def _dd(mib: int) -> tuple[str, ...]:
    return (IMAGE, "dd", "if=/dev/zero", "bs=1M", f"count={mib}")


def _limit(mib: int) -> float:
    return CLI_TIMEOUT + SECONDS_PER_MIB * mib


def _dd_run(target, mib: int, options: tuple[str, ...] = ()) -> Transfer:
    """``docker run --rm busybox dd ...``: exactly ``mib`` MiB of stdout, or an error."""
    transfer = counted(target, "run", "--rm", *options, *_dd(mib), timeout=_limit(mib))
    return exact(transfer, mib * MIB, f"{target.label}: run --rm dd count={mib}")


def transfer_rows(
    sides: Sides, transfers: dict[str, list[Transfer]], what: str, supervisors: bool = True
) -> list[Row]:
    """Peak daemon RSS and CPU per GiB by role, from the transfers of each side
    (``supervisors``: whether a shim / conmon takes part)."""

    def per_gib(role: str) -> dict[str, list[float]]:
        return {
            label: [t.cpu[role] / (t.count / (1024 * MIB)) for t in ts if t.count]
            for label, ts in transfers.items()
        }

    peaks = {label: [float(t.peak_rss) for t in ts] for label, ts in transfers.items()}
    median = statistics.median
    figures = [
        ("daemon's peak RSS (dockerd / sdcd)", max, "MB", peaks),
        ("daemon CPU per GiB (dockerd / sdcd)", median, "s", per_gib("daemon")),
        ("supervisor CPU per GiB (shim / conmon)", median, "s", per_gib("supervisor")),
        ("docker CLI CPU per GiB", median, "s", per_gib("cli")),
    ]
    if not supervisors:
        del figures[2]
    return [
        sides.row(f"{what}: {label}", reduce, unit, values=values, say_errors=False)
        for label, reduce, unit, values in figures
    ]


def attach_throughput(ref, ours, mib: int, runs: int, options: tuple[str, ...] = ()) -> list[Row]:
    """``docker run --rm [options] busybox dd ... count=mib``, stdout counted; interleaved
    runs. With ``--log-driver none`` the log writer is out of the picture: dockerd's
    json-file writes each zero byte as six (``\\u0000``), which makes it the bottleneck."""
    shown = " ".join(options) + " " if options else ""
    name = f"`docker run --rm {shown}busybox dd bs=1M count={mib}`, attach"
    sides = Sides(ref, ours, "attach " + shown.strip() if shown else "attach")
    for target in sides.targets:  # warm-up
        sides.attempt(target, lambda t: _dd_run(t, WARMUP_MIB, options))
    transfers: dict[str, list[Transfer]] = {t.label: [] for t in sides.targets}
    for _ in range(runs):
        for target in sides.live():
            done = sides.attempt(target, lambda t: _dd_run(t, mib, options))
            if done is not None:
                transfers[target.label].append(done)
                sides.values[target.label].append(done.count / done.seconds)
    return [
        sides.row(f"{name}, MiB/s (median of {runs})", statistics.median, "B/s", ("≥", 0.5)),
        *transfer_rows(sides, transfers, "attach " + shown.strip() if shown else "attach"),
    ]


def logs_throughput(ref, ours, mib: int, runs: int) -> list[Row]:
    """One detached dd container per side (written and waited for untimed), then
    ``docker logs`` timed ``runs`` times, interleaved. No warm-up read: the log was just
    written (in the page cache) and a read of 2000 MiB costs minutes on dockerd."""
    name = f"`docker logs` of a container that wrote {mib} MiB (dd bs=1M)"
    sides = Sides(ref, ours, "logs")
    made: dict[str, str] = {}
    try:
        for target in sides.targets:
            sides.attempt(target, lambda t: _written(t, mib, made))
        transfers: dict[str, list[Transfer]] = {t.label: [] for t in sides.targets}
        for _ in range(runs):
            for target in sides.live():
                done = sides.attempt(target, lambda t: _logs(t, made[t.label], mib))
                if done is not None:
                    transfers[target.label].append(done)
                    sides.values[target.label].append(done.count / done.seconds)
        return [
            sides.row(f"{name}, MiB/s of stdout (median of {runs})", statistics.median, "B/s"),
            *transfer_rows(sides, transfers, "logs", supervisors=False),
        ]
    finally:
        _remove_made(sides.targets, made)


def _logs(target, cid: str, mib: int) -> Transfer:
    """``docker logs cid``: exactly ``mib`` MiB of stdout, or an error."""
    transfer = counted(target, "logs", cid, timeout=_limit(mib))
    return exact(transfer, mib * MIB, f"{target.label}: logs of dd count={mib}")


def _written(target, mib: int, made: dict[str, str]) -> None:
    """A container that wrote ``mib`` MiB to stdout and exited 0, in ``made``."""
    cid = check(target.cli("run", "-d", *_dd(mib)), f"{target.label}: run -d dd")
    made[target.label] = cid.stdout.decode().strip()
    waited = docker(target, "wait", made[target.label], timeout=_limit(mib))
    check(waited, f"{target.label}: wait")
    if waited.stdout.strip() != b"0":
        raise RuntimeError(f"{target.label}: dd exited {waited.stdout.decode().strip()}")


def _remove_made(targets, made: dict[str, str]) -> None:
    """Best effort: a failure here must not hide the scenario's own."""
    for target in targets:
        if target.label in made:
            with contextlib.suppress(RuntimeError):
                remove(target, [made[target.label]])


# -- exec ---------------------------------------------------------------------------------


def exec_latency(ref, ours, count: int) -> list[Row]:
    """``docker exec c true`` ``count`` times per side, interleaved, after one warm-up."""
    sides = Sides(ref, ours, "exec")
    made: dict[str, str] = {}
    try:
        for target in sides.targets:
            sides.attempt(target, lambda t: made.update({t.label: _sleeper(t)}))
        for target in sides.live():  # warm-up
            sides.attempt(target, lambda t: timed_cli(t, "exec", made[t.label], "true"))
        for _ in range(count):
            for target in sides.live():
                took = sides.attempt(target, lambda t: timed_cli(t, "exec", made[t.label], "true"))
                if took is not None:
                    sides.values[target.label].append(took)
        name = "`docker exec c true`"
        return [
            sides.row(f"{name}, median of {count}", statistics.median, "s", ("≤", 1.5)),
            sides.row(f"{name}, p90 of {count}", p90, "s"),
        ]
    finally:
        _remove_made(sides.targets, made)


def _sleeper(target) -> str:
    result = check(target.cli("run", "-d", IMAGE, "sleep", "3600"), f"{target.label}: run -d")
    return result.stdout.decode().strip()
