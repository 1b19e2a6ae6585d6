"""The operator CLI against a real orchestrator (real Mosquitto, HTTP API, SQLite, device
agents): ``rollout status --watch`` exit codes, dry runs, the conflict refusal, the gate
after resume, revert, upload checks and errors that say what to do."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from orch_helpers import PAYLOAD, TOKENS, Api, Setup, rollout_in, setup, start_devices, wait_until

from orchestrator.cli.main import main
from orchestrator.cli.releases import upload
from orchestrator.client import UPLOAD_CHUNK, ApiClient

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ENV = {"FLEETPUSH_SERVER": "", "FLEETPUSH_TOKEN": "", "FLEETPUSH_CONFIG": ""}


async def cli(s: Setup, *args: str, token: str = TOKENS["operator"]) -> Result:
    """Run ``fleetpush ARGS`` against the test API (off this loop, which serves it)."""
    full = [*args, "--server", s.api.base, "--token", token]
    return await asyncio.to_thread(CliRunner().invoke, main, full, env=ENV)


def devices_arg(*ids: str) -> str:
    return ",".join(f"device:{d}" for d in ids)


async def test_watch_exit_codes_say_how_the_rollout_stopped(setup: Setup) -> None:
    s = setup
    await start_devices(s, "ok-1", "ok-2")
    await start_devices(s, "bad-1", "bad-2", "bad-3", "bad-4", healthy=False)
    rel = await s.api.upload("app", "2.0")
    # 0: completed. Four phases on two devices: two of them are empty (0/0, not 0/1).
    done = await cli(s, "rollout", "create", "app@2.0", "--target", devices_arg("ok-1", "ok-2"),
                     "--phases", "1%,10%,50%,100%", "--json")  # fmt: skip
    assert done.exit_code == 0, done.output
    rid = json.loads(done.output)["id"]
    watched = await cli(s, "rollout", "status", str(rid), "--watch", "--interval", "0.2")
    assert watched.exit_code == 0, watched.output
    st = await s.api.status(rid)
    assert [p["phase"] for p in st["phases"]] == [1, 2, 3, 4]
    assert [p["devices"] for p in st["phases"]] == [1, 0, 0, 1]
    assert [p["status"] for p in st["phases"]] == ["done"] * 4  # not "open" once finished
    assert st["current_phase"] == 4
    text = await cli(s, "rollout", "status", str(rid))
    assert "0/0" in text.output, text.output
    assert "0/1" not in text.output, text.output
    assert "phase 1 1% done" in text.output
    # 3: paused by itself (failure threshold), with the reason on stderr.
    paused = await s.api.rollout(rel["id"], target={"devices": ["bad-1", "bad-2"]},
                                 failure_pct=10, min_attempts=1)  # fmt: skip
    watched = await cli(s, "rollout", "status", str(paused["id"]), "--watch", "--interval", "0.2")
    assert watched.exit_code == 3, watched.output
    assert "failure threshold" in watched.output
    # 4: aborted.
    aborted = await s.api.rollout(rel["id"], target={"devices": ["bad-3", "bad-4"]},
                                  failure_pct=10, min_attempts=1, on_failure="abort")  # fmt: skip
    watched = await cli(s, "rollout", "status", str(aborted["id"]), "--watch", "--interval", "0.2")
    assert watched.exit_code == 4, watched.output
    # 5: canceled while being watched (a scheduled rollout does not move on its own).
    rel3 = await s.api.upload("app", "3.0")
    later = await s.api.rollout(rel3["id"], target={"devices": ["ok-1"]}, start_at=4e9)
    watch = asyncio.create_task(
        cli(s, "rollout", "status", str(later["id"]), "--watch", "--interval", "0.2", "--json")
    )
    await s.api.call("POST", f"/v1/rollouts/{later['id']}/cancel", json={"reason": "not now"})
    watched = await watch
    assert watched.exit_code == 5, watched.output
    assert json.loads(watched.output.splitlines()[-1])["state"] == "canceled"
    # 3 again: paused by an operator.
    held = await s.api.rollout(rel3["id"], target={"devices": ["ok-2"]}, start_at=4e9)
    await s.api.call("POST", f"/v1/rollouts/{held['id']}/pause", json={"reason": "freeze"})
    watched = await cli(s, "rollout", "status", str(held["id"]), "--watch")
    assert watched.exit_code == 3, watched.output
    assert "freeze" in watched.output
    # 1: the API refused (no such rollout); 2: the API cannot be reached.
    missing = await cli(s, "rollout", "status", "999", "--watch")
    assert missing.exit_code == 1
    assert "no rollout 999" in missing.output
    gone = await asyncio.to_thread(
        CliRunner().invoke, main,
        ["rollout", "status", "1", "--watch", "--server", "http://127.0.0.1:9", "--token", "x"],
        env=ENV,
    )  # fmt: skip
    assert gone.exit_code == 2, gone.output
    assert "cannot reach" in gone.output


async def test_dry_run_shows_the_phases_create_takes_and_what_holds_devices(setup: Setup) -> None:
    s = setup
    ids = [f"d-{i}" for i in range(6)]
    await start_devices(s, *ids)
    await s.fleet.stop("d-5")

    async def offline() -> bool:
        return not (await s.api.call("GET", "/v1/devices/d-5"))["online"]

    await wait_until(offline, what="d-5 offline")
    await s.api.call("PATCH", "/v1/devices/d-4", json={"model": "x86"})
    await s.api.call(
        "POST", "/v1/releases", data=PAYLOAD, expect=201,
        params=[("name", "app"), ("version", "2.0"), ("model", "rpi4")],
    )  # fmt: skip
    other_rel = await s.api.upload("app", "1.9")
    other = await s.api.rollout(other_rel["id"], target={"devices": ["d-3"]}, start_at=4e9)
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    audit_before = len((await admin.call("GET", "/v1/audit"))["entries"])
    body = {"release": "app@2.0", "target": {"devices": ids}, "phases": [25, 50, 100]}
    plan = await s.api.call("POST", "/v1/rollouts", json={**body, "dry_run": True}, expect=200)
    assert plan["dry_run"] is True
    assert plan["total"] == 5
    assert [p["phase"] for p in plan["phases"]] == [1, 2, 3]
    assert [p["percent"] for p in plan["phases"]] == [25.0, 50.0, 100.0]
    held = {h["device"]: h for h in plan["held"]}
    assert held["d-5"]["reasons"] == ["offline"]
    assert held["d-5"]["rollout_id"] is None
    assert held["d-3"]["reasons"] == ["other_rollout"]
    assert held["d-3"]["rollout_id"] == other["id"]
    assert held["d-4"] == {"device": "d-4", "phase": None, "reasons": ["model_mismatch"],
                           "rollout_id": None}  # fmt: skip
    # Nothing was created, nothing audited.
    assert len((await s.api.call("GET", "/v1/rollouts"))["rollouts"]) == 1
    assert len((await admin.call("GET", "/v1/audit"))["entries"]) == audit_before
    # The same text from the CLI.
    text = await cli(s, "rollout", "create", "app@2.0", "--target", devices_arg(*ids),
                     "--phases", "25%,50%,100%", "--dry-run")  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "phase 1 (25%): 2 device(s)" in text.output
    assert f"held: d-3 (phase {held['d-3']['phase']}): other_rollout (rollout {other['id']})" \
        in text.output  # fmt: skip
    assert "held: d-4 (left out): model_mismatch" in text.output
    # Without --force the create is refused, naming the other rollout and the count.
    refused = await cli(s, "rollout", "create", "app@2.0", "--target", devices_arg(*ids),
                        "--phases", "25%,50%,100%")  # fmt: skip
    assert refused.exit_code == 1
    assert (
        f"1 of the 5 targeted device(s) are held by active rollout(s) {other['id']}"
        in refused.output
    )
    assert "--force" in refused.output
    # With force: the very phases the dry run showed.
    made = await s.api.call("POST", "/v1/rollouts", json={**body, "force": True}, expect=201)
    targets = (await s.api.call("GET", f"/v1/rollouts/{made['id']}/targets"))["targets"]
    got = {t["device_id"]: t["phase"] + 1 for t in targets}
    assert got == {d: p["phase"] for p in plan["phases"] for d in p["devices"]}
    entry = (await admin.call("GET", "/v1/audit", params={"limit": "1"}))["entries"][0]
    assert entry["action"] == "rollout.create"
    assert entry["detail"]["forced"] == [other["id"]]


async def test_resume_says_the_gate_is_unmet_and_what_lets_it_go_on(setup: Setup) -> None:
    s = setup
    await start_devices(s, "g-1")
    await start_devices(s, "g-2", healthy=False)
    rel = await s.api.upload("app", "2.0")
    r = await s.api.rollout(rel["id"], target={"devices": ["g-1", "g-2"]}, phases=[50, 100],
                            success_pct=100, failure_pct=100)  # fmt: skip
    paused = await rollout_in(s, r["id"], "paused")
    assert "below its success gate" in paused["reason"]
    resumed = await cli(s, "rollout", "resume", str(r["id"]))
    assert resumed.exit_code == 0, resumed.output
    lines = resumed.output.splitlines()
    assert lines[0] == f"rollout {r['id']}: running"
    assert "gate not met: needs" in lines[1]
    assert "pauses the rollout again" in lines[2]
    assert "rollout retry" in lines[2]
    # The engine does pause it again, as said; the JSON carries the same gate.
    again = await rollout_in(s, r["id"], "paused")
    assert again["gate"]["met"] is False
    assert again["gate"]["stalled"] is True
    retried = await cli(s, "rollout", "retry", str(r["id"]), "--json")
    assert json.loads(retried.output)["retried"] >= 1


async def test_revert_puts_devices_back_on_the_release_each_ran_before(setup: Setup) -> None:
    s = setup
    await start_devices(s, "v-1", "v-2")
    first = await s.api.upload("app", "2.0")
    r1 = await s.api.rollout(first["id"], target={"devices": ["v-1", "v-2"]})
    await rollout_in(s, r1["id"], "completed")
    second = await s.api.upload("app", "3.0")
    r2 = await s.api.rollout(second["id"], target={"devices": ["v-1", "v-2"]})
    # Refused while it is active (scheduled ones too).
    await rollout_in(s, r2["id"], "completed")
    dry = await cli(s, "rollout", "revert", str(r2["id"]), "--dry-run", "--json")
    plan = json.loads(dry.output)
    assert [r["release"]["version"] for r in plan["rollouts"]] == ["2.0"]
    assert sorted(d for p in plan["rollouts"][0]["phases"] for d in p["devices"]) == ["v-1", "v-2"]
    assert len((await s.api.call("GET", "/v1/rollouts"))["rollouts"]) == 2
    done = await cli(s, "rollout", "revert", str(r2["id"]))
    assert done.exit_code == 0, done.output
    assert "app 2.0 to 2 device(s)" in done.output
    rollouts = (await s.api.call("GET", "/v1/rollouts"))["rollouts"]
    back = rollouts[-1]
    assert back["release"]["version"] == "2.0"
    assert back["target"]["devices"] == ["v-1", "v-2"]
    await rollout_in(s, back["id"], "completed")
    devices = (await s.api.call("GET", "/v1/devices"))["devices"]
    assert {d["current_version"] for d in devices} == {"2.0"}
    # Nothing left to revert for the first rollout: its devices came from no release.
    nothing = await cli(s, "rollout", "revert", str(r1["id"]))
    assert nothing.exit_code == 1
    assert "no device to revert" in nothing.output
    # An active rollout is refused.
    later = await s.api.rollout(second["id"], target={"devices": ["v-1"]}, start_at=4e9)
    active = await cli(s, "rollout", "revert", str(later["id"]))
    assert active.exit_code == 1
    assert "cancel it first" in active.output


async def test_errors_say_what_to_do(setup: Setup, tmp_path: Path) -> None:
    s = setup
    no_token = await asyncio.to_thread(
        CliRunner().invoke, main, ["rollout", "list", "--server", s.api.base], env=ENV
    )
    assert no_token.exit_code == 2
    assert "--token" in no_token.output
    assert "FLEETPUSH_TOKEN" in no_token.output
    bad = await asyncio.to_thread(
        CliRunner().invoke, main,
        ["rollout", "list", "--server", s.api.base, "--token", "fp_nope"], env=ENV,
    )  # fmt: skip
    assert bad.exit_code == 1
    assert "check --token (FLEETPUSH_TOKEN)" in bad.output
    wrong = await asyncio.to_thread(
        CliRunner().invoke, main,
        ["rollout", "list", "--server", s.api.base + "/api", "--token", TOKENS["operator"]],
        env=ENV,
    )  # fmt: skip
    assert wrong.exit_code == 1
    assert "without a path" in wrong.output
    assert "drop '/api'" in wrong.output
    await s.api.upload("app", "2.0")
    ref = await cli(s, "rollout", "create", "app", "--target", "all")
    assert ref.exit_code == 1
    assert "use NAME@VERSION (like app@2.0) or a release id" in ref.output
    audit = await cli(s, "audit", token=TOKENS["admin"])
    assert "release.upload" in audit.output
    assert "{'" not in audit.output
    assert "name=app" in audit.output
    # A directory payload must be a tar; nothing of a refused one is kept.
    text = tmp_path / "notatar.txt"
    text.write_text("hello\n")
    refused = await cli(s, "release", "upload", str(text), "--name", "app", "--version", "9")
    assert refused.exit_code == 1
    assert "unpacks a tar archive" in refused.output
    assert "--handler command" in refused.output
    kept = [p for p in s.orch.config.payload_dir.rglob("*") if p.is_file()]
    accepted = await cli(s, "release", "upload", str(text), "--name", "app", "--version", "9",
                         "--handler", "command")  # fmt: skip
    assert accepted.exit_code == 0, accepted.output
    assert len(kept) == 1  # the tar uploaded above, not the refused text


async def test_a_large_upload_streams_with_progress(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup
    big = tmp_path / "big.bin"
    size = 64 * 2**20
    with big.open("wb") as f:
        f.truncate(size)  # sparse: no disk needed
    chunks: list[int] = []
    api = ApiClient(s.api.base, TOKENS["operator"])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the progress bar's branch

    def send() -> Any:
        tracemalloc.start()
        try:
            real = api.request

            def counted(*a: Any, **kw: Any) -> Any:
                inner = kw.pop("on_upload", None)

                def both(n: int) -> None:
                    chunks.append(n)
                    if inner is not None:
                        inner(n)

                return real(*a, on_upload=both, **kw)

            api.request = counted  # type: ignore[method-assign]
            answer = upload(api, big, [("name", "big"), ("version", "1"), ("handler", "command")])
            return answer, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    answer, peak = await asyncio.to_thread(send)
    assert answer["size"] == size
    assert sum(chunks) == size
    assert max(chunks) <= UPLOAD_CHUNK
    assert len(chunks) >= 64
    assert peak < size // 4, f"peak {peak} bytes: the upload was held in memory"


async def test_tokens_list_and_revoke(setup: Setup, tmp_path: Path) -> None:
    config = str(tmp_path / "orchestrator.toml")
    listed = CliRunner().invoke(main, ["tokens", "list", "--config", config, "--json"], env=ENV)
    assert listed.exit_code == 0, listed.output
    names = {t["name"]: t for t in json.loads(listed.output)["tokens"]}
    assert set(names) >= {"admin", "operator", "viewer"}
    assert "fp_test" not in listed.output  # never the token itself
    revoked = CliRunner().invoke(main, ["tokens", "revoke", "viewer", "--config", config], env=ENV)
    assert revoked.exit_code == 0, revoked.output
    table = CliRunner().invoke(main, ["tokens", "list", "--config", config], env=ENV)
    viewer = next(line for line in table.output.splitlines() if "viewer" in line)
    assert "yes" in viewer


def test_version_and_shell_completion() -> None:
    exe = Path(sys.executable).parent / "fleetpush"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("fleetpush, version ")
    for shell, marker in (("bash", "_fleetpush_completion"), ("zsh", "#compdef fleetpush"),
                          ("fish", "complete --no-files --command fleetpush")):  # fmt: skip
        script = subprocess.run(
            [exe], capture_output=True, text=True, check=True,
            env={"_FLEETPUSH_COMPLETE": f"{shell}_source", "PATH": str(exe.parent)},
        )  # fmt: skip
        assert marker in script.stdout, (shell, script.stdout[:200])


async def test_device_list_pages_by_cursor(setup: Setup) -> None:
    """``/v1/devices`` pages by key: ``next`` is the last id of a full page, ``after`` starts
    past it; the CLI shows the cursor and ``--all`` follows it to the end."""
    s = setup
    ids = [f"p-{i}" for i in range(5)]
    for d in ids:
        s.fleet.provision(d, groups=("odd",) if int(d[-1]) % 2 else ())
    seen, after = [], None
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        page = await s.api.call("GET", "/v1/devices", params=params)
        seen += [d["device_id"] for d in page["devices"]]
        after = page["next"]
        if after is None:
            break
        assert after == seen[-1]
    assert seen == ids
    odd = await s.api.call("GET", "/v1/devices", params={"group": "odd", "after": "p-1"})
    assert ([d["device_id"] for d in odd["devices"]], odd["next"]) == (["p-3"], None)
    first = await cli(s, "devices", "list", "--limit", "2")
    assert first.exit_code == 0, first.output
    assert "p-1" in first.output
    assert "p-2" not in first.output
    assert "more: --after p-1" in first.output
    rest = await cli(s, "devices", "list", "--limit", "2", "--after", "p-1", "--json")
    assert [d["device_id"] for d in json.loads(rest.output)["devices"]] == ["p-2", "p-3"]
    every = await cli(s, "devices", "list", "--limit", "2", "--all", "--json")
    assert [d["device_id"] for d in json.loads(every.output)["devices"]] == ids
    bad = await s.api.call("GET", "/v1/devices", params={"cursor": "x"}, expect=400)
    assert "cursor" in bad["error"]
