"""Malformed and oversized HTTP API requests: each gets a clear 4xx JSON error, never a 500.

tests/test_orch_api.py::test_bad_requests_get_clear_4xx checks the reason text of common
mistakes; this table throws the strange ones at every route (wrong JSON types, huge
numbers, unknown ids in odd encodings, oversized bodies, broken headers) and checks the
*shape* of every answer: a status in 400..499, a JSON body ``{"error": str, "status":
int}`` agreeing with the status line, and the service still healthy afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from orch_helpers import TOKENS, Setup, setup

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Bad:
    method: str
    path: str
    json: Any = None
    data: bytes | None = None
    params: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = TOKENS["admin"]


BIG = 2**70
ROLL = "/v1/rollouts"
CASES: dict[str, Bad] = {
    "rollout body is a list": Bad("POST", ROLL, json=[1, 2]),
    "rollout body is a string": Bad("POST", ROLL, json="release"),
    "rollout body is null": Bad("POST", ROLL, json=None, data=b"null"),
    "rollout body empty": Bad("POST", ROLL, data=b""),
    "rollout body not UTF-8": Bad("POST", ROLL, data=b"\xff\xfe{"),
    "rollout body deeply nested": Bad("POST", ROLL, data=b"[" * 100_000 + b"]" * 100_000),
    "release is a float": Bad("POST", ROLL, json={"release": 1.5, "target": {"all": True}}),
    "release is huge": Bad("POST", ROLL, json={"release": BIG, "target": {"all": True}}),
    "release is a bool": Bad("POST", ROLL, json={"release": True, "target": {"all": True}}),
    "release is a dict": Bad("POST", ROLL, json={"release": {}, "target": {"all": True}}),
    "release ref without @": Bad("POST", ROLL, json={"release": "app", "target": {"all": True}}),
    "target is a list": Bad("POST", ROLL, json={"release": 1, "target": ["dev"]}),
    "target devices not a list": Bad("POST", ROLL, json={"release": 1, "target": {"devices": 5}}),
    "target devices of ints": Bad("POST", ROLL, json={"release": 1, "target": {"devices": [1]}}),
    "phases of strings": Bad(
        "POST", ROLL, json={"release": 1, "target": {"all": True}, "phases": ["a"]}
    ),
    "phases NaN": Bad(
        "POST", ROLL, data=b'{"release": 1, "target": {"all": true}, "phases": [NaN]}'
    ),
    "phases Infinity": Bad(
        "POST", ROLL, data=b'{"release": 1, "target": {"all": true}, "soak_s": Infinity}'
    ),
    "success_pct huge": Bad(
        "POST", ROLL, json={"release": 1, "target": {"all": True}, "success_pct": BIG}
    ),
    "rate negative": Bad(
        "POST", ROLL, json={"release": 1, "target": {"all": True}, "rate_per_min": -1}
    ),
    "windows garbage": Bad(
        "POST", ROLL, json={"release": 1, "target": {"all": True}, "windows": ["25:00-99:00"]}
    ),
    "start_at is a string": Bad(
        "POST", ROLL, json={"release": 1, "target": {"all": True}, "start_at": "tomorrow"}
    ),
    "rollout id huge": Bad("GET", f"{ROLL}/{BIG}"),
    "rollout id negative": Bad("GET", f"{ROLL}/-1"),
    "rollout action unknown": Bad("POST", f"{ROLL}/1/explode", json={}),
    "rollout action on missing": Bad("POST", f"{ROLL}/999999/pause", json={"reason": "x"}),
    "pause reason not a string": Bad("POST", f"{ROLL}/1/pause", json={"reason": 5}),
    "targets with bad state": Bad("GET", f"{ROLL}/1/targets", params={"state": "x" * 5000}),
    "devices limit negative": Bad("GET", "/v1/devices", params={"limit": "-5"}),
    "devices limit huge": Bad("GET", "/v1/devices", params={"limit": str(BIG)}),
    "devices offset text": Bad("GET", "/v1/devices", params={"offset": "abc"}),
    "device id with NUL": Bad("GET", "/v1/devices/a%00b"),
    "device id very long": Bad("GET", "/v1/devices/" + "d" * 7_000),
    "patch device body list": Bad("PATCH", "/v1/devices/x", json=["a"]),
    "patch device tags not map": Bad("PATCH", "/v1/devices/x", json={"tags": ["a"]}),
    "patch device tag values ints": Bad("PATCH", "/v1/devices/x", json={"tags": {"a": 1}}),
    "upload without name": Bad("POST", "/v1/releases", data=b"x", params={"version": "1"}),
    "upload empty body": Bad(
        "POST", "/v1/releases", data=b"", params={"name": "a", "version": "1"}
    ),
    "upload bad handler": Bad(
        "POST",
        "/v1/releases",
        data=b"x",
        params={"name": "a", "version": "1", "handler": "rm -rf"},
    ),
    "upload bad arg": Bad(
        "POST", "/v1/releases", data=b"x", params={"name": "a", "version": "1", "arg": "noeq"}
    ),
    "upload version too long": Bad(
        "POST", "/v1/releases", data=b"x", params={"name": "a", "version": "9" * 1000}
    ),
    "release ref odd": Bad("GET", "/v1/releases/@@@"),
    "release delete missing": Bad("DELETE", "/v1/releases/999999"),
    "token create bad role": Bad("POST", "/v1/tokens", json={"name": "x", "role": "god"}),
    "token create no name": Bad("POST", "/v1/tokens", json={"role": "viewer"}),
    "token create body list": Bad("POST", "/v1/tokens", json=[]),
    "audit limit text": Bad("GET", "/v1/audit", params={"limit": "lots"}),
    "audit after negative": Bad("GET", "/v1/audit", params={"after": "-1"}),
    "payload bad sha": Bad("GET", "/payloads/not-a-sha", params={"exp": "1", "sig": "x"}),
    "payload missing sig": Bad("GET", "/payloads/" + "0" * 64),
    "payload exp huge": Bad("GET", "/payloads/" + "0" * 64, params={"exp": str(BIG), "sig": "a"}),
    "bearer garbage": Bad("GET", "/v1/devices", headers={"Authorization": "Bearer a b\tc"}),
    "basic auth": Bad("GET", "/v1/devices", headers={"Authorization": "Basic YTpi"}, token=None),
    "huge token": Bad("GET", "/v1/devices", token="fp_" + "a" * 6000),
    "unknown route": Bad("GET", "/v1/nothing-here"),
    "wrong method": Bad("PUT", "/v1/devices"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_request_gets_a_clear_4xx(name: str, setup: Setup) -> None:
    case = CASES[name]
    s = setup
    headers = dict(case.headers)
    if case.token is not None and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {case.token}"
    kw: dict[str, Any] = {"headers": headers, "params": case.params}
    if case.data is not None:
        kw["data"] = case.data
    elif case.json is not None:
        kw["json"] = case.json
    async with s.session.request(case.method, s.api.base + case.path, **kw) as resp:
        text = await resp.text()
        assert 400 <= resp.status < 500, (resp.status, text[:300])
        assert resp.content_type == "application/json", text[:300]
        body = await resp.json()
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    assert body.get("status") == resp.status, body
    assert "Traceback" not in body["error"]
    async with s.session.get(s.api.base + "/healthz") as resp:
        assert resp.status == 200


async def test_oversized_request_line_and_headers_are_refused(setup: Setup) -> None:
    """Refused by aiohttp's HTTP parser before the application runs (so plain text, not
    JSON): the limit protects the service, and it keeps answering."""
    s = setup
    auth = {"Authorization": f"Bearer {TOKENS['viewer']}"}
    async with s.session.get(s.api.base + "/v1/devices/" + "d" * 20_000, headers=auth) as resp:
        assert 400 <= resp.status < 500
    async with s.session.get(
        s.api.base + "/v1/devices", headers={**auth, "X-Big": "x" * 20_000}
    ) as resp:
        assert 400 <= resp.status < 500
    async with s.session.get(s.api.base + "/healthz") as resp:
        assert resp.status == 200
