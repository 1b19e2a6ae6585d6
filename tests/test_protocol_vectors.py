"""The published test vectors and the implementation agree, and cover every error code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.vectors import run_vectors
from orchestrator.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "docs" / "protocol" / "test-vectors.json"


def _leaf_codes() -> set[str]:
    def walk(cls: type[ContentError]) -> set[type[ContentError]]:
        subs = set(cls.__subclasses__())
        return subs.union(*(walk(s) for s in subs)) if subs else subs

    return {c.code for c in walk(ContentError) if not c.__subclasses__()}


def test_vectors_pass() -> None:
    document = json.loads(VECTORS.read_text())
    results = run_vectors(document)
    assert len(results) >= 30
    failures = [(r.name, r.expected, r.actual, r.detail) for r in results if not r.ok]
    assert failures == []


def test_vectors_cover_every_error_code_and_duplicates() -> None:
    document = json.loads(VECTORS.read_text())
    codes = {c["expected"].get("code") for c in document["cases"]}
    assert _leaf_codes() <= codes
    kinds = {c["kind"] for c in document["cases"]}
    assert {"notice", "keyring", "keyring_chain", "payload", "device_message"} <= kinds


def test_vectors_file_is_what_the_generator_writes() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_test_vectors.py")],
        capture_output=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.decode() == VECTORS.read_text()


def test_cli_verify_reports_each_case_and_fails_on_mismatch(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["protocol", "verify", "--vectors", str(VECTORS), "--json"])
    assert ok.exit_code == 0, ok.output
    rows = json.loads(ok.output)
    assert all(set(r) == {"name", "expected", "actual", "ok", "detail"} for r in rows)
    assert all(r["expected"] == r["actual"] and r["ok"] for r in rows)

    document = json.loads(VECTORS.read_text())
    document["cases"][0]["expected"] = {"outcome": "error", "code": "expired"}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(document))
    bad = runner.invoke(main, ["protocol", "verify", "--vectors", str(broken)])
    assert bad.exit_code == 1
    assert "FAIL notice-accept" in bad.output


def test_cli_inspect_checks_signatures(tmp_path: Path) -> None:
    document = json.loads(VECTORS.read_text())
    case = next(c for c in document["cases"] if c["name"] == "notice-accept")
    path = tmp_path / "notice.hex"
    path.write_text(case["message"])
    signer = json.loads(
        CliRunner().invoke(main, ["protocol", "inspect", "--hex", "--json", str(path)]).output
    )["signatures"][0]["key"]
    result = CliRunner().invoke(main, ["protocol", "inspect", "--hex", str(path), "--key", signer])
    assert result.exit_code == 0, result.output
    assert "notice message" in result.output
    assert ": valid" in result.output
    other = CliRunner().invoke(
        main, ["protocol", "inspect", "--hex", str(path), "--key", "00" * 32]
    )
    assert "unknown key" in other.output
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00garbage")
    bad = CliRunner().invoke(main, ["protocol", "inspect", str(garbage)])
    assert bad.exit_code != 0
    assert "malformed" in bad.output


def test_cli_verify_fails_only_the_case_with_an_out_of_bounds_policy(tmp_path: Path) -> None:
    document = json.loads(VECTORS.read_text())
    document["cases"][0]["policy"] = {"clock_skew_s": 10**9}
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(document))
    result = CliRunner().invoke(main, ["protocol", "verify", "--vectors", str(path), "--json"])
    assert result.exit_code == 1
    rows = json.loads(result.output)
    assert len(rows) == len(document["cases"])
    bad = [r for r in rows if not r["ok"]]
    assert [(r["name"], r["actual"]) for r in bad] == [("notice-accept", "invalid_case")]
    assert "clock_skew_s" in bad[0]["detail"]


def test_cli_verify_json_shows_which_decoded_fields_differ(tmp_path: Path) -> None:
    document = json.loads(VECTORS.read_text())
    case = next(c for c in document["cases"] if c["name"] == "notice-accept")
    case["expected"]["decoded"]["seq"] = 2
    del case["expected"]["decoded"]["handler"]
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(document))
    result = CliRunner().invoke(main, ["protocol", "verify", "--vectors", str(path), "--json"])
    assert result.exit_code == 1
    [row] = [r for r in json.loads(result.output) if not r["ok"]]
    assert (row["expected"], row["actual"]) == ("accept", "accept")
    assert row["differences"] == [
        {"path": "handler", "expected": "<absent>", "actual": "directory"},
        {"path": "seq", "expected": 2, "actual": 1},
    ]
    text = CliRunner().invoke(main, ["protocol", "verify", "--vectors", str(path)])
    assert "seq: expected 2, actual 1" in text.output


def test_unknown_kind_fails_its_case_only() -> None:
    document = json.loads(VECTORS.read_text())
    document["cases"][0]["kind"] = "firmware"
    results = run_vectors(document)
    assert [(r.name, r.actual) for r in results if not r.ok] == [("notice-accept", "invalid_case")]
