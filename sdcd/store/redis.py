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

from sdcd.store.containers import ContainerRecordsMixin
from sdcd.store.execs import ExecRecordsMixin
from sdcd.store.interface import (
    AlreadyExists,
    IContainerRecords,
    IExecRecords,
    IImageRecords,
    IStateStore,
    NotFound,
)
from sdcd.store.records import Account, ImageRecord, KeyRecord

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


# Moving a name (tag or repo digest) from whatever it named to ``id``; the reverse index
# inames:<login>:<id> lets an image's names be read without scanning.
_MOVE_NAME = """
local function move_name(names_key, inames_prefix, name, id)
  local old = redis.call('hget', names_key, name)
  if old == id then return false end
  if old then redis.call('srem', inames_prefix .. old, name) end
  redis.call('hset', names_key, name, id)
  redis.call('sadd', inames_prefix .. id, name)
  return old
end
"""

_PUT_IMAGE = (
    _MOVE_NAME
    + """
local id, raw, ref, prefix, inames = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local nnames = tonumber(ARGV[6])
redis.call('hset', KEYS[1], id, raw)
local lost = {}
for i = 1, nnames do
  local old = move_name(KEYS[2], inames, ARGV[6 + i], id)
  if old then table.insert(lost, old) end
end
for i = 7 + nnames, #ARGV do
  redis.call('sadd', prefix .. 'blobrefs:' .. ARGV[i], ref)
end
return lost
"""
)

_TAG_IMAGE = (
    _MOVE_NAME
    + """
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return -1 end
move_name(KEYS[2], ARGV[3], ARGV[2], ARGV[1])
return 1
"""
)

_UNTAG = """
local old = redis.call('hget', KEYS[1], ARGV[1])
if not old then return false end
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('srem', ARGV[2] .. old, ARGV[1])
return old
"""

_DELETE_IMAGE = """
local id, ref, prefix, inames = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('hdel', KEYS[1], id) == 0 then return false end
for _, name in ipairs(redis.call('smembers', inames .. id)) do
  redis.call('hdel', KEYS[2], name)
end
redis.call('del', inames .. id)
local orphaned = {}
for i = 5, #ARGV do
  local refs = prefix .. 'blobrefs:' .. ARGV[i]
  redis.call('srem', refs, ref)
  if redis.call('scard', refs) == 0 then table.insert(orphaned, ARGV[i]) end
end
return orphaned
"""

_LIST_IMAGES = """
local out = {}
local all = redis.call('hgetall', KEYS[1])
for i = 1, #all, 2 do
  table.insert(out, all[i + 1])
  table.insert(out, redis.call('smembers', ARGV[1] .. all[i]))
end
return out
"""


def _flag(value: bool | None) -> str:
    return "" if value is None else ("1" if value else "0")


def connect(url: str, *, connect_timeout: float = 5.0, poolsize: int = 4) -> Deferred:
    """Connect a pool to ``redis://[:password@]host[:port][/db]`` or
    ``unix:///path/to.sock[?db=N]``; fires with the pool once connected."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = int(parse_qs(parts.query).get("db", ["0"])[0])
        return txredisapi.UnixConnectionPool(
            parts.path, dbid=db, poolsize=poolsize, connectTimeout=connect_timeout, replyTimeout=30
        )
    db = int(parts.path.strip("/") or 0)
    return txredisapi.ConnectionPool(
        parts.hostname or "localhost",
        parts.port or 6379,
        dbid=db,
        poolsize=poolsize,
        password=parts.password,
        connectTimeout=connect_timeout,
        replyTimeout=30,
    )


def _sorted_keys(raws) -> list[KeyRecord]:
    keys = [KeyRecord.from_json(json.loads(raw)) for raw in raws or []]
    return sorted(keys, key=lambda k: (k.name, k.fingerprint))


def _image(raw: str, names) -> ImageRecord:
    names = list(names or [])
    return ImageRecord.from_json(
        json.loads(raw),
        repo_tags=[n for n in names if "@" not in n],
        repo_digests=[n for n in names if "@" in n],
    )


#: A build cache entry unused this long is forgotten (a step's key is one string per
#: account; entries of deleted images are ignored when read and expire with time).
BUILD_CACHE_SECONDS = 30 * 24 * 3600


@implementer(IStateStore, IImageRecords, IContainerRecords, IExecRecords)
class RedisStateStore(ContainerRecordsMixin, ExecRecordsMixin):
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

    # -- images -------------------------------------------------------------------

    def _image_keys(self, login: str) -> list[str]:
        return [self._key("images", login), self._key("names", login)]

    def _inames(self, login: str) -> str:
        return self._key("inames", login) + ":"

    async def put_image(self, login: str, image: ImageRecord, tags=(), digests=()):
        names = [*tags, *digests]
        lost = await self._redis.eval(
            _PUT_IMAGE,
            self._image_keys(login),
            [image.id, json.dumps(image.to_json()), f"{login}/{image.id}", self._prefix,
             self._inames(login), len(names), *names, *image.blobs],
        )  # fmt: skip
        return sorted(set(lost or []))

    async def get_image(self, login: str, image_id: str):
        raw = await self._redis.hget(self._key("images", login), image_id)
        if raw is None:
            return None
        return _image(raw, await self._redis.smembers(self._inames(login) + image_id))

    async def list_images(self, login: str):
        flat = await self._redis.eval(_LIST_IMAGES, [self._key("images", login)],
                                      [self._inames(login)])  # fmt: skip
        flat = flat or []
        return [_image(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def resolve_name(self, login: str, name: str):
        return await self._redis.hget(self._key("names", login), name)

    async def tag_image(self, login: str, image_id: str, tag: str):
        done = await self._redis.eval(
            _TAG_IMAGE, self._image_keys(login), [image_id, tag, self._inames(login)]
        )
        if done == -1:
            raise NotFound(f"no such image: {image_id}")

    async def untag(self, login: str, name: str):
        return await self._redis.eval(
            _UNTAG, [self._key("names", login)], [name, self._inames(login)]
        )

    async def delete_image(self, login: str, image_id: str):
        image = await self.get_image(login, image_id)
        if image is None:
            raise NotFound(f"no such image: {image_id}")
        orphaned = await self._redis.eval(
            _DELETE_IMAGE,
            self._image_keys(login),
            [image_id, f"{login}/{image_id}", self._prefix, self._inames(login), *image.blobs],
        )
        return sorted(set(orphaned or []))

    async def get_build_cache(self, login: str, key: str):
        name = self._key("buildcache", login, key)
        image_id = await self._redis.get(name)
        if image_id is not None:
            await self._redis.expire(name, BUILD_CACHE_SECONDS)
        return image_id

    async def put_build_cache(self, login: str, key: str, image_id: str):
        await self._redis.set(self._key("buildcache", login, key), image_id,
                              expire=BUILD_CACHE_SECONDS)  # fmt: skip

    async def blob_referenced(self, digest: str) -> bool:
        return bool(await self._redis.scard(self._key("blobrefs", digest)))

    def close(self):
        return self._redis.disconnect()
