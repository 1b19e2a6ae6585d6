"""Attacks on system notices (issue 18) end to end: a real agent, a real Mosquitto, a real
HTTP server. Every row must leave the device exactly as it was: no component step ran
(the command components log every step), no slot was made, no download left behind.

Verifier-level rows (duplicate names, too many components, path tricks in names, a manifest
that does not match) are in tests/test_protocol_components.py; the row here for a path
in a name shows that the agent, too, never starts a job for one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from device_helpers import PayloadServer, ReportCollector, Signer, publish
from fault_helpers import DeviceRig, release_tar

from fleetpush_protocol import canonical
from fleetpush_protocol.components import SYSTEM_HANDLER, Component, system_manifest
from fleetpush_protocol.envelope import SIGNING_CONTEXT
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

DEV = "dev-001"
APP = release_tar("2.0.0")
CONFIG = b"config v2\n" * 8


@dataclass
class Ctx:
    server: PayloadServer
    signer: Signer
    topics: Topics

    def component(self, name: str, handler: str, data: bytes, served: bytes | None = None,
                  **kw: Any) -> Component:  # fmt: skip
        url = self.server.add(name, data if served is None else served, **kw)
        return Component(name=name, handler=handler, sha256=hashlib.sha256(data).digest(),
                         size=len(data), urls=(url,))  # fmt: skip

    def system(self, *components: Component) -> tuple[str, bytes]:
        manifest = system_manifest(components)
        notice, data = self.signer.notice(
            DEV, manifest, [self.server.url("manifest")], topics=self.topics,
            handler=SYSTEM_HANDLER, components=components,
        )  # fmt: skip
        return notice.notice_id, data


def _app(c: Ctx) -> Component:
    return c.component("app", "directory", APP)


async def swapped_bytes(c: Ctx) -> tuple[str, bytes]:
    """The mirror serves other bytes of the same size for the second component."""
    evil = bytes(b ^ 0xFF for b in CONFIG)
    return c.system(_app(c), c.component("config", "command", CONFIG, served=evil))


async def endless_data(c: Ctx) -> tuple[str, bytes]:
    return c.system(_app(c), c.component("config", "command", CONFIG, served=CONFIG * 1000))


async def truncated(c: Ctx) -> tuple[str, bytes]:
    return c.system(_app(c), c.component("config", "command", CONFIG, served=CONFIG[:-1]))


async def unknown_handler(c: Ctx) -> tuple[str, bytes]:
    """A handler the device has not configured for the component."""
    return c.system(_app(c), c.component("config", "rauc", CONFIG))


async def handler_swapped(c: Ctx) -> tuple[str, bytes]:
    """``config`` is a command component here; the notice asks the tar unpacker for it."""
    return c.system(_app(c), c.component("config", "directory", APP))


async def unconfigured(c: Ctx) -> tuple[str, bytes]:
    return c.system(_app(c), c.component("bootloader", "command", CONFIG))


async def genuine(c: Ctx) -> tuple[str, bytes]:
    """A genuine system, for a device whose ``config`` has no rollback configured: half
    a system could not be undone, so it is refused before anything is fetched."""
    return c.system(_app(c), c.component("config", "command", CONFIG))


async def path_in_name(c: Ctx) -> tuple[str, bytes]:
    """A name that would be a path, signed by the operator's own (stolen) key."""
    notice_id, data = c.system(_app(c), c.component("config", "command", CONFIG))
    outer = canonical.decode(data, max_bytes=1 << 20)
    body = canonical.decode(outer["body"], max_bytes=1 << 20)
    body["components"][1]["name"] = "../../../etc"
    outer["body"] = canonical.encode(body)
    key = c.signer.signing
    sig = key.sign(SIGNING_CONTEXT + outer["body"])
    outer["signatures"] = [{"key": key.public_key, "sig": sig}]
    return notice_id, canonical.encode(outer)


@dataclass(frozen=True)
class Attack:
    run: Callable[[Ctx], Awaitable[tuple[str, bytes]]]
    code: str  # the report's error code
    state: str = "failed"  # "rejected": refused by the verifier, no job at all
    downloads: bool = True  # the refusal may come after fetching
    rollback: bool = True  # the device configures a rollback for its config component


ATTACKS = {
    "component hash mismatch": Attack(swapped_bytes, "hash_mismatch"),
    "component endless data": Attack(endless_data, "size_mismatch"),
    "component truncated": Attack(truncated, "size_mismatch"),
    "unknown handler": Attack(unknown_handler, "payload_invalid", downloads=False),
    "handler swapped": Attack(handler_swapped, "payload_invalid", downloads=False),
    "component not on this device": Attack(unconfigured, "payload_invalid", downloads=False),
    "component that cannot roll back": Attack(
        genuine, "payload_invalid", downloads=False, rollback=False
    ),
    "path in a component name": Attack(path_in_name, "malformed", "rejected", downloads=False),
}


def _logged(log: Path, what: str) -> list[str]:
    return ["/bin/sh", "-c", f'echo "{what} $FLEETPUSH_COMPONENT" >> "{log}"']


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_system_attack_installs_nothing(
    name: str, tmp_path: Path, broker: MosquittoBroker, topics: Topics, server: PayloadServer
) -> None:
    attack = ATTACKS[name]
    log = tmp_path / "steps.log"
    signer = Signer()
    sections = {
        "components.app": {"handler": "directory", "post_install": _logged(log, "install")},
        "components.config": {
            "handler": "command",
            "install": _logged(log, "install"),
            "rollback": _logged(log, "rollback") if attack.rollback else [],
        },
    }
    rig = DeviceRig(tmp_path, broker, topics, signer, sections=sections)
    rig.provision()
    c = Ctx(server, signer, topics)
    async with ReportCollector(broker, topics) as reports:
        await publish(broker, topics.keyring(1), signer.keyring(1))
        agent = await rig.start()
        try:
            notice_id, data = await attack.run(c)
            await publish(broker, topics.device_notice(DEV), data)
            got = await reports.wait_state(attack.state, notice_id, within=30)
            assert got.error is not None
            assert got.error.code == attack.code, got.error
            assert agent.state.job is None
            assert not log.exists(), log.read_text()  # no component step ran
            state_dir = tmp_path / f"state-{DEV}"
            assert not (state_dir / "components").exists() or not any(
                (state_dir / "components").rglob("*")
            )
            assert not any(agent.downloads.iterdir())
            if not attack.downloads:
                assert server.ranges == []
            assert not (tmp_path.parent / "etc").exists()
        finally:
            await rig.stop()
