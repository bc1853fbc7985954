"""Domain errors raised by ``sdcd.core``. Each carries a user-facing message; the API
layer alone decides which HTTP status each kind becomes."""


class CoreError(Exception):
    """Base of every error a request can end with on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CoreError):
    """The request itself is wrong (bad parameter, bad body)."""


class Unauthorized(CoreError):
    """Who is asking is not established. Never says why: no help to an attacker."""

    def __init__(self, message: str = "Unauthorized") -> None:
        super().__init__(message)


class Forbidden(CoreError):
    """Who is asking is known but may not do this."""


class NotFound(CoreError):
    """No such object in the caller's namespace (another tenant's objects included)."""


class Conflict(CoreError):
    """The object exists already, or its state forbids the change."""


class NotImplementedYet(CoreError):
    """An endpoint a later piece of work will provide."""


class NotModified(CoreError):
    """The object is already in the requested state (dockerd answers 304, no body)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)


class TooManyRequests(CoreError):
    """The account already runs as many of these as the operator allows."""


class Unprocessable(CoreError):
    """Well-formed but unsatisfiable (SDC: no package fits the constraints)."""


class Unavailable(CoreError):
    """What the request needs is not reachable now (a compute node that is down)."""
