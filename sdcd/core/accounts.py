"""Accounts and their SSH keys: the operator's side (``sdcd-admin``) and lookups.

Every change is checked first and then made by one atomic store call, so that bad input
changes nothing.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Callable

from sdcd.auth.sshkeys import SSHKeyError, SSHPublicKey, parse_authorized_key
from sdcd.core.errors import Conflict, InvalidArgument, NotFound
from sdcd.store import interface as store_errors
from sdcd.store.records import Account, KeyRecord

# Triton logins: a letter, then letters, digits and . _ @ -; 3 to 32 characters.
LOGIN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._@-]{2,31}$")
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@: -]{0,127}$")


def check_login(login: str) -> str:
    if not LOGIN_RE.match(login):
        raise InvalidArgument(
            f"invalid login {login!r}: 3 to 32 characters, a letter first, then letters, "
            "digits, '.', '_', '@' or '-'"
        )
    return login


def _utcnow_iso(clock: Callable[[], float]) -> str:
    return datetime.datetime.fromtimestamp(clock(), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key_record(key: SSHPublicKey, name: str, created: str) -> KeyRecord:
    return KeyRecord(
        fingerprint=key.md5_fingerprint, name=name, openssh=key.openssh, created=created
    )


class AccountService:
    """Account administration over an ``IStateStore``."""

    def __init__(self, store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    async def create(self, login: str, approved: bool = False) -> Account:
        account = Account(
            login=check_login(login),
            uuid=str(uuid.uuid4()),
            created=_utcnow_iso(self._clock),
            approved=approved,
        )
        try:
            await self._store.create_account(account)
        except store_errors.AlreadyExists:
            raise Conflict(f"account {login} already exists") from None
        return account

    async def get(self, login: str) -> Account:
        account = await self._store.get_account(login)
        if account is None:
            raise NotFound(f"no such account: {login}")
        return account

    async def list(self) -> list[Account]:
        return await self._store.list_accounts()

    async def update(self, login: str, disabled: bool | None = None, approved: bool | None = None):
        try:
            return await self._store.update_account(login, disabled=disabled, approved=approved)
        except store_errors.NotFound:
            raise NotFound(f"no such account: {login}") from None

    async def add_key(self, login: str, line: str, name: str | None = None) -> KeyRecord:
        """Register the key in one ``authorized_keys`` line; its name defaults to the
        line's comment, else its fingerprint."""
        try:
            key = parse_authorized_key(line)
        except SSHKeyError as e:
            raise InvalidArgument(str(e)) from None
        name = name or key.comment or key.md5_fingerprint
        if not KEY_NAME_RE.match(name):
            raise InvalidArgument(f"invalid key name {name!r}")
        record = key_record(key, name, _utcnow_iso(self._clock))
        await self.get(login)
        if any(k.name == name for k in await self._store.list_keys(login)):
            raise Conflict(f"account {login} already has a key named {name!r}")
        try:
            await self._store.add_key(login, record)
        except store_errors.NotFound:
            raise NotFound(f"no such account: {login}") from None
        except store_errors.AlreadyExists:
            raise Conflict(f"key {record.fingerprint} is already registered with {login}") from None
        return record

    async def keys(self, login: str) -> list[KeyRecord]:
        await self.get(login)
        return await self._store.list_keys(login)

    async def remove_key(self, login: str, name_or_fingerprint: str) -> KeyRecord:
        for key in await self.keys(login):
            if name_or_fingerprint in (key.name, key.fingerprint):
                try:
                    await self._store.remove_key(login, key.fingerprint)
                except store_errors.NotFound:
                    break
                return key
        raise NotFound(f"account {login} has no key {name_or_fingerprint!r}")
