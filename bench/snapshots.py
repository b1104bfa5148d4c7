"""Our snapshot and restore against GNU tar plus sha256sum, on the same data, in one run.

The data: ``FILES`` small files in nested folders and one ``BIG_MIB`` MiB file. Both sides
use the same GNU tar options (pax, sparse, xattrs, ACLs, numeric owners), so the comparison
is about what we add around tar:

* snapshot, ours: tar streamed through Python (sha256 while writing, write-back while
  streaming, fsync), then, as ``snapshots.snapshot`` does, the tar re-hashed and every member
  checked. GNU: ``tar --create --file=X`` then ``sha256sum X``.
* restore, ours: ``voltar.restore_dirs`` (sha256 and member check first, then the volume).
  GNU: ``sha256sum X``, the volume emptied, ``tar --extract --file=X``. Measured after a
  quick run (a few files of the large volume changed: incremental, with the stamp of the
  last restore) and in full (no stamp).

Each figure is the best of ``REPEAT``; the ratio is GNU's time over ours (above 1: ours is
faster).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILES = 5000
BIG_MIB = 200
REPEAT = 3


def _populate(data: Path) -> None:
    for i in range(FILES):
        folder = data / f"d{i % 50:02d}" / f"e{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.txt").write_bytes(os.urandom(512))
    with open(data / "big.bin", "wb") as handle:
        for _ in range(BIG_MIB):
            handle.write(os.urandom(1 << 20))
    subprocess.run(["sync"], check=True)


def _after_a_quick_run(data: Path) -> None:
    """What a quick run leaves: a rewritten page, an appended log, a new and a lost file."""
    (data / "d00" / "e0" / "f0.txt").write_bytes(os.urandom(512))
    with open(data / "d01" / "e1" / "f1.txt", "ab") as handle:
        handle.write(b"one more boot\n")
    (data / "written-by-the-pr.txt").write_text("new\n")
    (data / "d02" / "e2" / "f2.txt").unlink(missing_ok=True)


def _timed(fn: Callable[[], object], before: Callable[[], object] | None = None
           ) -> dict[str, Any]:
    times = []
    for _ in range(REPEAT):
        if before is not None:
            before()
        subprocess.run(["sync"], check=True)  # no write-back of the last round is billed
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"best_s": min(times), "median_s": statistics.median(times), "all_s": times}


def run() -> dict[str, Any]:
    from ccci_tasks.platform.base import VolumeInfo
    from ccci_tasks.snapshots import tarcheck, voltar
    from ccci_tasks.state import warmsnap

    root = Path(tempfile.mkdtemp(prefix="ccci-bench-snap-", dir="/var/tmp"))
    try:
        data = root / "volume"
        _populate(data)
        volume = VolumeInfo("data", str(data))
        out, plain = root / "ours", root / "plain.tar"
        create = [a for a in voltar.TAR_CREATE if a not in ("--file=-", ".")]
        extract = [a for a in voltar.TAR_EXTRACT if a != "--file=-"]

        def ours_snapshot() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            entries = voltar.snapshot_dirs([volume], out)
            warmsnap.verify_entries(out, entries, "bench")
            tarcheck.check_archive(out / "data.tar", "bench")

        def gnu_snapshot() -> None:
            subprocess.run(["tar", "-C", str(data), f"--file={plain}", *create, "."],
                           check=True)
            subprocess.run(["sha256sum", str(plain)], check=True, capture_output=True)

        figures: dict[str, Any] = {"files": FILES, "big_mib": BIG_MIB}
        figures["snapshot_ours"] = _timed(ours_snapshot)
        figures["snapshot_gnu"] = _timed(gnu_snapshot)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        entries = voltar.snapshot_dirs([volume], out)
        tar = out / "data.tar"
        figures["tar_bytes"] = entries[0].size_bytes
        stamps = root / "stamps"
        voltar.restore_dirs([volume], out, entries, stamp_dir=stamps)  # the first: a stamp
        modes: list[str] = []

        def incremental() -> None:
            [done] = voltar.restore_dirs([volume], out, entries, stamp_dir=stamps)
            modes.append(f"{done.mode}: {done.extracted} extracted, {done.removed} removed, "
                         f"{done.kept} kept")

        def gnu_restore() -> None:
            subprocess.run(["sha256sum", str(tar)], check=True, capture_output=True)
            voltar.clear_dir(data)
            subprocess.run(["tar", "-C", str(data), f"--file={tar}", *extract], check=True)

        figures["restore_after_quick_ours"] = _timed(incremental, lambda: _after_a_quick_run(data))
        figures["restore_after_quick_ours"]["how"] = modes[-1]
        figures["restore_full_ours"] = _timed(
            lambda: voltar.restore_dirs([volume], out, entries), lambda: _after_a_quick_run(data))
        figures["restore_gnu"] = _timed(gnu_restore, lambda: _after_a_quick_run(data))
        gnu_snap, gnu_rest = figures["snapshot_gnu"]["best_s"], figures["restore_gnu"]["best_s"]
        figures["ratio_snapshot"] = gnu_snap / figures["snapshot_ours"]["best_s"]
        figures["ratio_restore_after_quick"] = gnu_rest / figures["restore_after_quick_ours"][
            "best_s"]
        figures["ratio_restore_full"] = gnu_rest / figures["restore_full_ours"]["best_s"]
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)
