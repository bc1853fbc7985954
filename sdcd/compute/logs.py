"""Container logs as conmon writes them, read back for ``docker logs``.

conmon's ``k8s-file`` driver writes one line per chunk of output::

    2026-11-28T09:51:51.567687330+00:00 stdout F hello

the time in the node's local zone with nanoseconds, the stream, ``F`` when the text
ended with a newline (which is not written) or ``P`` for a partial line (output that did
not end with a newline when conmon read it, or a line longer than conmon's buffer). Here
partial pieces are joined with the ones that follow on the same stream, so a LogEntry is
one line as the program wrote it, with its ``\\n`` when it had one.

With ``--log-size-max`` conmon does not keep old files: it starts a new, empty file (a
rename over the old one). ``LogFollower`` notices and carries on with the new file.
"""

from __future__ import annotations

import calendar
import collections
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer, threads
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

_STREAMS = {b"stdout": "stdout", b"stderr": "stderr"}
_BLOCK = 64 * 1024
_CHUNK = 256 * 1024
#: A partial line held longer than this is sent as an entry of its own (no newline): a
#: program that never writes one (``dd if=/dev/zero``) must not make sdcd hold all its
#: output. dockerd's json-file cuts lines at 16 KiB the same way.
_PARTIAL_MAX = 64 * 1024


@attrs.frozen
class LogEntry:
    """One line of a container's output. ``time`` is RFC 3339 in UTC with exactly nine
    fractional digits (what ``docker logs -t`` prints)."""

    time: str
    stream: str
    data: bytes


def rfc3339nano(ns: int, fixed: bool = True) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC. ``fixed``: always nine digits (docker
    logs -t); otherwise trailing zeros trimmed, as Go's RFC3339Nano (docker inspect)."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    digits = f"{frac:09d}"
    if not fixed:
        digits = digits.rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


class _Clock:
    """Parses conmon's timestamps; remembers the last second seen, as consecutive lines
    nearly always share it."""

    def __init__(self) -> None:
        self._key = b""
        self._secs = 0
        self._prefix = ""

    def parse(self, ts: bytes) -> tuple[int, str] | None:
        """(nanoseconds since the epoch, RFC 3339 UTC string), None when malformed."""
        # 2026-11-28T09:51:51.567687330+00:00 (the fraction may in theory be shorter)
        if len(ts) < 25 or ts[10:11] != b"T" or ts[19:20] != b".":
            return None
        zone_at = len(ts) - 6
        key = ts[:19] + ts[zone_at:]
        try:
            frac_text = ts[20:zone_at]
            frac = int(frac_text.ljust(9, b"0")[:9])
            if key != self._key:
                self._secs, self._prefix = self._second(ts, zone_at)
                self._key = key
        except ValueError:
            return None
        ns = self._secs * 1_000_000_000 + frac
        return ns, f"{self._prefix}.{frac:09d}Z"

    @staticmethod
    def _second(ts: bytes, zone_at: int) -> tuple[int, str]:
        fields = (int(ts[0:4]), int(ts[5:7]), int(ts[8:10]))
        clock = (int(ts[11:13]), int(ts[14:16]), int(ts[17:19]))
        zone = ts[zone_at:]
        if zone[0:1] not in (b"+", b"-") or zone[3:4] != b":":
            raise ValueError("bad zone")
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        if zone[0:1] == b"-":
            offset = -offset
        secs = calendar.timegm((*fields, *clock, 0, 0, 0)) - offset
        if offset == 0:
            return secs, ts[:19].decode()
        return secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


