"""A streamed HTTP response body with an idle timeout: what the registry client and a
node's blob cache both read layers with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss


class BodyCollector(Protocol):
    """Streams a response body to ``sink`` (with back-pressure when the sink can pause
    its producer), failing with ``error`` when no data arrives for ``idle`` seconds or
    the body is cut short."""

    def __init__(
        self,
        sink: Callable[[bytes], None],
        done: defer.Deferred,
        reactor: Any,
        idle: float,
        error: type[Exception] = Exception,
    ) -> None:
        self._error = error
        self._sink = sink
        self._done = done
        self._reactor = reactor
        self._idle = idle
        self._timer = None

    def connectionMade(self) -> None:
        self._timer = self._reactor.callLater(self._idle, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)
        try:
            self._sink(data)
        except Exception as e:  # the sink refused the data: stop reading
            self.transport.stopProducing()
            self._finish(e)

    def _timed_out(self) -> None:
        self._timer = None
        self.transport.stopProducing()
        self._finish(self._error(f"the server stopped sending for {self._idle:.0f}s"))

    def connectionLost(self, reason) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finish(None)
        else:
            self._finish(self._error(f"download interrupted: {reason.getErrorMessage()}"))

    def _finish(self, problem: Exception | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._done.called:
            return
        if problem is None:
            self._done.callback(None)
        else:
            self._done.errback(problem)
