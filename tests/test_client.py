"""CoordinatorClient details that the reaction tests do not reach: URLs and error mapping."""

from __future__ import annotations

from uuid import UUID

import httpx
import pytest

from mito_trio import wire
from mito_trio.client import CoordinatorClient, error_for_status, error_for_transport
from mito_trio.errors import Fatal, Forbidden, NotFound, Transient, Unauthorized, Unreachable

TASK = UUID("9a7e3c1b-6f0e-4f55-9d7c-2a1b3c4d5e6f")


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://coord:5000", "http://coord:5000/workers/tasks"),
        ("http://coord:5000/", "http://coord:5000/workers/tasks"),
        # §13.23: the original drops a path prefix; behind a reverse proxy we keep it.
        ("http://proxy/mitosis", "http://proxy/mitosis/workers/tasks"),
        ("http://proxy/mitosis/", "http://proxy/mitosis/workers/tasks"),
    ],
)
async def test_endpoint_urls_keep_the_base_path(base: str, expected: str) -> None:
    async with httpx.AsyncClient() as http:
        client = CoordinatorClient(http, base)
        assert str(client.url("workers/tasks")) == expected
        # Asked twice (the second time from the cache of fixed endpoints): the same URL.
        assert str(client.url("workers/tasks")) == expected


async def test_attachment_key_is_percent_encoded_per_segment() -> None:
    """§1.1: characters illegal in a path are encoded; `/` stays a separator."""
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(200, json={"url": "http://store/x", "size": 3})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = CoordinatorClient(http, "http://coord")
        client.worker_token = "worker-token"
        located = await client.locate_attachment(TASK, 'data sets/a?b#c"d.tar')

    assert located == wire.RemoteResourceDownloadResp(url="http://store/x", size=3)
    assert seen == [f"/workers/tasks/{TASK}/attachments/data%20sets/a%3Fb%23c%22d.tar".encode()]


async def test_non_upload_report_bodies_are_not_parsed() -> None:
    """Only Upload needs the answer; a 2xx with an odd body is still a success (§3.10)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = CoordinatorClient(http, "http://coord")
        client.worker_token = "worker-token"
        assert await client.report(1, wire.SimpleOp.Finish) == wire.ReportTaskResp(url=None)
        with pytest.raises(Fatal):
            await client.report(1, wire.Upload(wire.ArtifactContentType.RESULT, 10))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (400, Fatal),
        (409, Fatal),
        (422, Fatal),
        (408, Transient),
        (429, Transient),
        (500, Transient),
        (502, Transient),
        (503, Transient),
    ],
)
def test_status_mapping(status: int, kind: type[Exception]) -> None:
    error = error_for_status(status, "boom")
    assert type(error) is kind
    assert error.status == status


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), Unreachable),
        (httpx.ConnectTimeout("slow"), Unreachable),
        (httpx.ReadTimeout("slow"), Transient),
        (httpx.ReadError("reset"), Transient),
        (httpx.RemoteProtocolError("dropped"), Transient),
        (httpx.UnsupportedProtocol("ftp"), Fatal),
        (httpx.TooManyRedirects("loop"), Fatal),
    ],
)
def test_transport_mapping(exc: httpx.HTTPError, kind: type[Exception]) -> None:
    assert type(error_for_transport(exc, "http://coord")) is kind
