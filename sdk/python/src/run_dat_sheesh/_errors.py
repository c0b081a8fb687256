"""Errors raised by the client: one class per kind of failure, each with the HTTP status and the
manager's error code."""

from __future__ import annotations

from typing import Optional


class RdsError(Exception):
    """The manager refused or failed a request."""

    def __init__(self, status: int, code: str, message: str, request_id: Optional[str] = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class BadRequestError(RdsError):
    """400: the request is invalid; the message names the field."""


class AuthenticationError(RdsError):
    """401: the API key is missing, wrong or revoked."""


class NotFoundError(RdsError):
    """404: no such VM, snapshot, image, context or route."""


class ConflictError(RdsError):
    """409: the VM is not in a state that allows this (e.g. exec on a stopped VM)."""


class PayloadTooLargeError(RdsError):
    """413: a body over its limit (the message names the setting)."""


class RateLimitError(RdsError):
    """429: a rate or capacity limit; ``retry_after`` is in seconds when the manager said."""

    retry_after: Optional[float] = None


class ServerError(RdsError):
    """5xx: the manager or the VM failed."""


class ConnectionError(RdsError):  # noqa: A001 - the SDK's own, carries no status
    """The manager could not be reached (after the retries that were safe)."""

    def __init__(self, message: str):
        super().__init__(0, "connection", message)


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}


def error_for(status: int, body: object, headers: Optional[dict] = None) -> RdsError:
    """The typed error for a response with ``status`` and decoded ``body``."""
    code, message = "error", ""
    if isinstance(body, dict):
        detail = body.get("error")
        if isinstance(detail, dict):
            code = str(detail.get("code", code))
            message = str(detail.get("message", ""))
        message = message or str(body.get("message", ""))
    elif isinstance(body, str):
        message = body
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else RdsError)
    err = cls(status, code, message or f"HTTP {status}")
    if isinstance(err, RateLimitError) and headers:
        try:
            err.retry_after = float(headers.get("retry-after"))
        except (TypeError, ValueError):
            pass
    return err
