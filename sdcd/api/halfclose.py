"""TLS with half-close, for hijacked streams.

Twisted's TLS wrapper ends the whole connection when the peer sends ``close_notify`` or
a bare FIN. A docker client half-closes as soon as it has no more stdin to send (at
once, for ``docker run`` without ``-i``) and still expects the container's output.
Once a connection is hijacked, this wrapper turns the peer's close_notify or FIN into
``readConnectionLost`` on the stream and keeps writing; our own ``loseConnection``
then sends close_notify and closes the TCP connection. Until then it behaves exactly as
Twisted's TLS wrapper.
"""

from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

#: How long a finished hijacked connection waits for the client's FIN before closing.
CLOSE_GRACE = 30.0


@implementer(IHalfCloseableProtocol)
class HalfCloseTLSProtocol(TLSMemoryBIOProtocol):
    """A TLS server connection that a hijacked stream can take over."""

    _stream = None
    _peer_closed = False
    _tcp_read_closed = False
    _sent_close_notify = False
    _close_call = None

    def hijack(self, stream) -> None:
        """From now on application bytes go to ``stream.dataReceived`` and the peer's end
        of input to ``stream.readConnectionLost``."""
        self._stream = stream

    def _flushReceiveBIO(self):
        if self._stream is None:
            return super()._flushReceiveBIO()
        while not self._lostTLSConnection and not self._peer_closed:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                self._peer_finished()
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                break
            else:
                if not self._aborted:
                    self._stream.dataReceived(data)
        self._flushSendBIO()

    def dataReceived(self, data: bytes) -> None:
        if self._peer_closed:
            return
        super().dataReceived(data)

    def _peer_finished(self) -> None:
        if self._peer_closed:
            return
        self._peer_closed = True
        self._stream.readConnectionLost()

    # IHalfCloseableProtocol, for the TCP transport under us.

    def readConnectionLost(self) -> None:
        self._tcp_read_closed = True
        if self._stream is None or self._sent_close_notify:
            self.transport.loseConnection()
        else:
            self._peer_finished()

    def writeConnectionLost(self) -> None:
        pass

    def _shutdownTLS(self):
        super()._shutdownTLS()
        if self._tcp_read_closed or self._peer_closed:
            # The peer will send nothing more (no close_notify reply is coming): close
            # the TCP connection after our close_notify.
            self.transport.loseConnection()
            return
        if self._stream is None or self._aborted:
            return
        # A hijacked stream is over while the client may still send: as dockerd, FIN
        # right after our close_notify, then read (and drop) until the client's FIN —
        # closing with its bytes unread would send a RST that can cut output it has not
        # read yet — but not for ever: no idle timeout applies any more.
        self._sent_close_notify = True
        self.transport.loseWriteConnection()
        self._close_call = self.transport.reactor.callLater(
            CLOSE_GRACE, self.transport.loseConnection
        )

    def connectionLost(self, reason):
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        super().connectionLost(reason)


class HalfCloseTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` making ``HalfCloseTLSProtocol`` connections."""

    protocol = HalfCloseTLSProtocol


@implementer(IHalfCloseableProtocol)
class _PlainInput:
    """Plain TCP: the transport's protocol for a hijacked connection. Input and the
    peer's FIN go to the stream; the end of the connection still reaches the HTTP
    channel, so the request's ``notifyFinish`` fires as it does over TLS."""

    def __init__(self, stream, channel) -> None:
        self._stream = stream
        self._channel = channel

    def dataReceived(self, data: bytes) -> None:
        self._stream.dataReceived(data)

    def readConnectionLost(self) -> None:
        self._stream.readConnectionLost()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self._channel.connectionLost(reason)


def hijack_transport(transport, stream) -> None:
    """Point a connection's input at ``stream``: a TLS connection of ours, or a plain
    TCP one (whose protocol, the HTTP channel, is replaced)."""
    if isinstance(transport, HalfCloseTLSProtocol):
        transport.hijack(stream)
    elif isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = _PlainInput(stream, transport.wrappedProtocol)
    elif hasattr(transport, "protocol"):
        transport.protocol = _PlainInput(stream, transport.protocol)
