"""Build decompression bombs cheaply (no gigabytes in memory) and measure a process's peak RSS."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

MiB = 2**20
CHUNK = MiB


class _RepeatDeflate:
    """Stands in for zipfile's compressor: every MiB of zeros deflates to the same flushed block."""

    def __init__(self) -> None:
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.block = deflate.compress(bytes(CHUNK)) + deflate.flush(zlib.Z_FULL_FLUSH)
        again = deflate.compress(bytes(CHUNK)) + deflate.flush(zlib.Z_FULL_FLUSH)
        assert again == self.block  # a full flush resets the window, so each block is independent
        self.tail = deflate.flush()

    def compress(self, data: bytes) -> bytes:
        assert len(data) == CHUNK and not data.strip(b"\0")
        return self.block

    def flush(self) -> bytes:
        return self.tail


def zero_bomb(src: Path, dst: Path, rel: str, size: int, *, declare: int | None = None) -> Path:
    """Copy a real .pt2 archive with entry `rel` replaced by `size` deflated zeros (about size/1000 bytes).

    With `declare`, the zip directory states that size instead of the real one (a lying entry).
    """
    assert size % CHUNK == 0
    zeros = bytes(CHUNK)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            if info.filename != f"{root}/{rel}":
                zout.writestr(info.filename, zin.read(info.filename))
        bomb = zipfile.ZipInfo(f"{root}/{rel}")
        bomb.compress_type = zipfile.ZIP_DEFLATED
        with zout.open(bomb, "w", force_zip64=True) as out:
            out._compressor = _RepeatDeflate()  # type: ignore[attr-defined]
            for _ in range(size // CHUNK):
                out.write(zeros)
        if declare is not None:
            bomb.file_size = declare  # the central directory, written on close, lies
    return dst


def proc_status_kib(pid: int | str, field: str) -> int:
    """One memory field (VmRSS, VmHWM) of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int | str) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux clear_refs 5); return that RSS in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return proc_status_kib(pid, "VmRSS")
