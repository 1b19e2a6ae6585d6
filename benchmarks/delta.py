"""Delta payloads on real Debian packages: fleetpush's zstd-patch and tar-bsdiff against
the zstd tool, bsdiff and xdelta3, same pairs, same run (the orchestrator keeps the
smaller of its two: ``chosen``).

Each pair is two versions of one package fetched with ``apt-get download`` into a cache
folder (never committed), unpacked with ``dpkg-deb -x`` and packed into the plain tar the
``directory`` handler installs (sorted names, owner 0, the package's mtimes), so both
payloads are reproducible. Goals (issue 15): our delta at most 1.1x the size of
``zstd --patch-from -19`` on the same pair, under 5% of the full payload for a small
security fix, and rebuild peak RSS at most the base's size plus 40 MB.

The rebuild runs in a fresh child process (``_rebuild``) that imports what the device agent
imports (the agent rebuilds in its own process), so its peak RSS is the agent's with a
rebuild under way; the same child without the rebuild is measured the same way and
reported beside it.
Needs apt-get, dpkg-deb and the zstd, bsdiff and xdelta3 tools (a missing tool's column
is null). Run: ``python -m benchmarks delta`` (``FLEETPUSH_DEB_CACHE`` picks the cache).

Then bytes over the wire for a 1,000-device rollout in full and by delta, on a real stack
(``benchmarks/_delta_fleet.py``); ``FLEETPUSH_DELTA_PART=fleet`` runs that part alone,
``FLEETPUSH_DELTA_PART=pairs`` the Debian pairs alone.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _delta_fleet
from fleetpush_protocol import delta
from orchestrator import tar_delta_make

PAIRS = [
    ("small security fix", "openssh-client", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"),
    # A security fix too, but the interpreter binary is relinked, so code moves throughout:
    # the row shows where a byte-level delta stops (docs/performance.md).
    ("relinked interpreter fix", "python3.11-minimal", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
    ("larger version bump", "libssl3", "3.0.17-1~deb12u2", "3.0.22-1~deb12u2"),
    ("large binary", "git", "1:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u3"),
]
DEVICES = 1000

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the forking parent.
_HWM = """
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""
_REBUILD = (
    _HWM
    + """
import sys, time
import device_client.wiring  # the agent's own imports: it rebuilds in its own process
from fleetpush_protocol import delta
base = open(sys.argv[1], "rb").read()
start = time.perf_counter()
with open(sys.argv[2], "rb") as patch, open(sys.argv[3], "wb") as out:
    delta.apply(base, patch, out, max_output=1 << 34, max_memory=1 << 40)
elapsed = time.perf_counter() - start
print(elapsed, hwm())
"""
)
_TAR_REBUILD = (
    _HWM
    + """
import os, sys, time
import device_client.wiring
from fleetpush_protocol import tar_delta
start = time.perf_counter()
base, patch, out = open(sys.argv[1], "rb"), open(sys.argv[2], "rb"), open(sys.argv[3], "w+b")
tar_delta.apply(base, os.path.getsize(sys.argv[1]), patch, out, max_output=1 << 34,
                max_memory=1 << 40)
out.close()
elapsed = time.perf_counter() - start
print(elapsed, hwm())
"""
)
_BARE = (
    _HWM
    + """
import device_client.wiring
from fleetpush_protocol import delta, tar_delta
print(0, hwm())
"""
)


def _fetch(cache: Path, package: str, version: str) -> Path:
    folder = cache / f"{package}_{version.replace(':', '_')}"
    folder.mkdir(parents=True, exist_ok=True)
    if not list(folder.glob("*.deb")):
        subprocess.run(
            ["apt-get", "download", f"{package}={version}"],
            cwd=folder,
            check=True,
            capture_output=True,
        )
    return next(folder.glob("*.deb"))


def _payload(deb: Path, work: Path) -> bytes:
    tree = work / deb.stem
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(tree)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    shutil.rmtree(tree)
    return buf.getvalue()


def _tool(argv: list[str], out: Path) -> int | None:
    if shutil.which(argv[0]) is None:
        return None
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    del start
    return out.stat().st_size


def _child(code: str, *args: str) -> tuple[float, int]:
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    seconds, rss = done.stdout.split()
    return float(seconds), int(rss)


