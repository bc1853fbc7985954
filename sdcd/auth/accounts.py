"""Authentication: a client certificate (Docker API) or an HTTP Signature (CloudAPI)
becomes an ``Account``, or ``Unauthorized`` with no detail, or ``Forbidden`` for a
disabled account."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable

from cryptography import x509

from sdcd.auth import clientcert, httpsig
from sdcd.auth.sshkeys import SSHKeyError, SSHPublicKey, parse_authorized_key
from sdcd.core.errors import Forbidden, Unauthorized
from sdcd.store.records import Account


@functools.lru_cache(maxsize=4096)
def _parsed(openssh: str) -> SSHPublicKey | None:
    """Keys are stored as OpenSSH lines; parsing one per request is wasted work."""
    try:
        return parse_authorized_key(openssh)
    except SSHKeyError:
        return None


class Authenticator:
    """Looks accounts and keys up in the store for every request, so a disabled account
    or a removed key takes effect at once."""

    def __init__(self, store, clock: Callable[[], float], max_skew: float = 300) -> None:
        self._store = store
        self._clock = clock
        self._max_skew = max_skew

    async def _account_and_keys(self, login: str | None) -> tuple[Account, list[SSHPublicKey]]:
        if not login:
            raise Unauthorized()
        account, records = await self._store.get_account_and_keys(login)
        if account is None:
            raise Unauthorized()
        keys = [k for k in (_parsed(r.openssh) for r in records) if k is not None]
        return account, keys

    @staticmethod
    def _allowed(account: Account) -> Account:
        if account.disabled:
            raise Forbidden(f"account {account.login} is disabled")
        return account

    async def from_certificate(self, cert: x509.Certificate | None) -> Account:
        """The account a client certificate proves, checked as SDC-BEHAVIOUR.md says."""
        if cert is None:
            raise Unauthorized()
        account, keys = await self._account_and_keys(clientcert.login_of(cert))
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        if clientcert.signing_key(cert, keys, now) is None:
            raise Unauthorized()
        return self._allowed(account)

    async def from_signature(
        self, authorization: str | None, method: str, path: str, headers: dict[str, str]
    ) -> Account:
        """The account an HTTP Signature request proves; a stale ``date`` is refused."""
        if not authorization:
            raise Unauthorized()
        try:
            params = httpsig.parse_authorization(authorization)
            login, fingerprint = params.account_and_fingerprint()
            if "date" not in params.headers:
                raise Unauthorized()
            httpsig.check_date(headers.get("date", ""), self._clock(), self._max_skew)
            signing_string = httpsig.signing_string(params.headers, method, path, headers)
        except httpsig.SignatureError:
            raise Unauthorized() from None
        account, keys = await self._account_and_keys(login)
        for key in keys:
            if key.fingerprint_matches(fingerprint):
                if httpsig.verify(params, signing_string, key.public_key()):
                    return self._allowed(account)
                break
        raise Unauthorized()
