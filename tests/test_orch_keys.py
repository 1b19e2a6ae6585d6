"""Keys: init, signing and root rotation, and every keyring version retained on the broker."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt
import pytest
from click.testing import CliRunner
from orch_helpers import TOKENS, Api, Setup, setup, wait_until

from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.verify import VerifyPolicy, verify_keyring_chain
from orchestrator.cli.main import main
from orchestrator.security.keystore import KeyStore, KeyStoreError

__all__ = ["setup"]


def test_init_and_rotations_chain(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "keys")
    now = int(time.time())
    ring = ks.init(tmp_path / "offline", roots=3, threshold=2, validity_s=3600, now=now)
    assert ring.version == 1
    roots = [KeyPair.load(p) for p in sorted((tmp_path / "offline").glob("*.key"))]
    with pytest.raises(KeyStoreError, match="already holds keys"):
        ks.init(tmp_path / "offline", roots=1, threshold=1, validity_s=3600, now=now)
    with pytest.raises(KeyStoreError, match="needs 2 of its root keys"):
        ks.rotate_signing(roots[:1], validity_s=3600, revoke_old=False, now=now)
    first = ks.signing_set(now)
    v2 = ks.rotate_signing(roots[1:], validity_s=7200, revoke_old=False, now=now)
    assert len(v2.signing_keys) == 2  # the old key stays valid for notices already out
    assert ks.signing_set(now).keys[0].public_key != first.keys[0].public_key
    v3 = ks.rotate_signing(roots[:2], validity_s=7200, revoke_old=True, now=now)
    assert len(v3.signing_keys) == 1
    assert len(v3.revoked) == 2
    v4 = ks.rotate_root(roots[:2], tmp_path / "offline2", roots=1, threshold=1, now=now)
    assert v4.root_keys != v3.root_keys
    # the whole chain verifies from the original anchor, as a device that missed it all sees
    blobs = [b for _, b in ks.keyring_blobs()]
    trusted = verify_keyring_chain(blobs, trusted=ks.anchor(), policy=VerifyPolicy())
    assert trusted.keyring.version == 4
    new_root = KeyPair.load(next((tmp_path / "offline2").glob("*.key")))
    assert ks.rotate_signing([new_root], validity_s=60, revoke_old=False, now=now).version == 5
    with pytest.raises(KeyStoreError, match="needs 1 of its root keys"):
        ks.rotate_signing(roots, validity_s=60, revoke_old=False, now=now)  # old root: refused


def test_cli_keys_init_and_show(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    runner = CliRunner()
    result = runner.invoke(main, ["keys", "init", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["keyring"]["version"] == 1
    assert list(Path(out["root_keys_dir"]).glob("root-*.key"))
    shown = runner.invoke(main, ["keys", "show", "--config", str(config), "--json"])
    assert json.loads(shown.output)["version"] == 1
    bad = runner.invoke(main, ["keys", "show", "--config", str(tmp_path / "missing.toml")])
    assert bad.exit_code != 0
    assert "no such file" in bad.output
    assert "docs/orchestrator.md has a sample" in bad.output


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_rotation_publishes_every_keyring_retained(setup: Setup, tmp_path: Path) -> None:
    s = setup
    root = KeyPair.load(next((tmp_path / "offline-root").glob("*.key")))
    ks = KeyStore(s.orch.config.keys_dir)
    ks.rotate_signing([root], validity_s=86400, revoke_old=False, now=int(time.time()))
    await Api(s.session, s.api.base, TOKENS["operator"]).call("POST", "/v1/keys/reload", expect=403)
    done = await Api(s.session, s.api.base, TOKENS["admin"]).call("POST", "/v1/keys/reload")
    assert done == {"version": 2, "published": 2}
    seen: dict[str, bytes] = {}
    # An identity of its own: the broker makes the username the client id, so logging in as
    # the orchestrator would take over the running orchestrator's session, and its link
    # would take it back mid-read (the reader then failed with "[code:128] Unspecified
    # error" or "[code:142] Session taken over", depending on who read first).
    password = s.broker.add_orchestrator("keyring-reader")
    s.broker.reload()
    async with aiomqtt.Client(
        s.broker.host, s.broker.port, username="keyring-reader", password=password,
        identifier="keyring-reader", protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        await client.subscribe(s.fleet.topics.keyring_filter, qos=1)

        async def both() -> bool:
            try:
                async with asyncio.timeout(0.5):
                    async for msg in client.messages:
                        seen[str(msg.topic)] = bytes(msg.payload)
                        if len(seen) == 3:
                            break
            except TimeoutError:
                pass
            return len(seen) == 3

        await wait_until(both, within=10, what="two retained keyrings and the latest")
    topics = s.fleet.topics
    assert set(seen) == {topics.keyring(1), topics.keyring(2), topics.keyring_latest}
    # the newest again on an exact topic, for brokers without retained wildcard deliveries
    assert seen[topics.keyring_latest] == seen[topics.keyring(2)] != seen[topics.keyring(1)]


def asyncio_timeout(seconds: float):
    import asyncio

    return asyncio.timeout(seconds)
