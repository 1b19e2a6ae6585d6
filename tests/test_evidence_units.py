"""Issue 18's pure logic: cleaning and bounding a step's output, at both ends."""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from device_client.commands import run_command
from device_client.config import ConfigError, parse_config
from device_client.hooks import NotifyHook
from device_client.output_tail import RollingTail, fit_report
from fleetpush_protocol.envelope import decode_message, encode_message
from fleetpush_protocol.messages import ErrorInfo, Report, ReportState
from fleetpush_protocol.output import (
    REPORT_BYTES,
    StepOutput,
    clean_text,
    decode_output,
    fit_outputs,
    fit_tails,
    tail_bytes,
)
from fleetpush_sim.signing import make_notice
from orchestrator.evidence import accept_output

# Hostile output, each with what an operator is shown.
CLEANED = [
    ("ansi colour", "\x1b[31mred\x1b[0m done", "red done"),
    ("cursor moves", "a\x1b[2J\x1b[Hb", "ab"),
    ("osc title", "\x1b]0;owned\x07ok", "ok"),
    ("osc hyperlink", "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("unterminated osc ends at its line", "\x1b]0;title\nthe rest", "\nthe rest"),
    ("8-bit csi", "x\x9b31my", "xy"),
    ("nul and bell", "a\x00b\x07c", "abc"),
    ("c1 controls", "a\x85b\x9fc", "abc"),
    ("del", "a\x7fb", "ab"),
    ("bidi override", "user\u202egnp.exe", "usergnp.exe"),
    ("bidi isolate", "a\u2066b\u2069c", "abc"),
    ("crlf and cr", "one\r\ntwo\rthree", "one\ntwo\nthree"),
    ("newline and tab kept", "a\tb\nc", "a\tb\nc"),
    ("markup is text", "<script>alert(1)</script>", "<script>alert(1)</script>"),
    ("unicode kept", "naïve ✓ 日本", "naïve ✓ 日本"),
]


@pytest.mark.parametrize(("name", "raw", "shown"), CLEANED, ids=[c[0] for c in CLEANED])
def test_clean_text(name: str, raw: str, shown: str) -> None:
    assert clean_text(raw) == shown


def test_decode_output_replaces_invalid_utf8_and_skips_a_cut_character() -> None:
    assert decode_output(b"ok \xff\xfe end") == "ok \ufffd\ufffd end"
    cut = "é".encode() * 3
    assert decode_output(cut[1:]) == "éé"  # the first character's tail is not shown
    assert decode_output(b"a\x00\x1b[1mb") == "ab"


def test_tail_bytes_keeps_whole_characters() -> None:
    assert tail_bytes("abc", 10) == "abc"
    assert tail_bytes("aé" * 4, 5) == "éaé"  # 5 bytes: é a é
    assert len(tail_bytes("日本語", 4).encode()) <= 4
    assert tail_bytes("日本語", 4) == "語"


def test_fit_tails_shares_fairly() -> None:
    assert fit_tails(["a" * 100, "b" * 10], 50) == ["a" * 40, "b" * 10]
    assert fit_tails(["a" * 100, "b" * 100], 50) == ["a" * 25, "b" * 25]
    assert fit_tails(["xy", ""], 0) == ["", ""]


def test_fit_outputs_cleans_and_bounds_the_whole() -> None:
    hostile = StepOutput(step="install", printed=10**9, stdout="\x1b[1m" + "o" * 9000,
                         stderr="e\x00" * 100)  # fmt: skip
    [fitted] = fit_outputs([hostile, hostile, hostile, hostile, hostile][:1], 4096)
    assert fitted.printed == 10**9
    assert fitted.stderr == "e" * 100
    assert len(fitted.stdout.encode()) + len(fitted.stderr.encode()) <= 4096
    assert len(fit_outputs([hostile] * 4, 4096)) == 4


def test_rolling_tail_keeps_only_the_end() -> None:
    tail = RollingTail(8)
    for chunk in (b"0123", b"456789", b"abcdefghijkl", b"Z"):
        tail.write(chunk)
    assert tail.total == 23
    assert tail.text() == "fghijklZ"


def _report(message: str, output: tuple[StepOutput, ...]) -> bytes:
    return encode_message(Report(
        device_id="d", notice_id="n", rollout_id="1", state=ReportState.FAILED,
        current_version="1", counter=1, reported_at=0,
        error=ErrorInfo(code="install_failed", message=message), output=output or msgspec.UNSET,
    ))  # fmt: skip


def test_a_report_stays_within_the_report_limit_whatever_its_message() -> None:
    out = StepOutput(step="install", printed=20000, stdout="日" * 3000, stderr="x" * 6000)
    data = fit_report(lambda b: _report("€" * 1024, fit_outputs([out], b)), 6144)
    assert len(data) <= REPORT_BYTES
    report = decode_message(data)
    assert isinstance(report, Report)
    assert report.output  # shortened, not dropped