class _Parser:
    """Turns log lines into entries, holding partial lines until their end arrives."""

    def __init__(self) -> None:
        self._clock = _Clock()
        self._pending: dict[str, tuple[int, str, list[bytes]]] = {}
        self._completed: set[str] = set()

    def feed(self, lines: list[bytes]) -> list[tuple[int, LogEntry, bool]]:
        """Entries completed by ``lines`` as (ns, entry, first_of_its_stream)."""
        out = []
        for line in lines:
            parts = line.split(b" ", 3)
            if len(parts) < 3:
                continue
            stream = _STREAMS.get(parts[1])
            when = self._clock.parse(parts[0])
            if stream is None or when is None:
                continue
            data = parts[3] if len(parts) == 4 else b""
            held = self._pending.pop(stream, None)
            if held is None:
                held = (when[0], when[1], [])
            held[2].append(data)
            if parts[2] == b"P" and sum(map(len, held[2])) < _PARTIAL_MAX:
                self._pending[stream] = held
            elif parts[2] == b"P":
                out.append(self._entry(stream, held, b""))
            else:
                out.append(self._entry(stream, held, b"\n"))
        return out

    def flush(self) -> list[tuple[int, LogEntry, bool]]:
        """Partial lines still held, as entries without a trailing newline."""
        held = sorted(self._pending.items(), key=lambda item: item[1][0])
        self._pending.clear()
        return [self._entry(stream, h, b"") for stream, h in held]

    @property
    def holding(self) -> bool:
        return bool(self._pending)

    def _entry(
        self, stream: str, held: tuple[int, str, list[bytes]], end: bytes
    ) -> tuple[int, LogEntry, bool]:
        first = stream not in self._completed
        self._completed.add(stream)
        return held[0], LogEntry(held[1], stream, b"".join(held[2]) + end), first


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The newline-terminated lines of ``data`` and how many bytes they span."""
    cut = data.rfind(b"\n")
    if cut < 0:
        return [], 0
    return data[:cut].split(b"\n"), cut + 1


def _read_all(fd: int, size: int, parser: _Parser) -> tuple[list, int]:
    entries, offset, carry = [], 0, b""
    while offset + len(carry) < size:
        chunk = os.pread(fd, min(1 << 20, size - offset - len(carry)), offset + len(carry))
        if not chunk:
            break
        lines, used = _complete_lines(carry + chunk)
        entries += parser.feed(lines)
        offset += used
        carry = (carry + chunk)[used:]
    return entries, offset


def _read_tail(fd: int, size: int, tail: int, flush: bool) -> tuple[list, int, _Parser]:
    """The last ``tail`` entries, reading backwards in growing blocks. An entry is only
    trusted when an earlier entry of its stream was also read (its head cannot lie
    before the block) or the block reaches the start of the file."""
    block = _BLOCK
    while True:
        start = max(0, size - block)
        data = os.pread(fd, size - start, start)
        if start > 0:
            data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
        lines, used = _complete_lines(data)
        parser = _Parser()
        entries = parser.feed(lines) + (parser.flush() if flush else [])
        kept = entries[-tail:]
        trusted = start == 0 or (len(entries) >= tail and not any(e[2] for e in kept))
        if trusted:
            return kept, size - len(data) + used, parser
        block *= 4


def _history(
    fd: int, tail: int | None, flush: bool
) -> tuple[list[tuple[int, LogEntry, bool]], int, _Parser]:
    """Entries already in the file, the offset after the last complete line, and the
    parser (holding any partial lines at the end unless ``flush``)."""
    size = os.fstat(fd).st_size
    if tail is None:
        parser = _Parser()
        entries, offset = _read_all(fd, size, parser)
    elif tail <= 0:
        parser = _Parser()
        start = max(0, size - _BLOCK)
        offset = start + _complete_lines(os.pread(fd, size - start, start))[1]
        entries = []
    else:
        entries, offset, parser = _read_tail(fd, size, tail, flush)
    if flush:
        entries = entries + parser.flush()
    return entries, offset, parser


def _ns(seconds: float | str | None) -> int | None:
    """Unix seconds as nanoseconds. A decimal string ("1700000000.123456789", what the
    docker CLI sends) is taken exactly: a float cannot hold nanoseconds of today."""
    if seconds is None:
        return None
    if isinstance(seconds, str):
        whole, _, frac = seconds.partition(".")
        return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    return round(seconds * 1_000_000_000)


def _window(since: float | None, until: float | None) -> tuple[int | None, int | None]:
    return _ns(since), _ns(until)


def _inside(ns: int, since_ns: int | None, until_ns: int | None) -> bool:
    return (since_ns is None or ns >= since_ns) and (until_ns is None or ns <= until_ns)


def read_entries(
    path: Path, since: float | None = None, until: float | None = None, tail: int | None = None
) -> list[LogEntry]:
    """A container's log as entries (blocking: call it in a thread). ``tail`` keeps the
    last N entries, read from the end of the file; ``since``/``until`` (unix seconds,
    inclusive) then filter them, as dockerd applies them. A missing file is empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        entries = _history(fd, tail, flush=True)[0]
    finally:
        os.close(fd)
    since_ns, until_ns = _window(since, until)
    return [e for ns, e, _ in entries if _inside(ns, since_ns, until_ns)]


