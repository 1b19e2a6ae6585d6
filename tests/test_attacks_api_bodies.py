"""Request bodies (issue #12, hole 7), against the real orchestrator API and its database.

The attack: the JSON body limit was ``max_upload_bytes`` (4 GiB), so a 256 MiB JSON body was
read whole into memory before the 400. Now JSON endpoints take at most ``[http]
max_json_bytes`` (1 MiB by default) and answer 413 beyond it without reading the body; only
the release upload takes large bodies, streamed to disk. An integer too large for any field
gets a plain 400 naming the field, not Python's wording.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from orch_helpers import TOKENS, Setup, setup, wait_until

from fleetpush_common.tasks import cancel_and_wait

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MIB = 2**20


async def _connect(s: Setup) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", s.orch.port)


def _head(method: str, target: str, headers: dict[str, str]) -> bytes:
    auth = f"Authorization: Bearer {TOKENS['admin']}"
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", auth]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """Read one response; a server still waiting for the body fails the test here."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    body = await reader.readexactly(int(headers["Content-Length"]))
    return status, json.loads(body)


async def test_json_body_over_the_limit_is_413_before_the_body_is_read(setup: Setup) -> None:
    """16 MiB announced, none of it sent: the answer comes anyway, so nothing was read."""
    reader, writer = await _connect(setup)
    try:
        writer.write(_head("POST", "/v1/rollouts", {
            "Content-Type": "application/json", "Content-Length": str(16 * MIB)}))  # fmt: skip
        await writer.drain()
        status, body = await _response(reader)
    finally:
        writer.close()
    assert status == 413, body
    assert body == {
        "error": f"request body is larger than {MIB} bytes (http.max_json_bytes)",
        "status": 413,
    }
    async with setup.session.get(setup.api.base + "/healthz") as resp:
        assert resp.status == 200


async def test_chunked_json_body_over_the_limit_is_413(setup: Setup) -> None:
    """No length announced: reading stops at the limit (the rest is never kept)."""
    reader, writer = await _connect(setup)
    chunk = b"[" * (64 * 1024)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"

    async def send() -> None:
        writer.write(_head("POST", "/v1/rollouts", {
            "Content-Type": "application/json", "Transfer-Encoding": "chunked"}))  # fmt: skip
        for _ in range(16 * MIB // len(chunk)):
            writer.write(frame)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        status, body = await _response(reader)
    finally:
        await cancel_and_wait(sender)
        # Abort, not close: close() would first flush the unsent megabytes to a server that
        # stopped reading, keeping the connection (and the server's shutdown) open.
        writer.transport.abort()
    assert status == 413, body
    assert "http.max_json_bytes" in body["error"]


def _on_disk(folder: Path) -> int:
    """Bytes of the largest upload being written (temp files until complete)."""
    return max((p.stat().st_size for p in folder.glob(".upload.*.tmp")), default=0)


async def test_upload_larger_than_the_json_limit_streams_to_disk(setup: Setup) -> None:
    """3 MiB upload: the first 2 MiB are on disk before the rest is sent, so the body is
    streamed, not read whole; then the release is stored with the right size."""
    payload = os.urandom(3 * MIB)
    reader, writer = await _connect(setup)
    uploads = Path(setup.orch.config.payload_dir)
    try:
        writer.write(_head("POST", "/v1/releases?name=big&version=1&handler=command", {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(payload))}))  # fmt: skip
        writer.write(payload[: 2 * MIB])
        await writer.drain()

        async def streamed() -> bool:
            return await asyncio.to_thread(_on_disk, uploads) >= MIB

        await wait_until(streamed, what="the upload's first MiB on disk")
        writer.write(payload[2 * MIB :])
        await writer.drain()
        status, body = await _response(reader)
    finally:
        writer.close()
    assert status == 201, body
    assert body["size"] == len(payload)


async def test_upload_over_its_own_limit_is_413_before_the_body_is_read(setup: Setup) -> None:
    limit = setup.orch.config.http.max_upload_bytes
    reader, writer = await _connect(setup)
    try:
        writer.write(_head("POST", "/v1/releases?name=huge&version=1", {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(limit + 1)}))  # fmt: skip
        await writer.drain()
        status, body = await _response(reader)
    finally:
        writer.close()
    assert status == 413, body
    assert "http.max_upload_bytes" in body["error"]


DIGITS_5000 = "9" * 5000
HUGE: dict[str, tuple[bytes, str]] = {
    # name: (rollout body, the exact error)
    "phase 10**30": (
        b'{"release": 1, "target": {"all": true}, "phases": [1000000000000000000000000000000]}',
        "phases[0]: 1000000000000000000000000000000 is too large (max 9223372036854775807)",
    ),
    "success_pct 10**400": (
        b'{"release": 1, "target": {"all": true}, "success_pct": 1' + b"0" * 400 + b"}",
        "success_pct: a 401-digit number is too large (max 9223372036854775807)",
    ),
    "min_attempts 5000 digits": (
        b'{"release": 1, "target": {"all": true}, "min_attempts": ' + DIGITS_5000.encode() + b"}",
        "min_attempts: a 5000-digit number is too large (max 9223372036854775807)",
    ),
    "start_at -2**64": (
        b'{"release": 1, "target": {"all": true}, "start_at": -18446744073709551616}',
        "start_at: -18446744073709551616 is too small (min -9223372036854775808)",
    ),
    "soak_s 1e400": (
        b'{"release": 1, "target": {"all": true}, "soak_s": 1e400}',
        "soak_s: the number is too large",
    ),
    "nested target": (
        b'{"release": 1, "target": {"devices": [], "x": [0, 99999999999999999999]}}',
        "target.x[1]: 99999999999999999999 is too large (max 9223372036854775807)",
    ),
}


@pytest.mark.parametrize("name", list(HUGE))
async def test_integer_too_large_for_a_field_gets_a_plain_400(name: str, setup: Setup) -> None:
    s = setup
    await s.api.upload("app", "1")
    body, expected = HUGE[name]
    headers = {"Authorization": f"Bearer {TOKENS['admin']}", "Content-Type": "application/json"}
    async with s.session.post(s.api.base + "/v1/rollouts", data=body, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == 400, answer
    assert answer["error"] == expected
