"""``IStateStore``: the system of record (accounts and keys now; containers, images,
volumes, IPs and nodes as later issues add them). Redis implements it."""

from __future__ import annotations

from zope.interface import Interface


class StoreError(Exception):
    """Base of the store's domain errors; the message is user-facing."""


class AlreadyExists(StoreError):
    """The object to create exists already; nothing was changed."""


class NotFound(StoreError):
    """The object named does not exist; nothing was changed."""


class IStateStore(Interface):
    """Every method returns a Deferred (or is a coroutine)."""

    def ping():
        """Fire with True when the store answers."""

    def create_account(account):
        """Record a new ``Account``; ``AlreadyExists`` if the login is taken."""

    def get_account(login):
        """Fire with the ``Account`` or None."""

    def get_account_and_keys(login):
        """Fire with ``(Account, [KeyRecord, ...])`` in one round trip (the per-request
        authentication lookup), or ``(None, [])``."""

    def list_accounts():
        """Fire with all accounts, sorted by login."""

    def update_account(login, disabled=None, approved=None):
        """Change an account's flags (None leaves one alone); fire with the new
        ``Account``; ``NotFound`` if there is no such account."""

    def add_key(login, key):
        """Register a ``KeyRecord`` with an account. ``NotFound`` for an unknown account,
        ``AlreadyExists`` when that fingerprint is registered with it already."""

    def list_keys(login):
        """Fire with the account's ``KeyRecord``s sorted by name (empty if unknown)."""

    def remove_key(login, fingerprint):
        """Remove one key; ``NotFound`` when the account does not have it."""

    def close():
        """Release connections; fire when done."""


class IImageRecords(Interface):
    """Per-account image records and their names; blob references for the whole
    datacenter (a blob is garbage when no record of any account references it)."""

    def put_image(login, image, tags, digests):
        """Record ``image`` for the account and point ``tags`` ("name:tag") and
        ``digests`` ("name@sha256:...") at it, taking them from any other image. Fire
        with the ids of images that lost a tag."""

    def get_image(login, image_id):
        """The ``ImageRecord`` (with its tags and digests) or None."""

    def list_images(login):
        """Every ``ImageRecord`` of the account."""

    def resolve_name(login, name):
        """The image id a "name:tag" or "name@digest" points at, or None."""

    def tag_image(login, image_id, tag):
        """Point ``tag`` at the image (taking it from another); ``NotFound`` if the
        account has no such image."""

    def untag(login, name):
        """Remove one tag or repo digest; fire with the id it pointed at, or None."""

    def delete_image(login, image_id):
        """Remove the record, its names and its blob references; fire with the blobs no
        record references any more (the caller deletes them)."""

    def get_build_cache(login, key):
        """The image id a ``docker build`` step with this cache key made for the account,
        or None (entries expire after ``BUILD_CACHE_SECONDS`` unused)."""

    def put_build_cache(login, key, image_id):
        """Remember the image a build step made, for the account's later builds."""

    def blob_referenced(digest):
        """Whether any record of any account references the blob."""


class IContainerRecords(Interface):
    """Containers per account: the record (config, placement) and the run state."""

    def next_container_seq():
        """A number that orders containers by creation across the datacenter."""

    def create_container(record, state):
        """Store a new container; ``AlreadyExists`` when the account has that name."""

    def get_container(login, cid):
        """(ContainerRecord, ContainerState) or None."""

    def container_by_name(login, name):
        """The id the account's ``name`` names, or None."""

    def list_containers(login):
        """Every (record, state) of the account."""

    def set_container_state(login, cid, state):
        """Replace the state; False when the container no longer exists."""

    def rename_container(record, new_name):
        """The renamed record; ``AlreadyExists`` when the name is taken."""

    def delete_container(record):
        """Remove the record, its state and its name; False if already gone."""

    def node_containers(node):
        """(login, id) of every container placed on ``node``."""


class IExecRecords(Interface):
    """``docker exec`` sessions per account, each tied to one container."""

    def create_exec(record):
        """Store a new exec; ``NotFound`` when its container no longer exists."""

    def get_exec(login, exec_id):
        """The ExecRecord or None (another account's id is None)."""

    def update_exec(record):
        """Replace the record; False when it is gone (its container was removed)."""

    def count_execs(login, cid):
        """How many exec records the container has."""

    def container_execs(login, cid):
        """Every ExecRecord of the container."""

    def forget_execs(login, cid, exec_ids):
        """Drop those exec records (finished ones, to bound how many a container keeps)."""