def test_an_output_the_orchestrator_would_refuse_is_left_out_not_the_report() -> None:
    bad = StepOutput(step="<install>", printed=1, stdout="x", stderr="")  # built unchecked
    data = fit_report(lambda b: _report("m", fit_outputs([bad], b) if b else ()), 4096)
    report = decode_message(data)
    assert isinstance(report, Report)
    assert report.state is ReportState.FAILED
    assert not report.output


def test_output_only_on_failures() -> None:
    out = (StepOutput(step="install", printed=1, stdout="x", stderr=""),)
    with pytest.raises(ValueError, match="output is only"):
        Report(device_id="d", notice_id="n", rollout_id="1", state=ReportState.SUCCEEDED,
               current_version="1", counter=1, reported_at=0, output=out)  # fmt: skip


async def test_a_command_flooding_50_mb_is_drained_and_keeps_a_bounded_tail() -> None:
    script = (
        "import sys\n"
        "chunk = b'x' * 65535 + b'\\n'\n"
        "for _ in range(400): sys.stdout.buffer.write(chunk)\n"  # 25 MiB
        "for _ in range(400): sys.stderr.buffer.write(chunk)\n"  # 25 MiB
        "sys.stdout.write('last words'); sys.stderr.write('bad end')\n"
        "sys.exit(2)\n"
    )
    tracemalloc.start()
    try:
        result = await asyncio.wait_for(
            run_command([sys.executable, "-c", script], timeout_s=120), 150
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"{peak} bytes held while 50 MB went through"
    assert result.returncode == 2
    assert result.captured is not None
    [out] = result.output("install")
    assert out.printed == 800 * 65536 + len("last words") + len("bad end")
    assert out.stdout.endswith("last words")
    assert out.stderr.endswith("bad end")
    assert len(out.stdout.encode()) <= 6144
    assert len(out.stderr.encode()) <= 6144
    assert result.describe().endswith("bad end")


def test_the_output_tail_setting_uses_the_size_syntax_and_its_bounds(tmp_path: Path) -> None:
    raw = {
        "device": {"id": "dev-001", "model": "rpi4", "state_dir": "st"},
        "broker": {"url": "mqtt://127.0.0.1:1883", "username": "dev-001", "password": "pw"},
        "trust": {"root_keys": ["ab" * 32]},
    }
    assert parse_config(raw, base=tmp_path).evidence.output_tail == 4096
    raw["evidence"] = {"output_tail": "2KiB"}
    assert parse_config(raw, base=tmp_path).evidence.output_tail == 2048
    raw["evidence"] = {"output_tail": "7KiB"}
    with pytest.raises(ConfigError, match=r"\[evidence\] output_tail"):
        parse_config(raw, source="device.toml", base=tmp_path)


def test_the_orchestrator_cuts_a_devices_output_to_its_own_cap() -> None:
    hostile = StepOutput(step="install", printed=5, stdout="\x1b[2J" + "a" * 900 + "END",
                         stderr="\x00" * 50)  # fmt: skip
    report = Report(
        device_id="d", notice_id="n", rollout_id="1", state=ReportState.FAILED,
        current_version="1", counter=1, reported_at=0,
        error=ErrorInfo(code="install_failed", message="x"), output=(hostile,),
    )  # fmt: skip
    [out] = accept_output(report, 100).output or ()
    assert (out.stdout, out.stderr) == ("a" * 97 + "END", "")
    assert accept_output(report, 0).output is msgspec.UNSET


async def test_a_timed_out_step_keeps_what_it_printed_before_it_was_killed() -> None:
    script = "echo 'waiting for the service'; exec sleep 60"
    result = await run_command(["/bin/sh", "-c", script], timeout_s=3)
    assert result.timed_out
    [out] = result.output("health_check")
    assert out.stdout == "waiting for the service\n"


async def test_a_step_that_cannot_start_reports_no_output() -> None:
    result = await run_command(["/nonexistent/step"], timeout_s=5)
    assert result.returncode is None
    assert result.output("install") == ()


async def test_a_notify_hook_flooding_stderr_is_drained_bounded_and_logged_cleaned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flood = tmp_path / "hook.py"
    flood.write_text(
        "import sys\n"
        "for _ in range(10 * 1024): sys.stderr.buffer.write(b'z' * 1023 + b'\\n')\n"
        "sys.stderr.write('\\x1b[31mhook broke\\x1b[0m')\n"
        "sys.exit(3)\n"
    )
    raw = {
        "device": {"id": "dev-1", "model": "rpi4", "state_dir": "st"},
        "broker": {"url": "mqtt://127.0.0.1:1883", "username": "dev-1", "password": "pw"},
        "trust": {"root_keys": ["ab" * 32]},
        "security": {"notify_command": [sys.executable, str(flood)]},
    }
    (tmp_path / "st").mkdir()
    hook = NotifyHook(parse_config(raw, base=tmp_path))
    tracemalloc.start()
    try:
        await asyncio.wait_for(hook.announce(make_notice()), 60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20
    [record] = [r for r in caplog.records if "notify_command exited 3" in r.getMessage()]
    assert record.getMessage().endswith("z\nhook broke")
