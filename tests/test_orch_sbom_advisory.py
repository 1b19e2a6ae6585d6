"""Releases that carry their evidence, against a real orchestrator (real HTTP API, SQLite):
an SBOM (SPDX or CycloneDX JSON) checked, stored, served and shown; a security release's
advisory checked and shown; bad documents refused with a clear message, nothing kept."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from orch_helpers import PAYLOAD, TOKENS, Setup, setup

from orchestrator.advisories import AdvisoryError, parse_advisory
from orchestrator.cli.main import main
from orchestrator.sbom import SbomError, parse_sbom

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ENV = {"FLEETPUSH_SERVER": "", "FLEETPUSH_TOKEN": "", "FLEETPUSH_CONFIG": ""}

CYCLONEDX = {
    "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
    "components": [
        {"type": "library", "name": "openssl", "version": "3.0.13",
         "purl": "pkg:generic/openssl@3.0.13",
         "components": [{"type": "library", "name": "zlib", "version": "1.3.1"}]},
        {"type": "application", "name": "app", "version": "2.0"},
    ],
}  # fmt: skip
SPDX = {
    "spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": "app-2.0",
    "packages": [{"SPDXID": "SPDXRef-busybox", "name": "busybox", "versionInfo": "1.36.1",
                  "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER",
                                    "referenceType": "purl",
                                    "referenceLocator": "pkg:generic/busybox@1.36.1"}]}],
}  # fmt: skip
ADVISORY = {"cves": ["CVE-2026-10001"], "severity": "critical", "disruptive": True,
            "summary": "Fixes a remote code execution in the HTTP parser.",
            "max_postpone": "12h"}  # fmt: skip


async def cli(s: Setup, *args: str) -> Result:
    full = [*args, "--server", s.api.base, "--token", TOKENS["operator"]]
    return await asyncio.to_thread(CliRunner().invoke, main, full, env=ENV)


def write(path: Path, doc: object) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


async def test_sbom_upload_checked_stored_served_and_shown(setup: Setup, tmp_path: Path) -> None:
    s = setup
    payload = write(tmp_path / "app.tar", "")
    payload.write_bytes(PAYLOAD)
    # Bad JSON: refused before anything is uploaded, saying where.
    bad = write(tmp_path / "bad.json", '{"bomFormat": "CycloneDX", "components": [}')
    refused = await cli(s, "release", "upload", str(payload), "--name", "app", "--version",
                        "2.0", "--sbom", str(bad))  # fmt: skip
    assert refused.exit_code == 2
    assert "sbom: not valid JSON (line 1, column 43: Expecting value)" in refused.output
    assert (await s.api.call("GET", "/v1/releases"))["releases"] == []
    # The API refuses the same, and an unknown format, and keeps the release as it was.
    rel = await s.api.upload("app", "2.0")
    for body, words in ((b'{"bomFormat": ', "not valid JSON"),
                        (b'{"name": "x"}', "unknown format: expected SPDX JSON"),
                        (b"\xff\xfe", "not UTF-8"),
                        (b'{"spdxVersion": "SPDX-2.3", "SPDXID": "d", "packages": [{}]}',
                         "packages[0].name: expected a non-empty string")):  # fmt: skip
        answer = await s.api.call("PUT", f"/v1/releases/{rel['id']}/sbom", data=body, expect=400)
        assert words in answer["error"], answer
    assert (await s.api.call("GET", f"/v1/releases/{rel['id']}"))["sbom"] is None
    await s.api.call("GET", f"/v1/releases/{rel['id']}/sbom", expect=404)

    # A good one through the CLI: stored byte for byte, its components listed.
    good = write(tmp_path / "bom.json", CYCLONEDX)
    made = await cli(s, "release", "upload", str(payload), "--name", "app", "--version", "2.1",
                     "--sbom", str(good))  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "sbom: cyclonedx 1.5, 3 component(s)" in made.output
    shown = await cli(s, "release", "show", "app@2.1")
    assert shown.exit_code == 0, shown.output
    for name in ("openssl", "3.0.13", "zlib", "pkg:generic/openssl@3.0.13"):
        assert name in shown.output
    rid = json.loads((await cli(s, "release", "show", "app@2.1", "--json")).output)["id"]
    async with s.session.get(
        f"{s.api.base}/v1/releases/{rid}/sbom",
        headers={"Authorization": f"Bearer {TOKENS['viewer']}"},
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == good.read_bytes()
    # SPDX, attached later to the first release.
    spdx = write(tmp_path / "spdx.json", SPDX)
    attached = await cli(s, "release", "sbom", str(rel["id"]), str(spdx))
    assert attached.exit_code == 0, attached.output
    view = await s.api.call("GET", f"/v1/releases/{rel['id']}")
    assert view["sbom"]["format"] == "spdx"
    assert view["sbom"]["components"] == [
        {"name": "busybox", "version": "1.36.1", "purl": "pkg:generic/busybox@1.36.1"}
    ]


async def test_security_release_carries_a_checked_advisory(setup: Setup, tmp_path: Path) -> None:
    s = setup
    payload = tmp_path / "app.tar"
    payload.write_bytes(PAYLOAD)
    advisory = write(tmp_path / "advisory.json", ADVISORY)
    alone = await cli(s, "release", "upload", str(payload), "--name", "app", "--version", "3.0",
                      "--security")  # fmt: skip
    assert alone.exit_code == 2
    assert "--security and --advisory FILE go together" in alone.output
    bad = write(tmp_path / "bad-advisory.json", {**ADVISORY, "cves": ["CVE-26-1"]})
    refused = await cli(s, "release", "upload", str(payload), "--name", "app", "--version",
                        "3.0", "--security", "--advisory", str(bad))  # fmt: skip
    assert refused.exit_code == 2
    assert "CVE-2026-12345" in refused.output
    assert (await s.api.call("GET", "/v1/releases"))["releases"] == []
    made = await cli(s, "release", "upload", str(payload), "--name", "app", "--version", "3.0",
                     "--security", "--advisory", str(advisory))  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "security update (critical): CVE-2026-10001" in made.output
    rel = await s.api.call("GET", "/v1/releases/app@3.0")
    assert rel["update_class"] == "security"
    assert rel["advisory"] == {"cves": ["CVE-2026-10001"], "disruptive": True,
                               "max_postpone_s": 43200, "severity": "critical",
                               "summary": ADVISORY["summary"]}  # fmt: skip
    # The API refuses an advisory on a feature release, and a security one without.
    params = [("name", "app"), ("version", "3.1"), ("security", "true")]
    await s.api.call("POST", "/v1/releases", data=PAYLOAD, expect=400, params=params)
    answer = await s.api.call(
        "POST", "/v1/releases", data=PAYLOAD, expect=400,
        params=[("name", "app"), ("version", "3.1"), ("advisory", json.dumps(ADVISORY))],
    )  # fmt: skip
    assert "only a security release" in answer["error"]


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"cves": "CVE-2026-1", "severity": "high", "summary": "x"}, "cves"),
        ({"cves": [], "severity": "urgent", "summary": "x"}, "none, low, medium, high or critical"),
        ({"cves": [], "severity": "low", "summary": ""}, "1..1000 characters"),
        ({"cves": [], "severity": "low"}, "advisory.summary: missing"),
        ({"cves": [], "severity": "low", "summary": "x", "colour": 1}, "advisory.colour: unknown"),
        ({"cves": [], "severity": "low", "summary": "x", "max_postpone": "400d"}, "365d"),
        (
            {"cves": ["CVE-2026-1111", "CVE-2026-1111"], "severity": "low", "summary": "x"},
            "duplicate",
        ),
    ],
)
def test_bad_advisories_name_the_field(doc: dict[str, object], words: str) -> None:
    with pytest.raises(AdvisoryError, match=None) as e:
        parse_advisory(json.dumps(doc))
    assert words in str(e.value)


def test_sbom_parse_flattens_nested_cyclonedx_and_bounds_depth() -> None:
    sbom = parse_sbom(json.dumps(CYCLONEDX).encode())
    assert [c.name for c in sbom.components] == ["openssl", "app", "zlib"]
    deep: dict[str, object] = {"name": "leaf"}
    for _ in range(40):
        deep = {"name": "n", "components": [deep]}
    with pytest.raises(SbomError, match="nested more than 32 deep"):
        parse_sbom(json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.5",
                               "components": [deep]}).encode())  # fmt: skip
    with pytest.raises(SbomError, match="expected a JSON object"):
        parse_sbom(b"[1, 2]")
