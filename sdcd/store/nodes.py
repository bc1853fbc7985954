"""Compute nodes in Redis (issue 7): what each agent registered, when it was last heard
from, and the resources reserved on it. Every sdcd reads the same truth, and a
reservation is one Lua call, so concurrent creates through any number of sdcd
processes never overcommit a node.

Layout under the store's key prefix: ``nodes`` (hash id -> JSON: hostname, address,
memory and disk in MiB, cpus, subnet), ``nodeseen`` (hash id -> last heartbeat, Unix
seconds), ``nodeused:<id>`` (hash memory, disk -> MiB reserved) and ``noderes:<id>``
(hash container id -> "memory disk").
"""

from __future__ import annotations

import json
from typing import Any

# KEYS: nodes, used, reservations. ARGV: node id, owner, memory, disk, memory and disk
# overcommit ratios.
# Returns 1 (reserved, or the owner already held its reservation), 0 (no room), -1 (no
# such node).
_RESERVE = """
local info = redis.call('hget', KEYS[1], ARGV[1])
if not info then return -1 end
if redis.call('hexists', KEYS[3], ARGV[2]) == 1 then return 1 end
local node = cjson.decode(info)
local memory, disk, ratio = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local disk_ratio = tonumber(ARGV[6])
local used_memory = tonumber(redis.call('hget', KEYS[2], 'memory') or '0')
local used_disk = tonumber(redis.call('hget', KEYS[2], 'disk') or '0')
if used_memory + memory > node.memory * ratio then return 0 end
if used_disk + disk > node.disk * disk_ratio then return 0 end
redis.call('hset', KEYS[3], ARGV[2], memory .. ' ' .. disk)
redis.call('hincrby', KEYS[2], 'memory', memory)
redis.call('hincrby', KEYS[2], 'disk', disk)
return 1
"""

# KEYS: used, reservations. ARGV: owner. Returns 1 if a reservation went, else 0.
_RELEASE = """
local held = redis.call('hget', KEYS[2], ARGV[1])
if not held then return 0 end
local memory, disk = string.match(held, '(%d+) (%d+)')
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('hincrby', KEYS[1], 'memory', -tonumber(memory))
redis.call('hincrby', KEYS[1], 'disk', -tonumber(disk))
return 1
"""

NODE_FIELDS = ("hostname", "address", "memory", "disk", "cpus", "subnet")
#: An agent's internal API port (the in-process node has none) and its bridge's address.
OPTIONAL_FIELDS = ("port", "gateway")
#: A node's agent beats this often; one not heard from for DOWN_AFTER_SECONDS is down.
HEARTBEAT_SECONDS = 5.0
DOWN_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS


class UnknownNode(Exception):
    """A reservation on a node that never registered."""


class RedisNodeRegistry:
    """Registration, heartbeats and reservations of compute nodes."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def register(self, node_id: str, info: dict[str, Any], now: float) -> None:
        """An agent's node and its capacity (memory and disk in MiB); counts as a
        heartbeat. Registering again updates the capacity and keeps reservations."""
        missing = [f for f in NODE_FIELDS if f not in info]
        if missing:
            raise ValueError(f"node {node_id} lacks {', '.join(missing)}")
        record = {f: info[f] for f in NODE_FIELDS}
        record.update({f: info[f] for f in OPTIONAL_FIELDS if info.get(f)})
        await self._redis.hset(self._key("nodes"), node_id, json.dumps(record))
        await self.heartbeat(node_id, now)

    async def heartbeat(self, node_id: str, now: float) -> None:
        await self._redis.hset(self._key("nodeseen"), node_id, repr(now))

    async def nodes(self) -> list[dict[str, Any]]:
        """Every registered node: its record plus ``id``, ``last_seen``, ``silent`` (seconds
        since that heartbeat) and the ``reserved_memory``/``reserved_disk`` MiB.

        ``silent`` is measured against Redis's clock read *before* the heartbeats: a reader
        whose reactor lags (a busy sdcd gets Redis's answer late) must not take its own
        delay for the nodes' silence."""
        seconds, micros = await self._redis.execute_command("TIME")
        now = int(seconds) + int(micros) / 1e6
        records = await self._redis.hgetall(self._key("nodes")) or {}
        seen = await self._redis.hgetall(self._key("nodeseen")) or {}
        result = []
        for node_id in sorted(records):
            used = await self._redis.hgetall(self._key("nodeused", node_id)) or {}
            result.append(
                {
                    **json.loads(records[node_id]),
                    "id": node_id,
                    "last_seen": float(seen.get(node_id, 0)),
                    "silent": max(0.0, now - float(seen.get(node_id, 0))),
                    "reserved_memory": int(used.get("memory", 0)),
                    "reserved_disk": int(used.get("disk", 0)),
                }
            )
        return result

    async def reserve(
        self,
        node_id: str,
        owner: str,
        memory: int,
        disk: int,
        overcommit: float = 1.0,
        disk_overcommit: float = 1.0,
    ) -> bool:
        """Reserve ``memory``/``disk`` MiB on the node for ``owner`` (a container id),
        atomically: False when it would pass the node's memory times ``overcommit`` or its
        disk times ``disk_overcommit``. Idempotent per owner."""
        reply = await self._redis.eval(
            _RESERVE,
            [self._key("nodes"), self._key("nodeused", node_id), self._key("noderes", node_id)],
            [
                node_id,
                owner,
                int(memory),
                int(disk),
                repr(float(overcommit)),
                repr(float(disk_overcommit)),
            ],
        )
        if reply == -1:
            raise UnknownNode(node_id)
        return reply == 1

    async def release(self, node_id: str, owner: str) -> bool:
        """Give the owner's reservation back (False if it held none)."""
        reply = await self._redis.eval(
            _RELEASE, [self._key("nodeused", node_id), self._key("noderes", node_id)], [owner]
        )
        return reply == 1

    async def reservations(self, node_id: str) -> dict[str, tuple[int, int]]:
        held = await self._redis.hgetall(self._key("noderes", node_id)) or {}
        return {owner: tuple(int(x) for x in v.split()) for owner, v in held.items()}


class RedisAPIRegistry:
    """The sdcd instances serving a datacenter, each with the URL of its internal API
    (the image store's blobs for nodes), heard from every heartbeat: agents fetch layers
    from whichever are up. Layout: ``apis`` (hash name -> JSON {url, last_seen})."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._key = prefix + "apis"

    async def beat(self, name: str, url: str, now: float) -> None:
        await self._redis.hset(self._key, name, json.dumps({"url": url, "last_seen": now}))

    async def leave(self, name: str) -> None:
        await self._redis.hdel(self._key, name)

    async def live(self, now: float, window: float = DOWN_AFTER_SECONDS) -> set[str]:
        """Names of the instances heard from within ``window`` seconds."""
        entries = await self._redis.hgetall(self._key) or {}
        return {n for n, v in entries.items() if now - json.loads(v)["last_seen"] <= window}

    async def urls(self, now: float, window: float = DOWN_AFTER_SECONDS) -> list[str]:
        """URLs of the instances heard from within ``window`` seconds, newest first."""
        entries = [json.loads(v) for v in (await self._redis.hgetall(self._key) or {}).values()]
        live = [e for e in entries if now - e["last_seen"] <= window]
        return [e["url"] for e in sorted(live, key=lambda e: -e["last_seen"])]
