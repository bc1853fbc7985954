"""Streamed JSON responses (pull, push, load, build): dockerd's progress message format.

The status line and headers are sent with the first message, so an error before any
progress is still an ordinary HTTP error with its own status code, as with dockerd.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from twisted.internet import threads

from sdcd.compute.threadwriter import PauseGate
from sdcd.core.images import Progress


def progress_message(p: Progress) -> dict[str, Any]:
    """One ``Progress`` as the JSON object the docker CLI draws progress bars from."""
    message: dict[str, Any] = {"status": p.status}
    if p.id is not None:
        message["id"] = p.id
        detail = {}
        if p.current is not None:
            detail["current"] = p.current
            if p.total:
                detail["total"] = p.total
        message["progressDetail"] = detail
        if p.current is not None and p.total:
            message["progress"] = _bar(p.current, p.total)
    return message


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}TB"


def _bar(current: int, total: int) -> str:
    width = 50
    filled = min(width, int(width * current / total))
    arrow = "=" * max(filled - 1, 0) + (">" if filled else "")
    return f"[{arrow:<{width}}] {_size(current)}/{_size(total)}"


def error_message(text: str) -> dict[str, Any]:
    return {"errorDetail": {"message": text}, "error": text}


class JSONStream:
    """Writes newline-separated JSON objects to a request, starting the response on the
    first one."""

    def __init__(self, request) -> None:
        self._request = request
        self.started = False

    def send(self, message: dict[str, Any]) -> None:
        if self._request.finished or getattr(self._request, "_disconnected", False):
            return
        if not self.started:
            self.started = True
            self._request.setResponseCode(200)
            self._request.setHeader(b"content-type", b"application/json")
        self._request.write(json.dumps(message).encode() + b"\r\n")

    def progress(self, p: Progress) -> None:
        self.send(progress_message(p))


class RequestConsumer:
    """A request as the consumer of a streamed body (export, cp, save) that also stops
    its producer when the client goes away: twisted.web does not tell a request's
    producer so, and without it a thread making the body would run to its end."""

    def __init__(self, request) -> None:
        self._request = request
        self._producer = None
        self._left = False
        request.notifyFinish().addErrback(self._gone)

    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer = None
        if not self._gone_already():
            self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        if not self._gone_already():
            self._request.write(data)

    def _gone_already(self) -> bool:
        # (Klein cancels the handler when the connection goes, before our errback runs)
        return self._left or self._request.channel is None

    def _gone(self, _reason) -> None:
        self._left = True
        if self._producer is not None:
            self._producer.stopProducing()


class ChunkWriter(PauseGate):
    """Writes chunks made in a thread to a request, waiting while the client's
    connection is paused: a slow client slows the archive, not sdcd's memory."""

    def __init__(self, request) -> None:
        super().__init__()
        self._request = RequestConsumer(request)
        self._request.registerProducer(self, True)

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def write_all(self, chunks: Iterator[bytes]) -> None:
        """Pull each chunk from ``chunks`` in a thread and write it."""
        try:
            while not self.stopped:
                chunk = await threads.deferToThread(next, chunks, None)
                if chunk is None:
                    break
                await self.wait()
                if not self.stopped:
                    self._request.write(chunk)
        finally:
            self._request.unregisterProducer()
            close = getattr(chunks, "close", None)
            if close is not None:
                await threads.deferToThread(close)
