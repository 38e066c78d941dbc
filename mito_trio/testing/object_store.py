"""An in-memory stand-in for the S3 buckets, reached through presigned URLs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape

import attrs

__all__ = [
    "ARTIFACTS",
    "ATTACHMENTS",
    "Grant",
    "ObjectStore",
    "PresignError",
    "StoredObject",
    "s3_error",
]

ARTIFACTS = "artifacts"
ATTACHMENTS = "attachments"


@attrs.define
class StoredObject:
    """One stored body; `data` is None when uploads are discarded (size and hash kept)."""

    size: int
    sha256: str
    data: bytes | bytearray | None

    @classmethod
    def of(cls, data: bytes) -> StoredObject:
        """Wrap bytes held in memory."""
        return cls(size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data)


class PresignError(Exception):
    """A presigned URL that does not authorise the request; carries the S3 error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@attrs.frozen
class Grant:
    """What a valid presigned URL allows."""

    method: str
    bucket: str
    key: str
    length: int | None


class ObjectStore:
    """Buckets of objects plus HMAC-signed, expiring URLs for one method and key."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self.objects: dict[tuple[str, str], StoredObject] = {}

    def get(self, bucket: str, key: str) -> StoredObject | None:
        """The object under `key`, if any."""
        return self.objects.get((bucket, key))

    def put(self, bucket: str, key: str, obj: StoredObject) -> None:
        """Store (or replace) an object."""
        self.objects[(bucket, key)] = obj

    def presign(
        self, method: str, bucket: str, key: str, *, expires_in: float, length: int | None = None
    ) -> str:
        """Path and query of a URL allowing `method` on `key` for `expires_in` seconds."""
        expires = int(self._clock() + expires_in)
        params: dict[str, str | int] = {"exp": expires}
        if length is not None:
            params["len"] = length
        params["sig"] = self._sign(method, bucket, key, length, expires)
        return f"/store/{bucket}/{quote(key, safe='/')}?{urlencode(params)}"

    def verify(self, method: str, bucket: str, key: str, query: dict[str, str]) -> Grant:
        """The grant of a presigned request, or PresignError (403) if it is not valid."""
        try:
            expires = int(query["exp"])
            length = int(query["len"]) if "len" in query else None
            signature = query["sig"]
        except (KeyError, ValueError):
            raise PresignError(
                403, "AccessDenied", "Query-string authentication required"
            ) from None
        expected = self._sign(method, bucket, key, length, expires)
        if not hmac.compare_digest(signature, expected):
            raise PresignError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided",
            )
        if self._clock() > expires:
            raise PresignError(403, "AccessDenied", "Request has expired")
        return Grant(method=method, bucket=bucket, key=key, length=length)

    def _sign(self, method: str, bucket: str, key: str, length: int | None, expires: int) -> str:
        message = f"{method}\n{bucket}\n{key}\n{length}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def s3_error(code: str, message: str) -> bytes:
    """An S3-style XML error document (the worker logs its `<Message>`)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    ).encode()
