"""Files in and out, and builds, side by side (issue 6): ``docker cp`` of a large file
into and out of a running container, and a 5-step ``docker build`` cold and cached.

Both daemons use the classic builder (``DOCKER_BUILDKIT=0``: sdcd has no other, and
dockerd would otherwise use BuildKit, which is not what is compared). What arrived is
checked (md5 inside the container, md5 of the copied-out file; every cached step said
"Using cache"), so a fast wrong answer cannot count.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.containers import CLI_TIMEOUT, IMAGE, Hung, check
from bench.streams import MIB, Sides, StreamRow, _remove_made, _sleeper

BUILD_TAG = "sdcdbench-build"
DOCKERFILE = """\
FROM busybox
ENV APP=/app
COPY file.txt /app/
RUN echo built > /app/built && ls /app > /dev/null
CMD ["cat", "/app/built"]
"""
#: Steps after FROM: each is a cache hit on the rebuild.
CACHED_STEPS = 4


def _cli(target, *args: str, env: dict | None = None, timeout: float = CLI_TIMEOUT):
    try:
        return subprocess.run(
            ["docker", *args],
            capture_output=True,
            env={**target.env(), **(env or {})},
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise Hung(f"{target.label}: docker {' '.join(args)[:60]} hung") from None


def _big_file(directory: Path, mib: int) -> tuple[Path, str]:
    """Random bytes (nothing on the way can shortcut them) and their md5."""
    path = directory / "big.bin"
    digest = hashlib.md5()
    with open(path, "wb") as f:
        for _ in range(mib):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            f.write(chunk)
    return path, digest.hexdigest()


def _md5_in(target, cid: str) -> str:
    result = check(_cli(target, "exec", cid, "md5sum", "/tmp/big.bin"), "md5sum in container")
    return result.stdout.decode().split()[0]


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def cp_throughput(ref, ours, mib: int, runs: int) -> list[StreamRow]:
    """``docker cp`` of ``mib`` MiB into a running busybox and back out, MiB/s."""
    sides = Sides(ref, ours, "cp")
    made: dict[str, str] = {}
    into = {ref.label: [], ours.label: []}
    out = {ref.label: [], ours.label: []}
    with tempfile.TemporaryDirectory(prefix="sdcd-bench-cp-") as tmp:
        big, md5 = _big_file(Path(tmp), mib)
        try:
            for target in sides.targets:
                sides.attempt(target, lambda t: made.update({t.label: _sleeper(t)}))
            for _ in range(runs):
                for target in sides.live():
                    took = sides.attempt(target, lambda t: _cp_in(t, made[t.label], big, md5))
                    if took is not None:
                        into[target.label].append(mib * MIB / took)
                    took = sides.attempt(
                        target,
                        lambda t: _cp_out(t, made[t.label], Path(tmp) / f"out-{t.label}", md5),
                    )
                    if took is not None:
                        out[target.label].append(mib * MIB / took)
        finally:
            _remove_made(sides.targets, made)
    name = f"`docker cp` of {mib} MiB"
    return [
        sides.row(
            f"{name} into a running container, median of {runs}",
            statistics.median,
            "B/s",
            values=into,
        ),
        sides.row(
            f"{name} out of it, median of {runs}",
            statistics.median,
            "B/s",
            values=out,
            say_errors=False,
        ),
    ]


def _cp_in(target, cid: str, big: Path, md5: str) -> float:
    _cli(target, "exec", cid, "rm", "-f", "/tmp/big.bin")
    started = time.monotonic()
    check(_cli(target, "cp", str(big), f"{cid}:/tmp/big.bin"), f"{target.label}: cp in")
    took = time.monotonic() - started
    if _md5_in(target, cid) != md5:
        raise RuntimeError(f"{target.label}: cp in: the file arrived changed")
    return took


def _cp_out(target, cid: str, dest: Path, md5: str) -> float:
    dest.unlink(missing_ok=True)
    started = time.monotonic()
    check(_cli(target, "cp", f"{cid}:/tmp/big.bin", str(dest)), f"{target.label}: cp out")
    took = time.monotonic() - started
    ok = _md5_of(dest) == md5
    dest.unlink()
    if not ok:
        raise RuntimeError(f"{target.label}: cp out: the file arrived changed")
    return took


def build_times(ref, ours, runs: int) -> list[StreamRow]:
    """A 5-step ``docker build``: cold (``--no-cache``) and cached, seconds."""
    sides = Sides(ref, ours, "build")
    cold = {ref.label: [], ours.label: []}
    cached = {ref.label: [], ours.label: []}
    with tempfile.TemporaryDirectory(prefix="sdcd-bench-build-") as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(DOCKERFILE)
        (context / "file.txt").write_bytes(os.urandom(64 * 1024))
        try:
            for _ in range(runs):
                for target in sides.live():
                    took = sides.attempt(target, lambda t: _build(t, context, cold=True))
                    if took is not None:
                        cold[target.label].append(took)
                    took = sides.attempt(target, lambda t: _build(t, context, cold=False))
                    if took is not None:
                        cached[target.label].append(took)
        finally:
            for target in sides.targets:
                _cli(target, "rmi", "-f", BUILD_TAG)
    return [
        sides.row(
            f"`docker build` of 5 steps, cold (--no-cache), median of {runs}",
            statistics.median,
            "s",
            values=cold,
        ),
        sides.row(
            f"`docker build` of 5 steps, all cached, median of {runs}",
            statistics.median,
            "s",
            values=cached,
            say_errors=False,
        ),
    ]


def _build(target, context: Path, cold: bool) -> float:
    args = ["build", "-t", BUILD_TAG, *(["--no-cache"] if cold else []), str(context)]
    if cold:  # the previous run's image goes first: nothing of it left dangling
        _cli(target, "rmi", "-f", BUILD_TAG)
    started = time.monotonic()
    result = check(_cli(target, *args, env={"DOCKER_BUILDKIT": "0"}), f"{target.label}: build")
    took = time.monotonic() - started
    hits = result.stdout.decode().count("Using cache")
    if hits != (0 if cold else CACHED_STEPS):
        raise RuntimeError(f"{target.label}: build: {hits} cache hits (cold={cold})")
    if _cli(target, "run", "--rm", BUILD_TAG).stdout != b"built\n":
        raise RuntimeError(f"{target.label}: the built image does not run")
    return took


__all__ = ["IMAGE", "build_times", "cp_throughput"]