@implementer(IPushProducer)
class LogFollower:
    """Sends a container's log entries to an ILogConsumer: first those already written
    (``tail``, ``since``, ``until``), then — with ``follow``
    — new ones as conmon writes them (polled every ``interval`` seconds), until
    ``stopProducing`` is called, an entry is past ``until``, or the container exits
    (``container_exited()``, or ``exited`` — a Deferred the follower consumes — firing;
    the log is drained to its end first).
    History and the followed part come from one open file at one offset: no line is
    lost or repeated between them.

    A push producer: while paused it neither delivers nor reads, so at most one chunk
    (256 KiB) of the file is held for a slow consumer. A partial line (no newline yet)
    is held while more output follows; after one quiet interval it is sent as it is.
    ``done`` fires when the stream has ended.
    """

    def __init__(
        self,
        path: Path,
        reactor: Any,
        *,
        since: float | None = None,
        until: float | None = None,
        tail: int | None = None,
        follow: bool = True,
        exited: defer.Deferred | None = None,
        interval: float = 0.15,
    ) -> None:
        self.path = Path(path)
        self.consumer: Any = None
        self.reactor = reactor
        self.follow = follow
        self.interval = interval
        self.done: defer.Deferred[None] = defer.Deferred()
        self._tail = tail
        self._stop_on_exit = True
        self._since_ns, self._until_ns = _window(since, until)
        self._queue: collections.deque[tuple[int, LogEntry]] = collections.deque()
        self._parser = _Parser()
        self._fd: int | None = None
        self._ino: int | None = None
        self._offset = 0
        self._paused = False
        self._busy = False
        self._finished = False
        self._exiting = False
        self._idle = False
        #: Whether the last read began after the exit was known: only such a read finding
        #: nothing proves the log is complete (conmon writes the exit file after draining).
        self._fresh = False
        self._timer: Any = None
        self._until_timer: Any = None
        if exited is not None:
            exited.addBoth(self._on_exit)

    # -- control -------------------------------------------------------------------------

    def run(self, consumer: Any, stop_on_exit: bool = True) -> defer.Deferred[None]:
        """Send entries to ``consumer`` (an ILogConsumer: ``entry(stream, data, time)``,
        ``registerProducer``, ``unregisterProducer``); returns ``done``. With
        ``stop_on_exit`` false, the container's exit does not end the stream (a container
        restarted by policy writes on into the same log)."""
        self.consumer = consumer
        self._stop_on_exit = stop_on_exit
        self.consumer.registerProducer(self, True)
        self._busy = True
        d = self._in_thread(self._load_history)
        d.addCallbacks(self._history_loaded, self._failed)
        return self.done

    def container_exited(self) -> None:
        """The container has exited: send what is left in the log, then end."""
        if self._stop_on_exit:
            self._drain_and_end()

    def _drain_and_end(self) -> None:
        self._exiting = True
        self._kick()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._finish()

    # -- reading -------------------------------------------------------------------------

    def _in_thread(self, fn: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn)

    def _load_history(self) -> list[tuple[int, LogEntry, bool]]:
        """With ``tail``, the last entries (read from the end). Without, nothing here: the
        chunked reads that follow start at the top, so memory stays bounded."""
        if not self._open() or self._tail is None:
            return []
        entries, self._offset, self._parser = _history(self._fd, self._tail, flush=not self.follow)
        return entries

    def _open(self) -> bool:
        """Open the log (it may not exist yet: conmon creates it when it starts)."""
        if self._fd is not None:
            return True
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        self._ino = os.fstat(self._fd).st_ino
        self._offset = 0
        return True

    def _read_more(self) -> tuple[list[tuple[int, LogEntry, bool]], bool]:
        """New entries and whether anything moved (data read, or the file replaced)."""
        if not self._open():
            return [], False
        data = os.pread(self._fd, _CHUNK, self._offset)
        lines, used = _complete_lines(data)
        if used == 0 and len(data) == _CHUNK:  # a line longer than a chunk: take it
            lines, used = [data], len(data)
        if used:
            self._offset += used
            return self._parser.feed(lines), True
        return [], self._check_replaced()

    def _check_replaced(self) -> bool:
        """After EOF: did conmon start a new file (--log-size-max) or truncate this one?"""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        if st.st_ino != self._ino:
            os.close(self._fd)
            self._fd = None
            return self._open()
        if st.st_size < self._offset:
            self._offset = 0
            return True
        return False

    def _history_loaded(self, entries: list) -> None:
        self._busy = False
        if self._finished:
            self._close()
            return
        self._enqueue(entries, apply_since=True)
        if not self.follow:  # read to the end of the file, then stop
            self._exiting = self._fresh = True
        elif self._until_ns is not None:
            # Following ends at ``until`` (what was written up to then is still sent).
            delay = max(0.0, self._until_ns / 1e9 - time.time())
            self._until_timer = self.reactor.callLater(delay, self._drain_and_end)
        self._pump()

    def _read_done(self, result: tuple[list, bool]) -> None:
        self._busy = False
        if self._finished:
            self._close()
            return
        entries, moved = result
        self._enqueue(entries, apply_since=True)
        if not moved and self._parser.holding and (self._idle or self._fresh):
            self._enqueue(self._parser.flush(), apply_since=True)
        self._idle = not moved
        self._pump()

    def _enqueue(self, entries: list, apply_since: bool) -> None:
        for ns, entry, _ in entries:
            if apply_since and self._since_ns is not None and ns < self._since_ns:
                continue
            self._queue.append((ns, entry))

    # -- delivery ------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._finished or self._busy:
            return
        while self._queue and not self._paused:
            ns, entry = self._queue.popleft()
            if self._until_ns is not None and ns > self._until_ns:
                self._finish()
                return
            self.consumer.entry(entry.stream, entry.data, entry.time)
            if self._finished:
                return
        if self._paused or self._queue:
            return
        if self._exiting and self._idle and self._fresh and not self._parser.holding:
            self._finish()
            return
        if self._idle and not (self._exiting and not self._fresh):
            self._schedule(self.interval)
        else:
            self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self._timer is None or not self._timer.active():
            self._timer = self.reactor.callLater(delay, self._read)

    def _kick(self) -> None:
        """Read now rather than at the next tick (used when the container exits)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._timer = None
            self._schedule(0)

    def _read(self) -> None:
        self._timer = None
        if self._finished or self._busy or self._paused:
            return
        self._busy = True
        self._fresh = self._exiting
        self._in_thread(self._read_more).addCallbacks(self._read_done, self._failed)

    def _on_exit(self, _result: Any) -> None:
        """``exited`` fired (or failed: then nothing more will come either)."""
        if not self._finished:
            self.container_exited()

    def _failed(self, failure: Any) -> None:
        self._busy = False
        if self._finished:
            self._close()
        else:
            self._finished = True
            self._cleanup()
            self.done.errback(failure)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cleanup()
        self.done.callback(None)

    def _cleanup(self) -> None:
        for timer in (self._timer, self._until_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._queue.clear()
        if not self._busy:
            self._close()
        if self.consumer is not None:
            self.consumer.unregisterProducer()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
