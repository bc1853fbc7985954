"""``docker events`` across several sdcd instances: what one instance's API did (create,
destroy, rename, exec...) reaches the ``docker events`` clients of every other.

One Redis stream (``<prefix>events``, capped) carries each instance's API events; every
instance reads it with a blocking ``XREAD`` on a connection of its own and delivers what
the others sent. Node events (start, die, oom...) do not travel here: every instance
hears them from the agents itself. A stream rather than pub/sub: a reader that was away
for a moment (Redis restarting) goes on from the last entry it saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

#: Entries kept in the stream (about; trimmed as Redis finds cheap).
KEEP = 10000
#: Milliseconds one XREAD waits for news before asking again.
BLOCK_MS = 2000


class RedisEventBus:
    """``send`` an account's event to the other instances; ``start(deliver)`` calls
    ``deliver(login, event)`` for every event another instance sent."""

    log = Logger()

    def __init__(self, pool: Any, reader: Any, prefix: str, instance: str, reactor: Any) -> None:
        self._pool = pool
        self._reader = reader
        self._key = prefix + "events"
        self._instance = instance
        self._reactor = reactor
        self._running = False
        self._loop: defer.Deferred | None = None

    def send(self, login: str, event: dict) -> None:
        message = json.dumps({"from": self._instance, "login": login, "event": event})
        d = self._pool.execute_command("XADD", self._key, "MAXLEN", "~", KEEP, "*", "m", message)
        d.addErrback(lambda f: self.log.failure("sending an event to the other instances", f))

    async def start(self, deliver: Callable[[str, dict], None]) -> None:
        """Read from the stream's current end on; returns once reading."""
        last = await self._last_id()
        self._running = True
        self._loop = defer.ensureDeferred(self._read(deliver, last))

    async def _last_id(self) -> str:
        newest = await self._pool.execute_command("XREVRANGE", self._key, "+", "-", "COUNT", 1)
        return newest[0][0] if newest else "0-0"

    async def _read(self, deliver: Callable[[str, dict], None], last: str) -> None:
        while self._running:
            try:
                reply = await self._reader.execute_command(
                    "XREAD", "COUNT", 256, "BLOCK", BLOCK_MS, "STREAMS", self._key, last
                )
            except Exception as e:
                if not self._running:
                    return
                self.log.warn("reading other instances' events: {e}", e=e)
                await task.deferLater(self._reactor, 1.0, lambda: None)
                continue
            for _key, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    self._deliver(deliver, fields)

    def _deliver(self, deliver: Callable[[str, dict], None], fields: list) -> None:
        try:
            message = json.loads(dict(zip(fields[::2], fields[1::2], strict=True))["m"])
            if message["from"] != self._instance:
                deliver(message["login"], message["event"])
        except (ValueError, KeyError, TypeError):
            self.log.warn("dropped a malformed event from the stream")

    async def stop(self) -> None:
        self._running = False
        await self._reader.disconnect()
        if self._loop is not None:
            await self._loop


__all__ = ["RedisEventBus"]
