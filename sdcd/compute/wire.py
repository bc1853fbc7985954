"""The internal API between sdcd and a compute node's agent: frames over mutual TLS.

Both ends speak the same small framing: one type byte, a 4-byte big-endian length,
the payload. A connection carries a sequence of calls, one at a time: the caller sends a
``CALL`` frame (JSON ``{"method", "args"}``); the agent answers ``RESULT`` (JSON
``{"result": ...}``) or ``ERROR`` (JSON ``{"message", "kind"}``, a ``ComputeError``).
Plain calls leave the connection idle for the next call. Stream calls (logs, attach,
exec, export, archive get/put, events, blob reads) own their connection and exchange
the frames below before their ``RESULT``/``ERROR``; the agent then closes it.

Why not HTTP: a stdio session needs both directions at once with half-close, and a
call per frame keeps a ``docker run``'s node calls on pooled, already-verified TLS
connections. Back-pressure is TCP's: a reader that pauses stops reading its transport.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet import protocol

CALL = b"C"
RESULT = b"R"
ERROR = b"X"
#: A node event (subscribe).
EVENT = b"V"
#: Output of a process or a log entry, per stream (logs: RFC 3339 time, newline, data).
STDOUT = b"1"
STDERR = b"2"
#: The session is joined (JSON: {"pid"}).
JOINED = b"J"
#: The process's output ended (the sink's ``end``).
END = b"E"
#: Caller → agent: stdin bytes, stdin closed, detach.
STDIN = b"I"
STDIN_CLOSED = b"Z"
DETACH = b"D"
#: Raw bytes (tar streams, blobs) and, from the caller, their end.
DATA = b"B"
DATA_END = b"F"

STREAM_TYPES = {STDOUT: "stdout", STDERR: "stderr"}
STREAM_FRAMES = {"stdout": STDOUT, "stderr": STDERR}

_HEADER = struct.Struct(">cI")
#: The largest frame either end accepts (a node's container list is the biggest JSON).
MAX_FRAME = 64 * 1024 * 1024
#: Bytes per data frame when a stream is cut into frames.
CHUNK = 64 * 1024


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    return _HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, value: Any) -> bytes:
    """A frame carrying compact JSON."""
    return frame(kind, json.dumps(value, separators=(",", ":")).encode())


def log_payload(time: str, data: bytes) -> bytes:
    """A log entry's payload: its time, a newline, its bytes."""
    return time.encode() + b"\n" + data


def split_log_payload(payload: bytes) -> tuple[str, bytes]:
    time, _, data = payload.partition(b"\n")
    return time.decode(), data


class ProtocolViolation(Exception):
    """The peer sent something this framing does not allow."""


class FrameProtocol(protocol.Protocol):
    """Cuts the byte stream into frames and hands each to ``frameReceived``. A frame
    larger than ``MAX_FRAME`` ends the connection."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._held = False

    def hold(self) -> None:
        """Deliver no more frames (those already received wait) until ``release``: a
        consumer that pauses in the middle of a received batch gets nothing more."""
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._drain()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._drain()

    def _drain(self) -> None:
        buffer = self._buffer
        offset = 0
        while not self._held and len(buffer) - offset >= _HEADER.size:
            kind, length = _HEADER.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                self._buffer = bytearray()
                self.protocolViolation(f"frame of {length} bytes is too large")
                return
            end = offset + _HEADER.size + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[offset + _HEADER.size : end])
            offset = end
            try:
                self.frameReceived(kind, payload)
            except ProtocolViolation as e:
                self._buffer = bytearray()
                self.protocolViolation(str(e))
                return
            if self._buffer is not buffer:  # reset by the handler (connection over)
                return
        del buffer[:offset]

    def frameReceived(self, kind: bytes, payload: bytes) -> None:
        raise NotImplementedError

    def protocolViolation(self, why: str) -> None:
        """The peer broke the framing: drop the connection."""
        if self.transport is not None:
            self.transport.abortConnection()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.transport.write(frame(kind, payload))

    def send_json(self, kind: bytes, value: Any) -> None:
        self.transport.write(json_frame(kind, value))


def decode_json(payload: bytes) -> Any:
    """A JSON payload, or ``ProtocolViolation``."""
    try:
        return json.loads(payload)
    except ValueError:
        raise ProtocolViolation("a frame's JSON does not parse") from None
