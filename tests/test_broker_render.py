"""The broker's files, rendered from values: fast, no Mosquitto, no disk beyond tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetpush_protocol.topics import Topics
from orchestrator.broker import CONFIG_DIR, BrokerUser, render_auth_files, render_config
from orchestrator.broker.credentials import ORCHESTRATOR_ROLE
from orchestrator.broker.registry import Identity, IdentityRegistry, Transient

TOPICS = Topics("fp")
TEMPLATE = (CONFIG_DIR / "mosquitto.conf").read_text()


@pytest.mark.parametrize("tls_port", [None, 8883], ids=["password only", "with TLS"])
def test_config_fills_every_placeholder_and_keeps_tls_only_when_asked(
    tls_port: int | None,
) -> None:
    text = render_config(
        TEMPLATE, directory=Path("/srv/b"), host="10.0.0.1", port=1883, tls_port=tls_port,
        user="mq",
    )  # fmt: skip
    assert "@" not in "".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "password_file /srv/b/passwd\n" in text
    assert "listener 1883 10.0.0.1\n" in text
    assert ("listener 8883 10.0.0.1\n" in text) is (tls_port is not None)
    assert ("crlfile /srv/b/ca/crl.pem\n" in text) is (tls_port is not None)


def test_transient_entries_can_log_in_and_do_nothing() -> None:
    dev = BrokerUser("dev-1", groups=("canary",), password_hash="$7$h1")
    orch = BrokerUser("orch", ORCHESTRATOR_ROLE, password_hash="$7$h2")
    files = render_auth_files([dev, orch], {"fleetpush-reload-ab": "$7$c"}, TOPICS)
    assert files.passwd.splitlines() == ["dev-1:$7$h1", "orch:$7$h2", "fleetpush-reload-ab:$7$c"]
    assert "fleetpush-reload-ab" not in files.acl
    assert "user dev-1\n" in files.acl
    assert "topic readwrite fp/#" in files.acl


def test_a_transient_entry_never_shadows_an_identity() -> None:
    # A device re-provisioned while a revoke's one-time password is pending keeps its own.
    dev = BrokerUser("dev-1", password_hash="$7$real")
    files = render_auth_files([dev], {"dev-1": "$7$one-time"}, TOPICS)
    assert files.passwd == "dev-1:$7$real\n"


def test_transient_entries_persist_and_expire(tmp_path: Path) -> None:
    reg = IdentityRegistry(tmp_path / "identities.json")
    with reg.locked():
        reg.put(Identity("dev-1", password_hash="$7$real"))
        reg.transient["dev-1"] = Transient("$7$shadowed", expires_at=200.0)
        reg.transient["fleetpush-reload-1"] = Transient("$7$a", expires_at=200.0)
        reg.transient["fleetpush-reload-2"] = Transient("$7$b", expires_at=100.0)
    # Another process (a fresh registry object) sees them: its rewrite keeps them.
    other = IdentityRegistry(tmp_path / "identities.json")
    assert other.transient_hashes(now=150.0) == {"fleetpush-reload-1": "$7$a"}
    assert set(other.transient) == {"dev-1", "fleetpush-reload-1"}
    assert other.transient_hashes(now=200.0) == {}
