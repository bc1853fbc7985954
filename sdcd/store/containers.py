"""Container records in Redis, mixed into ``RedisStateStore``.

Layout: ``containers:<login>`` (hash id -> ContainerRecord JSON), ``cstate:<login>``
(hash id -> ContainerState JSON), ``cnames:<login>`` (hash name -> id, the per-account
name uniqueness), ``nodecontainers:<node>`` (set of ``<login>/<id>``: what a node should
hold, for reconciling), ``cseq`` (creation order). Changes that span keys are Lua
scripts; deleting a container deletes its exec records (``store/execs.py``) in the same
script.
"""

from __future__ import annotations

import json

from sdcd.store.interface import AlreadyExists, NotFound
from sdcd.store.records import ContainerRecord, ContainerState

_CREATE = """
if redis.call('hexists', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('hset', KEYS[2], ARGV[2], ARGV[1])
redis.call('hset', KEYS[1], ARGV[1], ARGV[3])
redis.call('hset', KEYS[3], ARGV[1], ARGV[4])
redis.call('sadd', KEYS[4], ARGV[5])
return 1
"""

_RENAME = """
local holder = redis.call('hget', KEYS[2], ARGV[3])
if holder and holder ~= ARGV[1] then return 0 end
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return -1 end
redis.call('hdel', KEYS[2], ARGV[2])
redis.call('hset', KEYS[2], ARGV[3], ARGV[1])
redis.call('hset', KEYS[1], ARGV[1], ARGV[4])
return 1
"""

_SET_STATE = """
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('hset', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

_DELETE = """
if redis.call('hdel', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('hdel', KEYS[3], ARGV[1])
if redis.call('hget', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('hdel', KEYS[2], ARGV[2]) end
redis.call('srem', KEYS[4], ARGV[3])
for _, exec_id in ipairs(redis.call('smembers', KEYS[6])) do
  redis.call('hdel', KEYS[5], exec_id)
end
redis.call('del', KEYS[6])
return 1
"""


def _pair(raw_record, raw_state) -> tuple[ContainerRecord, ContainerState]:
    record = ContainerRecord.from_json(json.loads(raw_record))
    state = ContainerState.from_json(json.loads(raw_state)) if raw_state else ContainerState()
    return record, state


class ContainerRecordsMixin:
    """``IContainerRecords`` over ``self._redis`` and ``self._key`` of the store."""

    def _ckeys(self, login: str, node: str) -> list[str]:
        return [
            self._key("containers", login),
            self._key("cnames", login),
            self._key("cstate", login),
            self._key("nodecontainers", node),
        ]

    async def next_container_seq(self) -> int:
        return int(await self._redis.incr(self._key("cseq")))

    async def create_container(self, record: ContainerRecord, state: ContainerState) -> None:
        created = await self._redis.eval(
            _CREATE,
            self._ckeys(record.login, record.node),
            [
                record.id,
                record.name,
                json.dumps(record.to_json()),
                json.dumps(state.to_json()),
                f"{record.login}/{record.id}",
            ],
        )
        if not created:
            raise AlreadyExists(record.name)

    async def get_container(self, login: str, cid: str):
        """(record, state) or None."""
        raw = await self._redis.hget(self._key("containers", login), cid)
        if raw is None:
            return None
        return _pair(raw, await self._redis.hget(self._key("cstate", login), cid))

    async def container_by_name(self, login: str, name: str) -> str | None:
        return await self._redis.hget(self._key("cnames", login), name)

    async def list_containers(self, login: str):
        """Every (record, state) of the account."""
        records = await self._redis.hgetall(self._key("containers", login)) or {}
        states = await self._redis.hgetall(self._key("cstate", login)) or {}
        return [_pair(raw, states.get(cid)) for cid, raw in records.items()]

    async def set_container_state(self, login: str, cid: str, state: ContainerState) -> bool:
        """False when the container is gone (a late event must not resurrect it)."""
        done = await self._redis.eval(
            _SET_STATE,
            [self._key("containers", login), self._key("cstate", login)],
            [cid, json.dumps(state.to_json())],
        )
        return bool(done)

    async def rename_container(self, record: ContainerRecord, new_name: str) -> ContainerRecord:
        renamed = record.__class__(**{**record.to_json(), "name": new_name})
        done = await self._redis.eval(
            _RENAME,
            [self._key("containers", record.login), self._key("cnames", record.login)],
            [record.id, record.name, new_name, json.dumps(renamed.to_json())],
        )
        if done == 0:
            raise AlreadyExists(new_name)
        if done == -1:
            raise NotFound(record.id)
        return renamed

    async def delete_container(self, record: ContainerRecord) -> bool:
        done = await self._redis.eval(
            _DELETE,
            [
                *self._ckeys(record.login, record.node),
                self._key("execs", record.login),
                self._key("cexecs", record.login, record.id),
            ],
            [record.id, record.name, f"{record.login}/{record.id}"],
        )
        return bool(done)

    async def node_containers(self, node: str) -> list[tuple[str, str]]:
        """(login, id) of every container placed on ``node``."""
        members = await self._redis.smembers(self._key("nodecontainers", node)) or []
        return [tuple(m.split("/", 1)) for m in sorted(members)]
