"""``IStateStore`` on Redis through txredisapi.

Layout (every key starts with the configured prefix, ``sdcd:`` by default):
``accounts`` (set of logins), ``account:<login>`` (JSON), ``account:<login>:keys``
(hash fingerprint -> JSON). Multi-key changes run as Lua scripts so that they are atomic
however many sdcd processes share the Redis.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import txredisapi
from twisted.internet.defer import Deferred
from zope.interface import implementer

from sdcd.store.interface import AlreadyExists, IStateStore, NotFound
from sdcd.store.records import Account, KeyRecord

_CREATE_ACCOUNT = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('set', KEYS[1], ARGV[1])
redis.call('sadd', KEYS[2], ARGV[2])
return 1
"""

_UPDATE_ACCOUNT = """
local raw = redis.call('get', KEYS[1])
if not raw then return false end
local account = cjson.decode(raw)
if ARGV[1] ~= '' then account.disabled = (ARGV[1] == '1') end
if ARGV[2] ~= '' then account.approved = (ARGV[2] == '1') end
raw = cjson.encode(account)
redis.call('set', KEYS[1], raw)
return raw
"""

_ADD_KEY = """
if redis.call('exists', KEYS[1]) == 0 then return -1 end
return redis.call('hsetnx', KEYS[2], ARGV[1], ARGV[2])
"""


_ACCOUNT_AND_KEYS = """
local raw = redis.call('get', KEYS[1])
if not raw then return false end
return {raw, redis.call('hvals', KEYS[2])}
"""


def _flag(value: bool | None) -> str:
    return "" if value is None else ("1" if value else "0")


def connect(url: str, *, connect_timeout: float = 5.0) -> Deferred:
    """Connect a pool to ``redis://[:password@]host[:port][/db]`` or
    ``unix:///path/to.sock[?db=N]``; fires with the pool once connected."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = int(parse_qs(parts.query).get("db", ["0"])[0])
        return txredisapi.UnixConnectionPool(
            parts.path, dbid=db, poolsize=4, connectTimeout=connect_timeout, replyTimeout=30
        )
    db = int(parts.path.strip("/") or 0)
    return txredisapi.ConnectionPool(
        parts.hostname or "localhost",
        parts.port or 6379,
        dbid=db,
        poolsize=4,
        password=parts.password,
        connectTimeout=connect_timeout,
        replyTimeout=30,
    )


def _sorted_keys(raws) -> list[KeyRecord]:
    keys = [KeyRecord.from_json(json.loads(raw)) for raw in raws or []]
    return sorted(keys, key=lambda k: (k.name, k.fingerprint))


@implementer(IStateStore)
class RedisStateStore:
    """The state store over a connected txredisapi pool."""

    def __init__(self, redis: Any, prefix: str = "sdcd:") -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def ping(self):
        reply = await self._redis.ping()
        return reply == "PONG"

    async def create_account(self, account: Account):
        created = await self._redis.eval(
            _CREATE_ACCOUNT,
            [self._key("account", account.login), self._key("accounts")],
            [json.dumps(account.to_json()), account.login],
        )
        if not created:
            raise AlreadyExists(f"account {account.login} already exists")

    async def get_account(self, login: str):
        raw = await self._redis.get(self._key("account", login))
        return Account.from_json(json.loads(raw)) if raw else None

    async def get_account_and_keys(self, login: str):
        reply = await self._redis.eval(
            _ACCOUNT_AND_KEYS,
            [self._key("account", login), self._key("account", login, "keys")],
            [],
        )
        if not reply:
            return None, []
        raw, keys = reply
        return Account.from_json(json.loads(raw)), _sorted_keys(keys)

    async def list_accounts(self):
        logins = await self._redis.smembers(self._key("accounts"))
        if not logins:
            return []
        logins = sorted(logins)
        raws = await self._redis.mget([self._key("account", login) for login in logins])
        return [Account.from_json(json.loads(raw)) for raw in raws if raw]

    async def update_account(
        self, login: str, disabled: bool | None = None, approved: bool | None = None
    ):
        raw = await self._redis.eval(
            _UPDATE_ACCOUNT, [self._key("account", login)], [_flag(disabled), _flag(approved)]
        )
        if not raw:
            raise NotFound(f"no such account: {login}")
        return Account.from_json(json.loads(raw))

    async def add_key(self, login: str, key: KeyRecord):
        added = await self._redis.eval(
            _ADD_KEY,
            [self._key("account", login), self._key("account", login, "keys")],
            [key.fingerprint, json.dumps(key.to_json())],
        )
        if added == -1:
            raise NotFound(f"no such account: {login}")
        if not added:
            raise AlreadyExists(f"key {key.fingerprint} is already registered with {login}")

    async def list_keys(self, login: str):
        return _sorted_keys(await self._redis.hvals(self._key("account", login, "keys")))

    async def remove_key(self, login: str, fingerprint: str):
        removed = await self._redis.hdel(self._key("account", login, "keys"), fingerprint)
        if not removed:
            raise NotFound(f"account {login} has no key {fingerprint}")

    def close(self):
        return self._redis.disconnect()
