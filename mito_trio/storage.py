"""Presigned object-store transfers: PUT an archive, GET a resource (PROTOCOL.md §3.8, §3.11).

Both stream from or to disk, so memory stays flat whatever the size. Neither sends an
Authorization header: the URL carries the signature.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import trio

from .client import error_for_status, error_for_transport

CHUNK_SIZE = 1 << 20

_S3_MESSAGE = re.compile(rb"<Message>(.*?)</Message>", re.DOTALL)


def _storage_message(response: httpx.Response) -> str:
    found = _S3_MESSAGE.search(response.content[:4096])
    detail = found.group(1).decode(errors="replace") if found else response.reason_phrase
    return f"storage answered {response.status_code}: {detail}"


async def _file_chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    remaining = size
    async with await trio.open_file(path, "rb") as file:
        while remaining > 0:
            chunk = await file.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise OSError(f"{path} shrank while being uploaded")
            remaining -= len(chunk)
            yield chunk


async def put_file(http: httpx.AsyncClient, url: str, path: Path, size: int) -> None:
    """PUT `path` to a presigned URL with the exact Content-Length it was signed for.

    An explicit Content-Length makes httpx send the body as is, never chunked, which
    S3-style stores reject for presigned PUTs.
    """
    headers = {"Content-Length": str(size)}
    try:
        response = await http.put(url, content=_file_chunks(path, size), headers=headers)
    except httpx.HTTPError as exc:
        raise error_for_transport(exc, "the object store") from exc
    if not response.is_success:
        raise error_for_status(response.status_code, _storage_message(response))


async def download_file(
    http: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """GET a presigned URL into `dest`, streaming; returns the number of bytes written.

    `on_progress`, when given, is called with the running byte count after each chunk, so a
    caller can time out a stalled transfer without bounding a slow but steady one.
    """
    received = 0
    try:
        async with http.stream("GET", url) as response:
            if not response.is_success:
                await response.aread()
                raise error_for_status(response.status_code, _storage_message(response))
            async with await trio.open_file(dest, "wb") as file:
                # No chunk size: with one, httpx holds data back until CHUNK_SIZE has arrived,
                # and a slow but steady transfer would look stalled. Writes stay batched.
                pending = bytearray()
                async for chunk in response.aiter_bytes():
                    pending += chunk
                    received += len(chunk)
                    if len(pending) >= CHUNK_SIZE:
                        await file.write(pending)
                        pending.clear()
                    if on_progress is not None:
                        on_progress(received)
                if pending:
                    await file.write(pending)
    except httpx.HTTPError as exc:
        raise error_for_transport(exc, "the object store") from exc
    return received
