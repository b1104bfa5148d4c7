"""`make bench`: our snapshot vs GNU tar, and (with a running system) quick vs cold.

Machines here are noisy, so every figure is reported next to its baseline measured in the
same run, and as a ratio. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ccci_tasks.platform.base import VolumeInfo
from ccci_tasks.state.voltar import restore_dirs, snapshot_dirs

FILES = 2000
BIG_BYTES = 64 * 2**20
REPEAT = 3


def _volume(root: Path) -> Path:
    data = root / "_data"
    for i in range(FILES):
        d = data / f"d{i % 40}" / f"e{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(os.urandom(256))
    (data / "big.bin").write_bytes(os.urandom(BIG_BYTES))
    return data


def _best(fn: object) -> float:
    times = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_snapshot() -> None:
    with tempfile.TemporaryDirectory(prefix="ccci-bench-") as tmp:
        root = Path(tmp)
        data = _volume(root / "vol")
        volume = VolumeInfo(name="data", mountpoint=str(data))
        out = root / "out"

        def ours() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            snapshot_dirs([volume], out)

        def gnu_tar() -> None:
            subprocess.run(["tar", "-C", str(data), "-cf", str(root / "plain.tar"), "."],
                           check=True)
            subprocess.run(["sha256sum", str(root / "plain.tar")], check=True,
                           capture_output=True)

        t_ours, t_tar = _best(ours), _best(gnu_tar)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        made = snapshot_dirs([volume], out)
        t_restore = _best(lambda: restore_dirs([volume], out, made))
        size = sum(e.size_bytes for e in made)
        print(f"snapshot of {FILES} files + {BIG_BYTES >> 20} MiB ({size >> 20} MiB tar), "
              f"best of {REPEAT}:")
        print(f"  ours (tar + sha256 + re-check): {t_ours:6.2f} s")
        print(f"  GNU tar + sha256sum:            {t_tar:6.2f} s")
        print(f"  ratio ours / GNU tar:           {t_ours / t_tar:6.2f}")
        print(f"  restore (verify + clear + untar): {t_restore:6.2f} s")


def bench_lanes() -> None:
    """Quick vs cold on the running system (`make up`), if there is one."""
    from ccci_tasks.celery_app import app

    try:
        workers = app.control.ping(timeout=1.0) or []
    except Exception:
        workers = []
    if not any(name.startswith("runs@") for reply in workers for name in reply):
        print("quick vs cold: skipped (no runs worker answers; start the system with make up)")
        return
    from ccci_tasks.platform.recipes import RecipeRepo
    from ccci_tasks.runs import wait
    from ccci_tasks.tasks import cold_run, quick_run

    t0 = time.perf_counter()
    cold = wait(cold_run.delay("custom-html").id, 900)
    t_cold = time.perf_counter() - t0
    repo = RecipeRepo(Path(os.environ.get("CCCI_RECIPES_DIR", "recipes")) / "custom-html",
                      "custom-html")
    sha = repo.commit(repo.latest() or "HEAD")
    t0 = time.perf_counter()
    quick = wait(quick_run.delay("custom-html", sha).id, 900)
    t_quick = time.perf_counter() - t0
    print("custom-html lanes on the running system:")
    print(f"  cold run (with promotion): {t_cold:6.1f} s  verdict {cold.verdict}")
    print(f"  quick run:                 {t_quick:6.1f} s  verdict {quick.verdict}")
    print(f"  ratio quick / cold:        {t_quick / t_cold:6.2f}")


def main() -> int:
    bench_snapshot()
    bench_lanes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
