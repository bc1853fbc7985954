"""Exec records in Redis, mixed into ``RedisStateStore``.

Layout: ``execs:<login>`` (hash exec id -> ExecRecord JSON) and ``cexecs:<login>:<cid>``
(set of the container's exec ids). An exec is created only while its container's record
exists, and removing the container removes its execs in the same script
(``containers._DELETE``), so no exec outlives its container.
"""

from __future__ import annotations

import json

from sdcd.store.interface import NotFound
from sdcd.store.records import ExecRecord

_CREATE = """
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
redis.call('sadd', KEYS[3], ARGV[2])
return 1
"""

_UPDATE = """
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_FORGET = """
for i = 1, #ARGV do
  redis.call('hdel', KEYS[1], ARGV[i])
  redis.call('srem', KEYS[2], ARGV[i])
end
return 1
"""


class ExecRecordsMixin:
    """``IExecRecords`` over ``self._redis`` and ``self._key`` of the store."""

    def _exec_keys(self, login: str, cid: str) -> list[str]:
        return [self._key("execs", login), self._key("cexecs", login, cid)]

    async def create_exec(self, record: ExecRecord) -> None:
        created = await self._redis.eval(
            _CREATE,
            [
                self._key("containers", record.login),
                *self._exec_keys(record.login, record.container),
            ],
            [record.container, record.id, json.dumps(record.to_json())],
        )
        if not created:
            raise NotFound(record.container)

    async def get_exec(self, login: str, exec_id: str) -> ExecRecord | None:
        raw = await self._redis.hget(self._key("execs", login), exec_id)
        return ExecRecord.from_json(json.loads(raw)) if raw else None

    async def update_exec(self, record: ExecRecord) -> bool:
        """False when the exec is gone (its container was removed)."""
        done = await self._redis.eval(
            _UPDATE, [self._key("execs", record.login)], [record.id, json.dumps(record.to_json())]
        )
        return bool(done)

    async def count_execs(self, login: str, cid: str) -> int:
        return int(await self._redis.scard(self._key("cexecs", login, cid)) or 0)

    async def container_execs(self, login: str, cid: str) -> list[ExecRecord]:
        ids = await self._redis.smembers(self._key("cexecs", login, cid)) or []
        if not ids:
            return []
        raws = await self._redis.hmget(self._key("execs", login), sorted(ids))
        return [ExecRecord.from_json(json.loads(raw)) for raw in raws if raw]

    async def forget_execs(self, login: str, cid: str, exec_ids: list[str]) -> None:
        if exec_ids:
            await self._redis.eval(_FORGET, self._exec_keys(login, cid), list(exec_ids))
