"""Pure parts of whole-system updates on the device (issue 18): the ``[components.NAME]``
tables and the per-component progress persisted inside the job record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from device_client.config import ConfigError, parse_config
from device_client.jobs.parts import Part, PartState
from device_client.jobs.states import Job, JobState

ROOT = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"


def _raw(components: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": {"id": "dev-001", "model": "rpi4", "state_dir": "st"},
        "broker": {"url": "mqtt://127.0.0.1:1883", "username": "dev-001", "password": "pw"},
        "trust": {"root_keys": [ROOT]},
        "components": components,
    }


def test_components_get_their_own_slots_units_and_limits(tmp_path: Path) -> None:
    c = parse_config(_raw({
        "app": {"handler": "directory"},
        "fw": {"handler": "command", "install": ["flash", "{payload}"], "rollback": ["undo"],
               "step_timeout": "90s"},
    }), base=tmp_path)  # fmt: skip
    assert list(c.components) == ["app", "fw"]
    assert c.components["app"].slots_dir == tmp_path / "st" / "components" / "app"
    assert c.components["fw"].slots_dir is None
    assert c.components["fw"].step_timeout_s == 90.0
    assert c.components["app"].unpack == c.unpack
    assert parse_config(_raw({}), base=tmp_path).components == {}


@pytest.mark.parametrize(
    ("components", "says"),
    [
        ({"App": {"handler": "directory"}}, "components"),
        ({"../x": {"handler": "directory"}}, "components"),
        ({"fw": {"handler": "command"}}, "install"),  # the command handler needs one
        ({"fw": {"handler": "rauc", "install": ["x"]}}, "handler"),
        ({"fw": {"handler": "command", "install": ["x"], "instal": ["y"]}}, "instal"),
        ({"fw": {"handler": "command", "install": ["x"], "step_timeout": "soon"}}, "step_timeout"),
        ({f"c{i}": {"handler": "directory"} for i in range(17)}, "components"),
    ],
)
def test_bad_component_tables_are_refused(
    tmp_path: Path, components: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config(_raw(components), source="device.toml", base=tmp_path)


def test_a_job_keeps_its_parts_through_the_state_file() -> None:
    job = Job(notice_id="n-1", rollout_id="1", notice=b"env", state=JobState.INSTALLING,
              reply_topic="t", parts=(
                  Part("app", PartState.INSTALLED, previous_slot="slot-n-0", new_slot="slot-n-1"),
                  Part("fw", PartState.INSTALLING), Part("cfg")))  # fmt: skip
    assert Job.from_map(job.to_map()) == job
    plain = Job(notice_id="n-2", rollout_id="1", notice=b"env", state=JobState.NOTIFIED,
                reply_topic="t")  # fmt: skip
    assert "parts" not in plain.to_map()  # a single-payload job's record is as it was
    assert Job.from_map(plain.to_map()).parts == ()
    assert {p.state for p in job.parts if p.state in PartState.CHANGED} == {
        "installed", "installing"}  # fmt: skip
