"""The store's issue-17 parts on SQLite and PostgreSQL alike: a security release's class
and advisory, a release's SBOM, a rollout awaiting approval and its decision, and
cancelling some devices of a rollout (a security rollout superseding a feature one)."""

from __future__ import annotations

import pytest

from orchestrator.rules import RolloutSpec
from orchestrator.store import ReleaseRecord, Store

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
ADVISORY = {"cves": ["CVE-2026-1234"], "disruptive": False, "max_postpone_s": 60,
            "severity": "low", "summary": "x"}  # fmt: skip


def test_security_release_sbom_approval_and_partial_cancel(store: Store) -> None:
    rel = store.add_release(ReleaseRecord(
        0, "app", "2", "ab" * 32, 10, (), "directory", {}, {}, T0,
        update_class="security", advisory=ADVISORY,
    ))  # fmt: skip
    again = store.get_release(rel.id)
    assert again.security
    assert again.advisory == ADVISORY
    assert store.get_sbom(rel.id) is None
    components = [{"name": "zlib", "version": "1.3", "purl": ""}]
    store.put_sbom(rel.id, format="cyclonedx", spec_version="1.5", components=components,
                   body='{"bomFormat": "CycloneDX"}', now=T0)  # fmt: skip
    store.put_sbom(rel.id, format="spdx", spec_version="2.3", components=components,
                   body='{"spdxVersion": "SPDX-2.3"}', now=T0 + 1)  # replaces  # fmt: skip
    found = store.get_sbom(rel.id)
    assert found is not None
    assert found[0]["format"] == "spdx"
    assert found[0]["components"] == components
    assert found[1] == '{"spdxVersion": "SPDX-2.3"}'

    r = store.create_rollout(release_id=rel.id, target={"all": True}, spec=RolloutSpec(),
                             assignments=[("d1", 0, 0), ("d2", 1, 0)], now=T0, actor="alice",
                             approval=True)  # fmt: skip
    assert (r.state, r.approval, r.phase_started_at) == ("awaiting_approval", "pending", None)
    r = store.update_rollout(r.id, T0 + 5, state="running", approval="approved",
                             decided_by="bob", decided_at=T0 + 5)  # fmt: skip
    assert (r.approval, r.decided_by, r.decided_at) == ("approved", "bob", T0 + 5)
    assert r.to_json()["approval"]["required"] is True

    assert store.cancel_device_targets(r.id, ["d1", "nope"], T0 + 6, "superseded") == []
    states = {t.device_id: (t.state, t.reason) for t in store.list_targets(r.id)}
    assert states == {"d1": ("canceled", "superseded"), "d2": ("pending", "")}
    # Deleting a release with no rollout takes its SBOM along.
    other = store.add_release(ReleaseRecord(0, "app", "3", "cd" * 32, 10, (), "directory",
                                            {}, {}, T0))  # fmt: skip
    store.put_sbom(other.id, format="spdx", spec_version="2.3", components=[], body="{}",
                   now=T0)  # fmt: skip
    store.delete_release(other.id, T0)
    assert store.get_sbom(other.id) is None
