"""Container IP addresses, allocated in Redis so that any number of sdcd processes and
compute nodes share one truth: never one address for two live owners.

Layout per network (under the store's key prefix):
``ipam:<network>:ips`` (hash ip -> owner), ``ipam:<network>:owners`` (hash owner -> ip)
and ``ipam:<network>:cursor`` (the offset in the subnet last handed out).

Allocation is sequential from the cursor, as dockerd's allocator does, so a released
address is reused only after the rest of the subnet has been offered: a stale peer that
still talks to the old holder's address is unlikely to reach a new one. Each Lua call
probes a bounded number of addresses (``_PROBES``) so that even a nearly full /16 never
blocks Redis for long; Python keeps calling until the whole subnet has been probed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

# KEYS: ips, owners, cursor. ARGV: owner, base (network address as an integer), first
# host offset, number of host offsets, probe bound, then reserved offsets.
# Returns the address (string), 0 when the subnet is certainly full, or the number of
# addresses probed without finding a free one (the cursor has moved past them).
_ALLOCATE = """
local held = redis.call('hget', KEYS[2], ARGV[1])
if held then return held end
local owner, base = ARGV[1], tonumber(ARGV[2])
local first, count, bound = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function ip_of(offset)
  local n = base + offset
  return string.format('%d.%d.%d.%d', math.floor(n / 16777216) % 256,
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end
local reserved, nreserved = {}, 0
for i = 6, #ARGV do
  local off = tonumber(ARGV[i])
  if not reserved[off] then
    reserved[off] = true
    if redis.call('hexists', KEYS[1], ip_of(off)) == 0 then nreserved = nreserved + 1 end
  end
end
if redis.call('hlen', KEYS[1]) + nreserved >= count then return 0 end
local cursor = tonumber(redis.call('get', KEYS[3]) or (first - 1))
if cursor < first - 1 or cursor >= first + count then cursor = first - 1 end
for i = 1, math.min(bound, count) do
  local off = first + ((cursor - first + i) % count)
  if not reserved[off] then
    local ip = ip_of(off)
    if redis.call('hsetnx', KEYS[1], ip, owner) == 1 then
      redis.call('hset', KEYS[2], owner, ip)
      redis.call('set', KEYS[3], off)
      return ip
    end
  end
end
redis.call('set', KEYS[3], first + ((cursor - first + math.min(bound, count)) % count))
return math.min(bound, count)
"""

# KEYS: ips, owners. ARGV: owner. Returns the released address or nil.
_RELEASE = """
local ip = redis.call('hget', KEYS[2], ARGV[1])
if not ip then return false end
redis.call('hdel', KEYS[2], ARGV[1])
if redis.call('hget', KEYS[1], ip) == ARGV[1] then redis.call('hdel', KEYS[1], ip) end
return ip
"""

_PROBES = 1024


class NoAddressesLeft(Exception):
    """Every usable address of the subnet is allocated or reserved."""


def _host_range(net: ipaddress.IPv4Network) -> tuple[int, int]:
    """(first host offset, number of host offsets): network and broadcast addresses are
    not hosts, except in /31 and /32 where every address is."""
    if net.num_addresses <= 2:
        return 0, net.num_addresses
    return 1, net.num_addresses - 2


class RedisIPAllocator:
    """IPv4 allocation per named network over a connected txredisapi pool."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _keys(self, network: str) -> list[str]:
        base = f"{self._prefix}ipam:{network}:"
        return [base + "ips", base + "owners", base + "cursor"]

    async def allocate(
        self, network: str, subnet: str, owner: str, reserved: Iterable[str] = ()
    ) -> str:
        """The owner's address in ``subnet``: the one it already holds (so a retry after a
        crash gets the same), else the next free host address after the cursor, never
        the subnet's first host (the conventional gateway) nor any of ``reserved`` (where
        a gateway elsewhere in the subnet belongs)."""
        net = ipaddress.IPv4Network(subnet, strict=False)
        base = int(net.network_address)
        first, count = _host_range(net)
        skip = {*reserved, *([str(net.network_address + 1)] if net.num_addresses > 2 else [])}
        offsets = sorted(
            off
            for off in (int(ipaddress.IPv4Address(ip)) - base for ip in skip)
            if first <= off < first + count
        )
        probed = 0
        while probed < count:
            reply = await self._redis.eval(
                _ALLOCATE,
                self._keys(network),
                [owner, base, first, count, _PROBES, *offsets],
            )
            if isinstance(reply, str):
                return reply
            if reply == 0:
                break
            probed += reply
        raise NoAddressesLeft(f"no addresses left in {subnet} on network {network}")

    async def release(self, network: str, owner: str) -> None:
        """Give back the owner's address, if it holds one."""
        await self._redis.eval(_RELEASE, self._keys(network)[:2], [owner])

    async def address_of(self, network: str, owner: str) -> str | None:
        """The address the owner holds on ``network``, if any."""
        return await self._redis.hget(self._keys(network)[1], owner)

    async def allocations(self, network: str) -> dict[str, str]:
        """Every allocation on ``network``, ip -> owner (for reconciliation)."""
        return dict(await self._redis.hgetall(self._keys(network)[0]) or {})
