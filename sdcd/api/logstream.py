"""``docker logs`` on the wire: a log consumer that writes entries to the HTTP response,
multiplexed (8-byte headers) unless the container has a tty, with the node's log reader
registered as the response's producer so a slow client slows the reader."""

from __future__ import annotations

import struct

from zope.interface import implementer

from sdcd.compute.interface import ILogConsumer

STREAM_IDS = {"stdin": 0, "stdout": 1, "stderr": 2}


def frame(stream: str, data: bytes) -> bytes:
    """The multiplexed stream header: stream id, three zero bytes, big-endian length."""
    return struct.pack(">BxxxI", STREAM_IDS[stream], len(data)) + data


@implementer(ILogConsumer)
class LogWriter:
    """Writes a container's log to a request."""

    def __init__(
        self, request, streams: set[str], timestamps: bool, multiplexed: bool, version
    ) -> None:
        self._request = request
        self._streams = streams
        self._timestamps = timestamps
        self._multiplexed = multiplexed
        self._producer = None
        self._started = False
        self._gone = False
        request.notifyFinish().addErrback(self._client_gone)

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._request.setResponseCode(200)
        content_type = (
            b"application/vnd.docker.multiplexed-stream"
            if self._multiplexed
            else b"application/vnd.docker.raw-stream"
        )
        self._request.setHeader(b"content-type", content_type)
        self._request.write(b"")

    def entry(self, stream: str, data: bytes, time: str) -> None:
        if self._gone or stream not in self._streams:
            return
        self._start()
        if self._timestamps:
            data = time.encode() + b" " + data
        self._request.write(frame(stream, data) if self._multiplexed else data)

    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        self._start()
        if not self._gone:
            self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producer is not None and not self._gone:
            self._request.unregisterProducer()
        self._producer = None

    def finish(self) -> None:
        """Headers go out even for an empty log."""
        if not self._gone:
            self._start()

    def _client_gone(self, _failure) -> None:
        self._gone = True
        if self._producer is not None:
            self._producer.stopProducing()
            self._producer = None
