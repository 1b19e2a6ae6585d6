"""The few API calls the demo, the benchmarks and the tests make (aiohttp, one token)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

__all__ = ["AsyncApi", "ApiCallError"]


class ApiCallError(RuntimeError):
    """The API answered with an unexpected status."""


class AsyncApi:
    """JSON calls to the orchestrator's API at ``base`` with a bearer ``token`` (or none)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.token = token

    async def call(
        self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
        params: Any = None, expect: int | None = 200,
    ) -> Any:  # fmt: skip
        """The decoded JSON body.

        Raises:
            ApiCallError: the status is not ``expect`` (``None``: any status will do).
        """
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(
            method, self.base + path, json=json, data=data, params=params, headers=headers
        ) as resp:
            body = await resp.json(content_type=None)
            if expect is not None and resp.status != expect:
                raise ApiCallError(f"{method} {path}: HTTP {resp.status}: {body}")
            return body

    async def upload(
        self, name: str, version: str, payload: bytes, handler: str = "directory"
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/v1/releases", data=payload, expect=201,
            params=[("name", name), ("version", version), ("handler", handler)],
        )  # fmt: skip
        return result

    async def rollout(self, release: int, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/v1/rollouts", json={"release": release, **body}, expect=201
        )
        return result

    async def status(self, rollout_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", f"/v1/rollouts/{rollout_id}")
        return result

    async def targets(self, rollout_id: int) -> list[dict[str, Any]]:
        result = await self.call(
            "GET", f"/v1/rollouts/{rollout_id}/targets", params={"limit": "100000"}
        )
        targets: list[dict[str, Any]] = result["targets"]
        return targets

    async def online_count(self, limit: int) -> int:
        devices = await self.call(
            "GET", "/v1/devices", params={"online": "true", "limit": str(limit)}
        )
        return len(devices["devices"])

    async def wait_online(self, n: int, *, within: float, poll_s: float = 0.2) -> float:
        """Wait until ``n`` devices are online; return the seconds it took.

        Raises:
            TimeoutError: fewer than ``n`` online after ``within`` seconds.
        """
        start = time.monotonic()
        seen = 0
        while time.monotonic() - start < within:
            seen = await self.online_count(n + 10)
            if seen >= n:
                return time.monotonic() - start
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"only {seen} of {n} devices came online within {within:.0f}s")
