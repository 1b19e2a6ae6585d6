"""Regenerate docs/protocol/delta-vectors.json: a ``tar-bsdiff`` delta with one op of each
kind, over two small tars, for other implementations of the applier.

    .venv/bin/python scripts/gen_delta_vectors.py > docs/protocol/delta-vectors.json

The op stream is written out by hand (``ops``), so every op kind appears whatever the
maker would choose; the script applies the patch before writing it and refuses a vector
that does not rebuild its target.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import tarfile
from typing import Any

import zstandard

from fleetpush_protocol import tar_delta

MTIME = 1_780_000_000


def _tar(files: dict[str, bytes]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, MTIME
            tar.addfile(info, io.BytesIO(content))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        at = {m.name: (m.offset_data, m.size) for m in tar}
    return data, at


def _q(*values: int) -> bytes:
    return b"".join(struct.pack("<Q", v) for v in values)


def build() -> dict[str, Any]:
    program = bytes((i * 7) % 251 for i in range(2000))
    patched = bytearray(program)
    patched[1000:1004] = b"\x01\x02\x03\x04"
    text = b"fleetpush delta vector, line %d\n"
    readme = b"".join(text % i for i in range(40))
    base, b_at = _tar({"bin/tool": program, "README": readme, "VERSION": b"1.0.0\n"})
    target, t_at = _tar({"bin/tool": bytes(patched), "bin/tool-again": bytes(patched),
                         "README": readme + b"one more line\n", "VERSION": b"2.0.0\n"})  # fmt: skip
    tool_at, tool_len = b_at["bin/tool"]
    readme_at, readme_len = b_at["README"]
    new_readme = readme + b"one more line\n"
    diff = bytes(a - b & 0xFF for a, b in zip(patched, program, strict=True))
    reference = zstandard.ZstdCompressionDict(
        base[readme_at : readme_at + readme_len], dict_type=zstandard.DICT_TYPE_RAWCONTENT
    )
    frame = zstandard.ZstdCompressor(level=19, dict_data=reference).compress(new_readme)
    ops: list[tuple[str, bytes]] = [
        ("C: the first header, copied from the base", b"C" + _q(0, 512)),
        (
            "B: bin/tool by bsdiff, one entry: 2000 diff bytes, no extra",
            b"B"
            + _q(tool_at, tool_len, len(patched), 1, 0)
            + struct.pack("<QQq", 2000, 0, 0)
            + diff,
        ),
    ]
    t_tool, _ = t_at["bin/tool"]
    t_again, _ = t_at["bin/tool-again"]
    t_readme, _ = t_at["README"]
    ops.append(("L: padding and the second header", b"L" + _q(t_again - (t_tool + 2000))
                + target[t_tool + 2000 : t_again]))  # fmt: skip
    ops.append(("T: bin/tool-again, a copy of bin/tool's rebuilt bytes", b"T" + _q(t_tool, 2000)))
    ops.append(("L: padding and the README header", b"L" + _q(t_readme - (t_again + 2000))
                + target[t_again + 2000 : t_readme]))  # fmt: skip
    ops.append(("Z: README by zstd with the base's README as dictionary",
                b"Z" + _q(readme_at, readme_len, len(new_readme), len(frame)) + frame))  # fmt: skip
    end = t_readme + len(new_readme)
    ops.append(("L: the rest (padding, VERSION, the archive's end)",
                b"L" + _q(len(target) - end) + target[end:]))  # fmt: skip
    ops.append(("E: the end", b"E"))
    max_member = max(readme_len, len(new_readme))
    stream = struct.pack("<8sQQQ", tar_delta.MAGIC, len(base), len(target), max_member)
    stream += b"".join(op for _, op in ops)
    patch = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(stream)
    out = io.BytesIO()
    tar_delta.apply(io.BytesIO(base), len(base), io.BytesIO(patch), out,
                    max_output=len(target), max_memory=1 << 30)  # fmt: skip
    if out.getvalue() != target:
        raise SystemExit("the vector does not rebuild its target")
    return {
        "method": tar_delta.METHOD,
        "description": "One op of each kind; apply `patch` to `base` and get `target`.",
        "base": base.hex(),
        "target": target.hex(),
        "target_sha256": hashlib.sha256(target).hexdigest(),
        "ops": [{"what": what, "bytes": op.hex()} for what, op in ops],
        "op_stream": stream.hex(),
        "patch": patch.hex(),
    }


if __name__ == "__main__":
    json.dump(build(), sys.stdout, indent=1)
    sys.stdout.write("\n")
