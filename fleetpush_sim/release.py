"""The small release the demo rolls out: a tar archive built in memory."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterable

__all__ = ["make_tar", "sample_release"]


def make_tar(files: dict[str, bytes], *, extra: Iterable[tarfile.TarInfo] = ()) -> bytes:
    """A tar archive holding ``files`` (name -> content), regular files with mode 0644, then
    the raw members ``extra`` (tests use them for links, devices and hostile paths)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
        for member in extra:
            tar.addfile(member)
    return buf.getvalue()


def sample_release(version: str, *, filler_bytes: int = 0) -> bytes:
    """An application release: a version file, a start script, and optional random filler
    (benchmarks use it to reach a given payload size)."""
    files = {
        "app/VERSION": f"{version}\n".encode(),
        "app/run.sh": b"#!/bin/sh\necho 'hello from the demo app'\n",
    }
    if filler_bytes > 0:
        files["app/data.bin"] = os.urandom(filler_bytes)
    return make_tar(files)
