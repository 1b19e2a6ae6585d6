"""Run every benchmark module (or the ones named) and print their results."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path
from typing import Any


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    package = Path(__file__).parent
    available = sorted(
        m.name for m in pkgutil.iter_modules([str(package)]) if not m.name.startswith("_")
    )
    names = args.names or available
    results: dict[str, Any] = {"machine": _machine()}
    for name in names:
        if name not in available:
            sys.exit(f"no benchmark {name!r}; have: {', '.join(available)}")
        module = importlib.import_module(f"benchmarks.{name}")
        if not hasattr(module, "run"):
            continue
        if not args.json:
            print(f"== {name}", flush=True)
        results[name] = module.run(quick=args.quick)
        if not args.json:
            print(json.dumps(results[name], indent=2), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
