"""Bytes made in a thread, written to a Twisted consumer with back-pressure.

The thread calls ``write(chunk)``; the chunk is written on the reactor thread and the call
returns once the consumer would take more (at once, unless it has paused us). The
consumer sees a push producer: ``pauseProducing`` holds the thread at its next write,
``stopProducing`` makes that write raise ``ExportStopped`` so the thread ends its walk.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class ExportStopped(Exception):
    """The consumer went away: the thread stops writing."""


@implementer(IPushProducer)
class PauseGate:
    """A push producer whose writer waits: ``wait()`` is a Deferred that fires once the
    consumer no longer has us paused (at once when it does not)."""

    def __init__(self) -> None:
        self._paused: defer.Deferred | None = None
        self._stopped = False

    def wait(self) -> defer.Deferred:
        return self._paused if self._paused is not None else defer.succeed(None)

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = defer.Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()


class ThreadedWriter(PauseGate):
    """Registered with ``consumer`` as a push producer for as long as the thread writes."""

    def __init__(self, reactor: Any, consumer: Any) -> None:
        super().__init__()
        self._reactor = reactor
        self._consumer = consumer
        consumer.registerProducer(self, True)

    def write(self, chunk: bytes) -> None:
        """From the thread: write ``chunk``, waiting while the consumer is paused."""
        threads.blockingCallFromThread(self._reactor, self._deliver, bytes(chunk))

    def _deliver(self, chunk: bytes) -> defer.Deferred | None:
        if self._stopped:
            raise ExportStopped()
        self._consumer.write(chunk)
        if self._paused is not None:
            return self._paused
        return None

    def done(self) -> None:
        """On the reactor thread, when the export is over for its caller (also when the
        wait for the thread was cancelled: a thread still writing stops at its next
        write)."""
        self._stopped = True
        self.resumeProducing()
        self._consumer.unregisterProducer()
