"""Software bills of materials: an SPDX or CycloneDX JSON document checked to be
well-formed, and the components it lists. Pure: bytes in, a checked ``Sbom`` or an
``SbomError`` whose message says what is wrong and where.

Well-formed means: valid UTF-8 JSON, an object, recognisably one of the two formats
(SPDX 2.x: ``spdxVersion`` "SPDX-2.x", ``SPDXID``, ``packages``; CycloneDX: ``bomFormat``
"CycloneDX", ``specVersion``, ``components``), and each package or component an object
with a string ``name`` (a version, when given, a string). It is not a full schema check:
tools add fields freely, and the document is stored byte for byte as uploaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_COMPONENTS", "Component", "Sbom", "SbomError", "parse_sbom"]

MAX_COMPONENTS = 100_000  # a firmware image lists thousands; more is not a bill of materials
_MAX_DEPTH = 32  # CycloneDX nests components in components


class SbomError(ValueError):
    """Not a well-formed SPDX or CycloneDX JSON document; the message says why."""


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    version: str
    purl: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "purl": self.purl}


@dataclass(frozen=True, slots=True)
class Sbom:
    format: str  # "spdx" or "cyclonedx"
    spec_version: str
    components: tuple[Component, ...]

    def summary(self) -> dict[str, Any]:
        return {"format": self.format, "spec_version": self.spec_version,
                "components": len(self.components)}  # fmt: skip


def parse_sbom(data: bytes) -> Sbom:
    """Check ``data`` and list its components.

    Raises:
        SbomError: not UTF-8 JSON, not an object, neither format, or a malformed entry.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SbomError("sbom: not UTF-8 text (an SBOM is SPDX or CycloneDX JSON)") from None
    except json.JSONDecodeError as e:
        raise SbomError(
            f"sbom: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "an SBOM is SPDX or CycloneDX JSON"
        ) from None
    except RecursionError:
        raise SbomError("sbom: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise SbomError("sbom: expected a JSON object (SPDX or CycloneDX), got a "
                        f"{type(doc).__name__}")  # fmt: skip
    if "spdxVersion" in doc:
        return _spdx(doc)
    if doc.get("bomFormat") == "CycloneDX":
        return _cyclonedx(doc)
    raise SbomError(
        'sbom: unknown format: expected SPDX JSON (an "spdxVersion" field) or CycloneDX '
        'JSON ("bomFormat": "CycloneDX"); SPDX tag-value and XML are not accepted'
    )


def _text(entry: dict[str, Any], key: str, where: str, *, required: bool) -> str:
    value = entry.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        need = "a non-empty string" if required else "a string"
        raise SbomError(f"sbom: {where}.{key}: expected {need}")
    return value


def _spdx(doc: dict[str, Any]) -> Sbom:
    version = doc["spdxVersion"]
    if not isinstance(version, str) or not version.startswith("SPDX-2."):
        raise SbomError(f'sbom: spdxVersion: expected "SPDX-2.x", got {version!r}')
    _text(doc, "SPDXID", "SPDX document", required=True)
    packages = doc.get("packages", [])
    if not isinstance(packages, list):
        raise SbomError("sbom: packages: expected a list")
    if len(packages) > MAX_COMPONENTS:
        raise SbomError(f"sbom: more than {MAX_COMPONENTS} packages")
    out = []
    for i, p in enumerate(packages):
        where = f"packages[{i}]"
        if not isinstance(p, dict):
            raise SbomError(f"sbom: {where}: expected an object")
        purl = ""
        for ref in p.get("externalRefs", []) if isinstance(p.get("externalRefs"), list) else []:
            if isinstance(ref, dict) and ref.get("referenceType") == "purl":
                purl = str(ref.get("referenceLocator", ""))
        out.append(Component(_text(p, "name", where, required=True),
                             _text(p, "versionInfo", where, required=False), purl))  # fmt: skip
    return Sbom("spdx", version.removeprefix("SPDX-"), tuple(out))


def _cyclonedx(doc: dict[str, Any]) -> Sbom:
    version = doc.get("specVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise SbomError(f'sbom: specVersion: expected "1.x" for CycloneDX, got {version!r}')
    out: list[Component] = []
    stack: list[tuple[str, Any, int]] = [("components", doc.get("components", []), 0)]
    while stack:
        where, items, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise SbomError(f"sbom: {where}: components nested more than {_MAX_DEPTH} deep")
        if not isinstance(items, list):
            raise SbomError(f"sbom: {where}: expected a list")
        for i, c in enumerate(items):
            at = f"{where}[{i}]"
            if not isinstance(c, dict):
                raise SbomError(f"sbom: {at}: expected an object")
            out.append(Component(_text(c, "name", at, required=True),
                                 _text(c, "version", at, required=False),
                                 _text(c, "purl", at, required=False)))  # fmt: skip
            if len(out) > MAX_COMPONENTS:
                raise SbomError(f"sbom: more than {MAX_COMPONENTS} components")
            if "components" in c:
                stack.append((f"{at}.components", c["components"], depth + 1))
    return Sbom("cyclonedx", version, tuple(out))
