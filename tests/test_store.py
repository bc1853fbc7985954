"""The IStateStore suite, run against real Redis (the only implementation; an in-memory
fake would have to pass this same suite before any test could use it)."""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from sdcd.store import redis as redis_store
from sdcd.store.interface import AlreadyExists, IStateStore, NotFound
from sdcd.store.records import Account, KeyRecord


@pytest.fixture
def store(redis_url, key_prefix):
    pool = pytest_twisted.blockon(redis_store.connect(redis_url))
    yield redis_store.RedisStateStore(pool, key_prefix)
    pytest_twisted.blockon(pool.disconnect())


def account(login: str = "alice") -> Account:
    return Account(login=login, uuid=f"uuid-{login}", created="2026-11-28T00:00:00Z")


def key(fingerprint: str = "aa:bb", name: str = "laptop") -> KeyRecord:
    return KeyRecord(fingerprint, name, f"ssh-ed25519 AAAA{name}", "2026-11-28T00:00:00Z")


def test_provides_interface(store):
    assert verifyObject(IStateStore, store)


@pytest_twisted.ensureDeferred
async def test_ping(store):
    assert await store.ping() is True


@pytest_twisted.ensureDeferred
async def test_create_and_get_account(store):
    await store.create_account(account())
    assert await store.get_account("alice") == account()
    assert await store.get_account("bob") is None


@pytest_twisted.ensureDeferred
async def test_duplicate_account_changes_nothing(store):
    await store.create_account(account())
    with pytest.raises(AlreadyExists):
        await store.create_account(Account("alice", "other-uuid", "later", approved=True))
    assert await store.get_account("alice") == account()


@pytest_twisted.ensureDeferred
async def test_list_accounts_sorted(store):
    assert await store.list_accounts() == []
    for login in ["carol", "alice", "bob"]:
        await store.create_account(account(login))
    assert [a.login for a in await store.list_accounts()] == ["alice", "bob", "carol"]


@pytest_twisted.ensureDeferred
async def test_update_account_flags(store):
    await store.create_account(account())
    updated = await store.update_account("alice", disabled=True)
    assert (updated.disabled, updated.approved) == (True, False)
    updated = await store.update_account("alice", approved=True)
    assert (updated.disabled, updated.approved) == (True, True)
    updated = await store.update_account("alice", disabled=False)
    assert await store.get_account("alice") == updated
    assert (updated.disabled, updated.approved, updated.uuid) == (False, True, "uuid-alice")


@pytest_twisted.ensureDeferred
async def test_update_unknown_account(store):
    with pytest.raises(NotFound):
        await store.update_account("nobody", disabled=True)
    assert await store.get_account("nobody") is None


@pytest_twisted.ensureDeferred
async def test_keys(store):
    await store.create_account(account())
    await store.add_key("alice", key("11:11", "zed"))
    await store.add_key("alice", key("22:22", "alpha"))
    assert [k.name for k in await store.list_keys("alice")] == ["alpha", "zed"]
    await store.remove_key("alice", "11:11")
    assert await store.list_keys("alice") == [key("22:22", "alpha")]


@pytest_twisted.ensureDeferred
async def test_key_errors_change_nothing(store):
    with pytest.raises(NotFound):
        await store.add_key("nobody", key())
    assert await store.list_keys("nobody") == []
    await store.create_account(account())
    await store.add_key("alice", key())
    with pytest.raises(AlreadyExists):
        await store.add_key("alice", key(name="renamed"))
    assert await store.list_keys("alice") == [key()]
    with pytest.raises(NotFound):
        await store.remove_key("alice", "ff:ff")
    assert await store.list_keys("alice") == [key()]


@pytest_twisted.ensureDeferred
async def test_account_and_keys_in_one_call(store):
    assert await store.get_account_and_keys("alice") == (None, [])
    await store.create_account(account())
    assert await store.get_account_and_keys("alice") == (account(), [])
    await store.add_key("alice", key("11:11", "zed"))
    await store.add_key("alice", key("22:22", "alpha"))
    assert await store.get_account_and_keys("alice") == (account(), await store.list_keys("alice"))


@pytest_twisted.ensureDeferred
async def test_accounts_are_separate(store):
    await store.create_account(account("alice"))
    await store.create_account(account("bob"))
    await store.add_key("alice", key())
    assert await store.list_keys("bob") == []
