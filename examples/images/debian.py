"""Images made from Debian packages: ``mmdebstrap ... | docker import``, cached by content.

Usage: ``python examples/images/debian.py NAME [NAME ...]`` builds ``examples/images/NAME.json``.

An image is described as data::

    {
      "repository": "ccci/debian-pg",
      "tag": "15",
      "suite": "bookworm",
      "packages": ["postgresql-15", "python3", "python3-psycopg2"],
      "files": {"/usr/local/bin/x": "x.sh"}      # optional: baked in, relative to the json
    }

``build`` runs ``mmdebstrap --variant=apt --include=<packages> <suite> -`` (it reads the
host's apt sources and needs root) and pipes the root file system it writes into ``docker
import``. The image carries ``LABEL ccci.image-hash=<sha256>`` of everything that makes it:
the suite, the variant, the sorted package list, every baked-in file's path and content, and
the import changes. An image whose label already holds that hash is not built again, so a
package list that did not change costs nothing; a changed one is rebuilt under the same tag.
A lock file (in the temp directory) keeps two builds of one image on a host from running at
once; the second finds the first one's image and returns.

No registry is pulled from. Documentation, man pages and translations are left out of the
image (``dpkg path-exclude``), keeping each package's copyright file.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HASH_LABEL = "ccci.image-hash"
VARIANT = "apt"
BUILD_TIMEOUT_S = 1800
INSPECT_TIMEOUT_S = 60
FORMAT = 1  # bump when the way images are made changes: every image is rebuilt once
CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)
DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
)
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_REPO_RE = re.compile(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_SUITE_RE = re.compile(r"[a-z]+")
_TARGET_RE = re.compile(r"(/[A-Za-z0-9._-]+)+")


class ImageError(Exception):
    """The image description is wrong or a build failed; the message says what to do."""


@dataclass(frozen=True)
class DebianImage:
    name: str
    repository: str
    tag: str
    suite: str
    packages: tuple[str, ...]
    files: tuple[tuple[str, Path], ...]  # (path in the image, file on the host)

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"

    def content_hash(self) -> str:
        """sha256 of everything the image is made of (see the module docstring)."""
        digest = hashlib.sha256()
        head = {"format": FORMAT, "suite": self.suite, "variant": VARIANT,
                "packages": sorted(self.packages), "changes": list(CHANGES),
                "dpkg": list(DPKG_OPTS)}
        digest.update(json.dumps(head, sort_keys=True).encode())
        for target, source in sorted(self.files):
            digest.update(f"\0{target}\0".encode())
            digest.update(hashlib.sha256(source.read_bytes()).digest())
        return digest.hexdigest()


def load(name: str, directory: Path = HERE) -> DebianImage:
    """Read and check ``<directory>/<name>.json``."""
    if not _NAME_RE.fullmatch(name):
        raise ImageError(f"image name {name!r} is invalid: use letters, digits, '.', '_', '-'")
    path = directory / f"{name}.json"
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        image = DebianImage(
            name=name,
            repository=str(raw["repository"]),
            tag=str(raw["tag"]),
            suite=str(raw.get("suite", "bookworm")),
            packages=tuple(str(p) for p in raw["packages"]),
            files=tuple((str(t), (path.parent / str(s)).resolve())
                        for t, s in (raw.get("files") or {}).items()),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{path}: cannot read the image description: {exc!r}") from exc
    problems = []
    if not _REPO_RE.fullmatch(image.repository):
        problems.append(f"repository {image.repository!r}")
    if not _TAG_RE.fullmatch(image.tag):
        problems.append(f"tag {image.tag!r}")
    if not _SUITE_RE.fullmatch(image.suite):
        problems.append(f"suite {image.suite!r}")
    problems += [f"package {p!r}" for p in image.packages if not _PACKAGE_RE.fullmatch(p)]
    if not image.packages:
        problems.append("packages: none listed")
    for target, source in image.files:
        if not _TARGET_RE.fullmatch(target) or ".." in target.split("/"):
            problems.append(f"file target {target!r} (an absolute path)")
        if not source.is_file():
            problems.append(f"file {str(source)!r} (missing)")
    if problems:
        raise ImageError(f"{path}: invalid {', '.join(problems)}")
    return image


def image_hash(ref: str) -> str | None:
    """The ``ccci.image-hash`` label of image ``ref``; None when there is no such image."""
    proc = subprocess.run(["docker", "image", "inspect", "--format",
                           "{{json .Config.Labels}}", ref],
                          capture_output=True, text=True, timeout=INSPECT_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout or "null") or {}
    value = labels.get(HASH_LABEL)
    return str(value) if value else None


@contextmanager
def _build_lock(image: DebianImage) -> Iterator[None]:
    path = Path(tempfile.gettempdir()) / f"ccci-image-{image.repository.replace('/', '_')}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mmdebstrap_argv(image: DebianImage) -> list[str]:
    """The mmdebstrap command line: a tar of the root file system on stdout."""
    argv = ["mmdebstrap", f"--variant={VARIANT}", "--format=tar",
            f"--include={','.join(image.packages)}"]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_OPTS]
    for target, source in image.files:
        argv.append(f"--customize-hook=upload {source} {target}")
    return [*argv, image.suite, "-"]


def build(image: DebianImage, *, log: Any = sys.stderr) -> bool:
    """Build ``image`` unless an image with its content hash exists; True when built."""
    wanted = image.content_hash()
    if image_hash(image.ref) == wanted:
        return False
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("docker", "docker.io")):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is not installed: apt-get install {package}")
    with _build_lock(image):
        if image_hash(image.ref) == wanted:  # built by someone else meanwhile
            return False
        started = time.monotonic()
        print(f"images: building {image.ref} from Debian {image.suite} packages "
              f"{', '.join(image.packages)} (mmdebstrap | docker import; about a minute)",
              file=log, flush=True)
        importer = ["docker", "import"]
        for change in (*CHANGES, f"LABEL {HASH_LABEL}={wanted}"):
            importer += ["--change", change]
        importer += ["-", image.ref]
        with tempfile.TemporaryFile() as errors:
            strap = subprocess.Popen(mmdebstrap_argv(image), stdout=subprocess.PIPE,
                                     stderr=errors, stdin=subprocess.DEVNULL)
            try:
                imported = subprocess.run(importer, stdin=strap.stdout, capture_output=True,
                                          text=True, timeout=BUILD_TIMEOUT_S, check=False)
            finally:
                assert strap.stdout is not None
                strap.stdout.close()
                try:
                    strap.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    strap.kill()
                    strap.wait()
            errors.seek(0)
            tail = " | ".join(errors.read().decode("utf-8", "replace").strip()
                              .splitlines()[-5:])
        if strap.returncode != 0:
            raise ImageError(f"mmdebstrap for {image.ref} exited {strap.returncode}: {tail}; "
                             "it needs root and the host's apt sources to reach a Debian "
                             "mirror")
        if imported.returncode != 0:
            raise ImageError(f"docker import of {image.ref} failed: {imported.stderr.strip()}")
        print(f"images: built {image.ref} in {time.monotonic() - started:.0f} s", file=log,
              flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="image descriptions examples/images/NAME.json")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            image = load(name)
            done = build(image)
            print(f"{image.ref}: {'built' if done else 'up to date'} ({image.content_hash()[:12]})")
    except (ImageError, OSError, subprocess.SubprocessError) as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
