"""The device agent installs alone: its code imports only the base dependencies.

pyproject.toml's base ``dependencies`` are the device agent's (device_client,
fleetpush_protocol, fleetpush_common); the service's are the ``orchestrator`` extra. These
tests hold that line without building a venv: the source's imports against the lists, and
the agent's CLI started in a Python that cannot import the service's dependencies. The
installed venv itself is measured by benchmarks/device_footprint.py.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = ("device_client", "fleetpush_protocol", "fleetpush_common")
# import name -> distribution name, where they differ
DISTRIBUTION = {"nacl": "pynacl", "paho": "paho-mqtt"}
SERVICE_ONLY = ("click", "rich", "cryptography", "psycopg", "psycopg_pool")


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported by the device packages, with the files importing them."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for package in DEVICE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".", 1)[0]
                    if top not in stdlib and top != "__future__":
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_device_code_imports_only_base_dependencies() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    base = _names(project["dependencies"])
    imports = _third_party_imports()
    own = set(DEVICE_PACKAGES)
    for module, files in sorted(imports.items()):
        if module in own:
            continue
        assert DISTRIBUTION.get(module, module).lower() in base, (module, sorted(files))
    assert not own & {"orchestrator", "fleetpush_sim"}
    assert "orchestrator" not in imports, sorted(imports.get("orchestrator", ()))
    assert "fleetpush_sim" not in imports, sorted(imports.get("fleetpush_sim", ()))


def test_service_dependencies_are_the_orchestrator_extra() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    base = _names(project["dependencies"])
    extra = _names(project["optional-dependencies"]["orchestrator"])
    assert {"click", "rich", "cryptography", "psycopg"} <= extra
    assert not base & {"click", "rich", "cryptography", "psycopg"}
    assert "fleetpush" in _names(project["optional-dependencies"]["dev"])  # dev has it all


# A Python whose import system refuses the given top-level modules, as a device-only
# install lacks the service's dependencies.
_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def _run_blocked(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", f"BLOCKED = {blocked!r}\n" + _BLOCK + code],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip


def test_device_cli_runs_without_the_service_dependencies() -> None:
    # Nor does the agent import the service's own packages.
    blocked = (*SERVICE_ONLY, "orchestrator", "fleetpush_sim")
    result = _run_blocked(
        blocked,
        "import device_client.wiring, fleetpush_protocol.delta\n"
        "from device_client.cli import main\n"
        "sys.exit(main(['--help']))\n",
    )
    assert result.returncode == 0, result.stderr
    assert "fleetpush-device" in result.stdout


def test_fleetpush_command_without_the_service_says_how_to_install_it() -> None:
    result = _run_blocked(SERVICE_ONLY, "from orchestrator.cli.entry import main\nmain()\n")
    assert result.returncode == 2
    assert "pip install 'fleetpush[orchestrator]'" in result.stderr
    assert "Traceback" not in result.stderr
