"""Reading conmon's k8s-file logs: times, partial lines, tail from the end, since/until,
following with back-pressure and across conmon's log rotation. Synthetic files; the
real conmon is in test_conmon.py."""

from __future__ import annotations

import calendar
import os

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from sdcd.api.logstream import frame
from sdcd.compute.logs import LogEntry, LogFollower, read_entries, rfc3339nano

T0 = calendar.timegm((2026, 1, 2, 3, 4, 5))


def stamp(seconds: float, nanos: int = 0, zone: str = "+00:00") -> str:
    """A conmon timestamp for T0 + seconds, shown in ``zone``."""
    sign = -1 if zone[0] == "-" else 1
    offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    local = rfc3339nano((T0 + int(seconds) + offset) * 10**9 + nanos)
    return local[:-1] + zone


def line(seconds: float, stream: str, tag: str, text: str, zone: str = "+00:00") -> bytes:
    return f"{stamp(seconds, zone=zone)} {stream} {tag} {text}\n".encode()


def data(entries):
    return [(e.stream, e.data) for e in entries]


def test_times_converted_to_utc(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(
        f"{stamp(0, 5, '+02:00')} stdout F east\n"
        f"{stamp(1, 123456789, '-05:30')} stdout F west\n"
        f"{stamp(2)} stdout F utc\n".encode()
    )
    entries = read_entries(log)
    assert [e.time for e in entries] == [
        "2026-01-02T03:04:05.000000005Z",
        "2026-01-02T03:04:06.123456789Z",
        "2026-01-02T03:04:07.000000000Z",
    ]
    assert data(entries) == [("stdout", b"east\n"), ("stdout", b"west\n"), ("stdout", b"utc\n")]


def test_rfc3339nano_trimmed_like_go():
    assert rfc3339nano(T0 * 10**9 + 120_000_000, fixed=False) == "2026-01-02T03:04:05.12Z"
    assert rfc3339nano(T0 * 10**9, fixed=False) == "2026-01-02T03:04:05Z"


def test_partial_lines_joined_per_stream(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(
        line(0, "stdout", "P", "hel")
        + line(0, "stderr", "P", "oo")
        + line(1, "stdout", "P", "lo ")
        + line(1, "stderr", "F", "ps")
        + line(2, "stdout", "F", "world")
        + line(3, "stdout", "F", "")
        + line(4, "stderr", "P", "no newline")
    )
    entries = read_entries(log)
    assert data(entries) == [
        ("stderr", b"oops\n"),
        ("stdout", b"hello world\n"),
        ("stdout", b"\n"),
        ("stderr", b"no newline"),
    ]
    assert entries[1].time.startswith("2026-01-02T03:04:05.")  # the line's first piece


def test_a_line_without_end_is_cut_not_held_whole(tmp_path):
    """``dd if=/dev/zero`` never writes a newline: the reader cuts what it holds at 64 KiB
    instead of keeping the whole output in memory."""
    log = tmp_path / "log"
    piece = "z" * 8192
    log.write_bytes(b"".join(line(i, "stdout", "P", piece) for i in range(100)))
    entries = read_entries(log)
    assert b"".join(e.data for e in entries) == piece.encode() * 100
    assert len(entries) > 10 and max(len(e.data) for e in entries) <= 64 * 1024


def test_garbage_and_unfinished_last_line_skipped(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"junk\n" + line(0, "stdout", "F", "ok") + line(1, "stdout", "F", "x")[:-9])
    assert data(read_entries(log)) == [("stdout", b"ok\n")]
    assert read_entries(tmp_path / "missing") == []


def big_log(tmp_path, count: int):
    """``count`` lines, every tenth one split into three partial pieces."""
    chunks = []
    for i in range(count):
        if i % 10 == 0:
            chunks.append(line(i, "stdout", "P", f"{i}-a" + "x" * 300))
            chunks.append(line(i, "stderr", "F", f"err {i}"))
            chunks.append(line(i, "stdout", "P", "-b"))
            chunks.append(line(i, "stdout", "F", "-c"))
        else:
            chunks.append(line(i, "stdout", "F", f"line {i} " + "y" * 100))
    path = tmp_path / "big"
    path.write_bytes(b"".join(chunks))
    return path


@pytest.mark.parametrize("tail", [1, 2, 3, 11, 500, 2000, 5000])
def test_tail_reads_from_the_end_and_agrees_with_a_full_read(tmp_path, tail):
    path = big_log(tmp_path, 3000)
    assert path.stat().st_size > 4 * 64 * 1024
    everything = read_entries(path)
    assert read_entries(path, tail=tail) == everything[-tail:]
    assert read_entries(path, tail=0) == []


def test_tail_then_since_until(tmp_path):
    path = big_log(tmp_path, 100)
    assert [e.data for e in read_entries(path, since=T0 + 98)] == [
        b"line 98 " + b"y" * 100 + b"\n",
        b"line 99 " + b"y" * 100 + b"\n",
    ]
    assert len(read_entries(path, until=T0 + 1)) == 3  # 0 (stderr + stdout) and 1
    # tail first, then since: dockerd's order
    assert read_entries(path, tail=5, since=T0 + 50) == read_entries(path, tail=5)
    assert read_entries(path, tail=5, since=T0 + 200) == []


def test_frame():
    assert frame("stdout", b"hi\n") == b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
    assert frame("stderr", b"x" * 256)[:8] == b"\x02\x00\x00\x00\x00\x00\x01\x00"


class Collector:
    def __init__(self, pause_after: int | None = None) -> None:
        self.got: list[tuple[str, bytes, str]] = []
        self.producer = None
        self.registered = self.unregistered = False
        self.pause_after = pause_after

    def entry(self, stream, data, time):
        self.got.append((stream, data, time))
        if self.pause_after is not None and len(self.got) >= self.pause_after:
            self.producer.pauseProducing()

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer, self.registered = producer, True

    def unregisterProducer(self):
        self.unregistered = True

    def texts(self):
        return [d for _, d, _ in self.got]


def wait(seconds: float):
    return task.deferLater(reactor, seconds)


def append(path, *chunks: bytes) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(chunks))


@pytest_twisted.ensureDeferred
async def test_follow_history_then_new_lines_then_drain_on_exit(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(line(0, "stdout", "F", "old1") + line(1, "stdout", "F", "old2"))
    follower = LogFollower(path, reactor, tail=1, interval=0.02)
    collector = Collector()
    done = follower.run(collector)
    await wait(0.1)
    assert collector.texts() == [b"old2\n"]
    append(path, line(2, "stdout", "P", "new"))
    await wait(0.02)
    append(path, line(3, "stdout", "F", "line"), line(4, "stderr", "F", "e"))
    await wait(0.1)
    assert collector.texts() == [b"old2\n", b"newline\n", b"e\n"]
    append(path, line(5, "stdout", "F", "last"))
    follower.container_exited()
    await done
    assert collector.texts()[-1] == b"last\n" and collector.unregistered


@pytest_twisted.ensureDeferred
async def test_follow_sends_a_lone_partial_line_after_a_quiet_interval(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"")
    follower = LogFollower(path, reactor, interval=0.02)
    collector = Collector()
    done = follower.run(collector)
    append(path, line(0, "stdout", "P", "/ # "))
    await wait(0.2)
    assert collector.texts() == [b"/ # "]
    follower.stopProducing()
    await done


@pytest_twisted.ensureDeferred
async def test_follow_not_following_ends_after_history(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(line(0, "stdout", "F", "a") + line(1, "stdout", "P", "b"))
    collector = Collector()
    await LogFollower(path, reactor, follow=False).run(collector)
    assert collector.texts() == [b"a\n", b"b"]


@pytest_twisted.ensureDeferred
async def test_follow_exit_already_known_and_missing_file(tmp_path):
    from twisted.internet import defer

    collector = Collector()
    follower = LogFollower(tmp_path / "none", reactor, exited=defer.succeed(None))
    await follower.run(collector)
    assert collector.texts() == [] and collector.unregistered


@pytest_twisted.ensureDeferred
async def test_follow_across_rotation(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(line(0, "stdout", "F", "one"))
    follower = LogFollower(path, reactor, interval=0.02)
    collector = Collector()
    done = follower.run(collector)
    await wait(0.1)
    # conmon's --log-size-max: the last lines go to the old file, then a new file replaces it
    append(path, line(1, "stdout", "F", "two"))
    fresh = tmp_path / "log.tmp"
    fresh.write_bytes(line(2, "stdout", "F", "three"))
    os.replace(fresh, path)
    await wait(0.15)
    append(path, line(3, "stdout", "F", "four"))
    await wait(0.1)
    follower.container_exited()
    await done
    assert collector.texts() == [b"one\n", b"two\n", b"three\n", b"four\n"]


@pytest_twisted.ensureDeferred
async def test_paused_follower_reads_no_further(tmp_path):
    path = big_log(tmp_path, 20000)  # ~2.5 MB
    collector = Collector(pause_after=10)
    follower = LogFollower(path, reactor, tail=None, follow=True, interval=0.01)
    done = follower.run(collector)
    await wait(0.3)
    assert len(collector.got) == 10
    # What is held is bounded by one history read here; the point is no further reading.
    offset = follower._offset
    await wait(0.1)
    assert follower._offset == offset
    collector.pause_after = None
    follower.resumeProducing()
    follower.container_exited()
    await done
    assert len(collector.got) == len(read_entries(path))


@pytest_twisted.ensureDeferred
async def test_until_ends_a_follow(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(line(0, "stdout", "F", "in") + line(10, "stdout", "F", "out"))
    collector = Collector()
    await LogFollower(path, reactor, until=T0 + 5).run(collector)
    assert collector.texts() == [b"in\n"]


def test_log_entry_shape():
    entry = LogEntry("2026-01-02T03:04:05.000000000Z", "stdout", b"x\n")
    assert (entry.time, entry.stream, entry.data) == (
        "2026-01-02T03:04:05.000000000Z",
        "stdout",
        b"x\n",
    )