def _pair(work: Path, cache: Path, pair: tuple[str, str, str, str]) -> dict[str, Any]:
    label, pkg, old_v, new_v = pair
    old = _payload(_fetch(cache, pkg, old_v), work)
    new = _payload(_fetch(cache, pkg, new_v), work)
    old_p, new_p = work / "old.tar", work / "new.tar"
    old_p.write_bytes(old)
    new_p.write_bytes(new)
    start = time.perf_counter()
    patch = delta.make(old, new)
    make_s = time.perf_counter() - start
    patch_p = work / "patch.zst"
    patch_p.write_bytes(patch)
    rebuild_s, rss = _child(_REBUILD, str(old_p), str(patch_p), str(work / "rebuilt.tar"))
    if (work / "rebuilt.tar").read_bytes() != new:
        raise AssertionError(f"{pkg}: rebuilt payload differs")
    start = time.perf_counter()
    tar_patch = tar_delta_make.make(old, new)
    tar_make_s = time.perf_counter() - start
    tar_p = work / "patch.tbd"
    tar_p.write_bytes(tar_patch)
    tar_rebuild_s, tar_rss = _child(_TAR_REBUILD, str(old_p), str(tar_p), str(work / "rebuilt.tar"))
    if (work / "rebuilt.tar").read_bytes() != new:
        raise AssertionError(f"{pkg}: tar-bsdiff rebuilt payload differs")
    chosen = "tar-bsdiff" if len(tar_patch) < len(patch) else "zstd-patch"
    best = min(len(tar_patch), len(patch))
    zstd_tool = _tool(
        ["zstd", "-q", "-f", "-19", f"--patch-from={old_p}", str(new_p), "-o", str(work / "t.zst")],
        work / "t.zst",
    )
    if zstd_tool is not None:
        # The tool's patch decodes with our codec: one format on both sides.
        with (work / "t.zst").open("rb") as f, (work / "t.out").open("wb") as out:
            delta.apply(old, f, out, max_output=1 << 34, max_memory=1 << 40)
        if (work / "t.out").read_bytes() != new:
            raise AssertionError("zstd tool's patch did not rebuild the target")
    bsdiff = _tool(["bsdiff", str(old_p), str(new_p), str(work / "t.bsd")], work / "t.bsd")
    xdelta = _tool(
        ["xdelta3", "-9", "-f", "-e", "-s", str(old_p), str(new_p), str(work / "t.xd")],
        work / "t.xd",
    )
    full_gz = len(gzip.compress(new, compresslevel=9, mtime=0))
    return {
        "pair": label,
        "package": pkg,
        "from": old_v,
        "to": new_v,
        "base_bytes": len(old),
        "target_bytes": len(new),
        "full_gz_bytes": full_gz,
        "delta_bytes": len(patch),
        "delta_share_of_tar": round(len(patch) / len(new), 4),
        "delta_share_of_gz": round(len(patch) / full_gz, 4),
        "zstd_tool_bytes": zstd_tool,
        "ratio_to_zstd_tool": round(len(patch) / zstd_tool, 3) if zstd_tool else None,
        "bsdiff_bytes": bsdiff,
        "xdelta3_bytes": xdelta,
        "make_s": round(make_s, 2),
        "rebuild_s": round(rebuild_s, 3),
        "rebuild_peak_rss_mb": round(rss / 2**20, 1),
        "rss_over_base_mb": round((rss - len(old)) / 2**20, 1),
        "tar_bsdiff_bytes": len(tar_patch),
        "tar_bsdiff_share_of_tar": round(len(tar_patch) / len(new), 4),
        "tar_bsdiff_ratio_to_zstd_tool": round(len(tar_patch) / zstd_tool, 3)
        if zstd_tool
        else None,
        "tar_bsdiff_make_s": round(tar_make_s, 2),
        "tar_bsdiff_rebuild_s": round(tar_rebuild_s, 3),
        "tar_bsdiff_rebuild_peak_rss_mb": round(tar_rss / 2**20, 1),
        "tar_bsdiff_rss_over_base_mb": round((tar_rss - len(old)) / 2**20, 1),
        "chosen": chosen,
        "chosen_share_of_tar": round(best / len(new), 4),
        "chosen_ratio_to_zstd_tool": round(best / zstd_tool, 3) if zstd_tool else None,
        "wire_full_gz_mb_1000": round(DEVICES * full_gz / 2**20, 1),
        "wire_delta_mb_1000": round(DEVICES * best / 2**20, 1),
        "load_average": os.getloadavg(),
    }


def run(quick: bool = False) -> dict[str, Any]:
    part = os.environ.get("FLEETPUSH_DELTA_PART")
    if part == "fleet":  # the fleet alone (no apt-get)
        return {"fleet": _delta_fleet.run(quick)}
    cache = Path(os.environ.get("FLEETPUSH_DEB_CACHE", Path(tempfile.gettempdir()) / "fp-debs"))
    cache.mkdir(parents=True, exist_ok=True)
    pairs = PAIRS[:1] if quick else PAIRS
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_pair(Path(tmp), cache, pair) for pair in pairs]
    _, bare = _child(_BARE)
    if part == "pairs":  # the Debian pairs alone
        return {"interpreter_peak_rss_mb": round(bare / 2**20, 1), "pairs": rows}
    fleet = _delta_fleet.run(quick)
    return {"interpreter_peak_rss_mb": round(bare / 2**20, 1), "pairs": rows, "fleet": fleet}
