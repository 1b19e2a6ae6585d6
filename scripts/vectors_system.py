"""Test vectors for system notices (issue 18): ``components`` and handler ``system``.

Imported by scripts/gen_test_vectors.py, which runs and writes every case. The field is
optional and absent from a single-payload notice, so every notice written before it keeps
its bytes. A reader that predates it ignores ``components`` and sees handler ``system``,
which it has not: it refuses the notice before downloading (docs/protocol.md).
"""

from __future__ import annotations

import hashlib
from typing import Any

from gen_test_vectors import DELTA, S1, case, signed

from fleetpush_protocol.components import SYSTEM_HANDLER, Component, system_manifest
from fleetpush_protocol.messages import UpdateNotice
from fleetpush_sim.signing import make_notice, raw_envelope

__all__ = ["COMPONENTS", "make_system_notice", "system_cases"]

BASE_URL = "https://updates.example.com/p/"


def _component(name: str, handler: str, data: bytes) -> Component:
    return Component(
        name=name, handler=handler, sha256=hashlib.sha256(data).digest(), size=len(data),
        urls=(f"{BASE_URL}{name}",),
    )  # fmt: skip


COMPONENTS = (
    _component("app", "directory", b"app payload\n"),
    _component("config", "command", b"config payload\n"),
    _component("firmware", "command", b"firmware payload\n"),
)
COMPONENT_PAYLOADS = (b"app payload\n", b"config payload\n", b"firmware payload\n")


def make_system_notice(components: tuple[Component, ...] = COMPONENTS) -> UpdateNotice:
    return make_notice(
        payload=system_manifest(components), handler=SYSTEM_HANDLER, components=components
    )


def _raw(components: list[dict[str, Any]], **changes: Any) -> bytes:
    """A system notice body with ``components`` as given (a manifest that matches them,
    so only the components themselves can make it malformed), signed."""
    body = make_system_notice().to_body()
    body.update(changes)
    body["components"] = components
    return raw_envelope(body, [S1])


def system_cases() -> list[dict[str, Any]]:
    good = make_system_notice()
    comps = good.to_body()["components"]
    first = comps[0]
    return [
        case(
            "notice-accept-system",
            "A system notice: three components in order, handler 'system', the payload "
            "pins their manifest (issue 18).",
            signed(good),
            "accept",
        ),
        case(
            "malformed-system-duplicate-names",
            "Two components with one name.",
            _raw([first, {**comps[1], "name": first["name"]}]),
            "malformed",
        ),
        case(
            "malformed-system-too-many",
            "17 components: at most 16.",
            _raw([{**first, "name": f"c{i}"} for i in range(17)]),
            "malformed",
        ),
        case(
            "malformed-system-path-name",
            "A component name with a path in it ('../etc'): names become file names.",
            _raw([{**first, "name": "../etc"}]),
            "malformed",
        ),
        case(
            "malformed-system-dot-name",
            "A component name with a dot: names are [a-z0-9_-] only.",
            _raw([{**first, "name": "app.old"}]),
            "malformed",
        ),
        case(
            "malformed-system-nested",
            "A component whose handler is 'system': systems do not nest.",
            _raw([{**first, "handler": SYSTEM_HANDLER}]),
            "malformed",
        ),
        case(
            "malformed-system-empty",
            "Handler 'system' with an empty components list.",
            _raw([]),
            "malformed",
        ),
        case(
            "malformed-system-without-components",
            "Handler 'system' and no components field.",
            raw_envelope({k: v for k, v in good.to_body().items() if k != "components"}, [S1]),
            "malformed",
        ),
        case(
            "malformed-system-wrong-handler",
            "Components with handler 'directory': an old device would install the "
            "top-level payload alone.",
            raw_envelope({**good.to_body(), "handler": "directory"}, [S1]),
            "malformed",
        ),
        case(
            "malformed-system-manifest-mismatch",
            "A component's size changed after the manifest was pinned.",
            raw_envelope(
                {
                    **good.to_body(),
                    "components": [{**first, "size": first["size"] + 1}, *comps[1:]],
                },
                [S1],
            ),
            "malformed",
        ),
        case(
            "malformed-system-deltas",
            "A system notice with deltas: components are fetched in full.",
            raw_envelope(
                {**good.to_body(), "deltas": [make_notice(deltas=(DELTA,)).to_body()["deltas"][0]]},
                [S1],
            ),
            "malformed",
        ),
        case(
            "payload-too-large-system",
            "Each component fits the device's limit, their sum does not.",
            signed(good),
            "payload_too_large",
            policy={"max_payload_bytes": sum(c.size for c in COMPONENTS) - 1},
        ),
    ]
