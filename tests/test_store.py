"""The IStateStore suite, run against real Redis (the only implementation; an in-memory
fake would have to pass this same suite before any test could use it)."""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from sdcd.store import redis as redis_store
from sdcd.store.interface import AlreadyExists, IImageRecords, IStateStore, NotFound
from sdcd.store.records import Account, ImageRecord, KeyRecord, LayerRecord


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


def image(n: int, layers=("sha256:" + "1" * 64,)) -> ImageRecord:
    return ImageRecord(
        id="sha256:" + f"{n:x}" * 64 if n < 16 else "sha256:" + "f" * 64,
        layers=tuple(LayerRecord(d, "sha256:" + "d" * 64, 10, "gzip") for d in layers),
        created="2026-11-28T00:00:00Z",
        size=10,
        added="2026-11-28T00:00:00Z",
    )


def test_image_records_interface(store):
    assert verifyObject(IImageRecords, store)


@pytest_twisted.ensureDeferred
async def test_put_and_get_image(store):
    img = image(1)
    assert (
        await store.put_image(
            "alice", img, ["docker.io/library/a:1"], ["docker.io/library/a@sha256:" + "9" * 64]
        )
        == []
    )
    got = await store.get_image("alice", img.id)
    assert got.repo_tags == ("docker.io/library/a:1",)
    assert got.repo_digests == ("docker.io/library/a@sha256:" + "9" * 64,)
    assert got.layers == img.layers
    assert await store.resolve_name("alice", "docker.io/library/a:1") == img.id
    assert await store.get_image("bob", img.id) is None
    assert await store.resolve_name("bob", "docker.io/library/a:1") is None
    assert await store.list_images("bob") == []


@pytest_twisted.ensureDeferred
async def test_tag_moves_between_images(store):
    one, two = image(1), image(2)
    await store.put_image("alice", one, ["x:latest"])
    assert await store.put_image("alice", two, ["x:latest", "x:2"]) == [one.id]
    assert (await store.get_image("alice", one.id)).repo_tags == ()
    assert (await store.get_image("alice", two.id)).repo_tags == ("x:2", "x:latest")
    await store.tag_image("alice", one.id, "x:latest")
    listed = {i.id: i.repo_tags for i in await store.list_images("alice")}
    assert listed == {one.id: ("x:latest",), two.id: ("x:2",)}
    with pytest.raises(NotFound):
        await store.tag_image("alice", "sha256:" + "0" * 64, "y:1")
    assert await store.resolve_name("alice", "y:1") is None


@pytest_twisted.ensureDeferred
async def test_untag(store):
    await store.put_image("alice", image(1), ["x:1", "x:2"])
    assert await store.untag("alice", "x:1") == image(1).id
    assert await store.untag("alice", "x:1") is None
    assert (await store.get_image("alice", image(1).id)).repo_tags == ("x:2",)


@pytest_twisted.ensureDeferred
async def test_blob_references_span_accounts(store):
    shared = "sha256:" + "5" * 64
    a, b = image(1, (shared,)), image(1, (shared,))
    await store.put_image("alice", a, ["x:1"])
    await store.put_image("bob", b, ["x:1"])
    assert await store.delete_image("alice", a.id) == []
    assert await store.blob_referenced(shared)
    assert await store.get_image("alice", a.id) is None
    assert await store.resolve_name("alice", "x:1") is None
    assert sorted(await store.delete_image("bob", b.id)) == sorted([b.id, shared])
    assert not await store.blob_referenced(shared)
    with pytest.raises(NotFound):
        await store.delete_image("bob", b.id)


# -- containers and their execs -------------------------------------------------------


def container(cid: str = "c" * 64, name: str = "web", login: str = "alice"):
    from sdcd.store.records import ContainerRecord

    return ContainerRecord(
        id=cid, login=login, name=name, created="2026-11-28T00:00:00Z", seq=1,
        image="busybox", image_id="sha256:" + "0" * 64, config={}, host_config={},
        package={}, node="node-1", network={}, ports={},
    )  # fmt: skip


def exec_record(exec_id: str, cid: str = "c" * 64, login: str = "alice"):
    from sdcd.store.records import ExecRecord

    return ExecRecord(
        id=exec_id, login=login, container=cid, created="2026-11-28T00:00:01Z",
        config={"Cmd": ["true"]},
    )  # fmt: skip


def test_exec_records_interface(store):
    from sdcd.store.interface import IContainerRecords, IExecRecords

    assert verifyObject(IContainerRecords, store) and verifyObject(IExecRecords, store)


@pytest_twisted.ensureDeferred
async def test_exec_needs_its_container_and_goes_with_it(store):
    from sdcd.store.records import ContainerState

    with pytest.raises(NotFound):
        await store.create_exec(exec_record("e1"))
    assert await store.get_exec("alice", "e1") is None
    record = container()
    await store.create_container(record, ContainerState())
    await store.create_exec(exec_record("e1"))
    await store.create_exec(exec_record("e2"))
    assert await store.count_execs("alice", record.id) == 2
    ran = exec_record("e1").__class__(**{**exec_record("e1").to_json(), "exit_code": 3})
    assert await store.update_exec(ran)
    assert (await store.get_exec("alice", "e1")).exit_code == 3
    assert await store.get_exec("bob", "e1") is None  # execs are per account
    assert sorted(e.id for e in await store.container_execs("alice", record.id)) == ["e1", "e2"]
    await store.forget_execs("alice", record.id, ["e2"])
    assert [e.id for e in await store.container_execs("alice", record.id)] == ["e1"]
    assert await store.delete_container(record)
    assert await store.get_exec("alice", "e1") is None
    assert await store.count_execs("alice", record.id) == 0
    assert not await store.update_exec(ran)  # a late update does not resurrect it
    assert await store.get_exec("alice", "e1") is None


@pytest_twisted.ensureDeferred
async def test_build_cache_is_per_account(store):
    assert await store.get_build_cache("alice", "k1") is None
    await store.put_build_cache("alice", "k1", "sha256:" + "a" * 64)
    assert await store.get_build_cache("alice", "k1") == "sha256:" + "a" * 64
    assert await store.get_build_cache("bob", "k1") is None
    await store.put_build_cache("alice", "k1", "sha256:" + "b" * 64)
    assert await store.get_build_cache("alice", "k1") == "sha256:" + "b" * 64
