"""The files of the known-good snapshots (R5.3): one raw tar per volume, plus a manifest.

Layout under ``<state>/<recipe>/`` (or any ``base`` folder, e.g. ``<state>/infra/keycloak``)::

    snapshot -> snapshot.<id>/          symlink, swapped by an atomic rename
    snapshot.<id>/manifest.json         {recipe, version, taken_at, volumes: [...]}
    snapshot.<id>/<volume>.tar          one tar per volume (0600, folder 0700)
    snapshot.<id>.partial/              a snapshot being built (removed on failure or next time)
    restore-stamps/                     what the volumes looked like after their last restore
    .snapshot.lock                      flock: one snapshot/verify/restore at a time

A snapshot is built in ``snapshot.<id>.partial/`` beside the current one, verified, renamed to
``snapshot.<id>/`` and only then made current by renaming a new symlink over ``snapshot``
(``make_current``). An interrupted or out-of-space snapshot therefore never touches the current
one; its leftovers are removed by the next snapshot (``cleanup_leftovers``).

This module reads and writes those files only; taking the volumes' data into a snapshot and
back is ``ccci_tasks.snapshots``'s. Volume names in the manifest are relative to the app's
stack (``<stack>_data`` → ``data``), so a snapshot restores into the same app under any domain
that has the same volumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Final

from pydantic import AfterValidator, Field, StrictInt, StrictStr, model_validator

from ccci_tasks.atomic import file_lock, fsync_dir, write_json
from ccci_tasks.errors import IntegrityError, InvalidInput, SnapshotError
from ccci_tasks.naming import Recipe
from ccci_tasks.state import records
from ccci_tasks.state.canonical import recipe_dir
from ccci_tasks.state.clock import compact

__all__ = [
    "STAMP_DIR",
    "Manifest",
    "VolumeEntry",
    "cleanup_leftovers",
    "current_dir",
    "current_or_fail",
    "discard",
    "locked",
    "make_current",
    "new_dirs",
    "read_current",
    "read_manifest",
    "snapshot_root",
    "tar_file_name",
    "verify",
    "verify_entries",
    "write_manifest",
]

log = logging.getLogger(__name__)

SNAPSHOT_LINK: Final = "snapshot"
MANIFEST_FILE: Final = "manifest.json"
LOCK_FILE: Final = ".snapshot.lock"
PARTIAL_SUFFIX: Final = ".partial"
STAMP_DIR: Final = "restore-stamps"  # beside the snapshot folders
CHUNK_BYTES: Final = 1 << 20

_SHA_RE: Final = re.compile(r"[0-9a-f]{64}")
_VOLUME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def _sha256(value: str) -> str:
    if not _SHA_RE.fullmatch(value):
        raise ValueError(f"sha256 {value!r} is not 64 lowercase hex digits")
    return value


class VolumeEntry(records.Record):
    """One volume's tar in a snapshot."""

    name: StrictStr
    file: StrictStr
    size_bytes: Annotated[StrictInt, Field(ge=0)]
    sha256: Annotated[StrictStr, AfterValidator(_sha256)]

    @model_validator(mode="after")
    def _file_is_the_volumes(self) -> VolumeEntry:
        try:
            expected = tar_file_name(self.name)
        except SnapshotError as exc:
            raise ValueError(str(exc)) from None
        if self.file != expected:
            raise ValueError(f"volume {self.name} names file {self.file!r}, expected {expected!r}")
        return self


class Manifest(records.Record):
    """``manifest.json``: what a snapshot holds."""

    recipe: Recipe
    version: StrictStr
    taken_at: StrictStr
    volumes: tuple[VolumeEntry, ...]

    @model_validator(mode="after")
    def _each_volume_once(self) -> Manifest:
        if len({v.name for v in self.volumes}) != len(self.volumes):
            raise ValueError("a volume is listed twice")
        return self

    def volume(self, name: str) -> VolumeEntry | None:
        return next((v for v in self.volumes if v.name == name), None)


def tar_file_name(name: str) -> str:
    if not _VOLUME_RE.fullmatch(name) or name in (".", ".."):
        raise SnapshotError(f"volume name {name!r} cannot name a snapshot file")
    return f"{name}.tar"


# --------------------------------------------------------------------------- manifests


def read_manifest(snap_dir: Path) -> Manifest:
    path = Path(snap_dir) / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SnapshotError(f"{path} is missing: the snapshot is incomplete") from exc
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(raw, dict):
        raise SnapshotError(f"{path}: unreadable manifest: not a JSON object")
    try:
        return Manifest(**raw)
    except InvalidInput as exc:
        raise SnapshotError(f"{path}: unreadable manifest: {exc}") from exc


def write_manifest(snap_dir: Path, manifest: Manifest, what: str) -> None:
    """Write the manifest (0600) and read it back."""
    write_json(snap_dir / MANIFEST_FILE, manifest.to_json(), mode=0o600)
    if read_manifest(snap_dir) != manifest:
        raise SnapshotError(f"{what}: manifest did not read back as written")


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_entries(src_dir: Path, entries: Iterable[VolumeEntry], what: str) -> None:
    """Re-hash every tar; a mismatch names the volume and both hashes."""
    for entry in entries:
        path = Path(src_dir) / entry.file
        try:
            actual, size = hash_file(path)
        except FileNotFoundError as exc:
            raise IntegrityError(
                f"{what}: volume {entry.name}: {path} is missing (manifest sha256 "
                f"{entry.sha256})"
            ) from exc
        if actual != entry.sha256:
            raise IntegrityError(
                f"{what}: volume {entry.name}: {path} has sha256 {actual} "
                f"({size} bytes) but the manifest says sha256 {entry.sha256} "
                f"({entry.size_bytes} bytes); the snapshot is corrupt, nothing was restored"
            )


# --------------------------------------------------------------------------- the swap


def snapshot_root(state_dir: Path, recipe: Recipe, base: Path | None = None) -> Path:
    """The folder holding a recipe's snapshots (``base`` when given)."""
    return Path(base) if base is not None else recipe_dir(state_dir, recipe)


@contextlib.contextmanager
def locked(root: Path, *, create: bool = False) -> Iterator[None]:
    """Hold the snapshot lock of ``root`` (made first with ``create``)."""
    if create:
        root.mkdir(parents=True, exist_ok=True)
    elif not root.is_dir():
        raise SnapshotError(f"there is no snapshot under {root}")
    with file_lock(root / LOCK_FILE):
        yield


def current_dir(root: Path) -> Path | None:
    """The folder the ``snapshot`` link points to (or a plain ``snapshot/``), if any."""
    link = root / SNAPSHOT_LINK
    if link.is_symlink():
        target = root / os.readlink(link)
        return target if target.is_dir() else None
    return link if link.is_dir() else None


def current_or_fail(root: Path, recipe: Recipe) -> Path:
    current = current_dir(root)
    if current is None:
        raise SnapshotError(f"there is no snapshot of {recipe} under {root}")
    return current


def cleanup_leftovers(root: Path) -> list[Path]:
    """Remove partial and superseded snapshot folders and stray links; call under the lock."""
    current = current_dir(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        stale_dir = child.name.startswith(SNAPSHOT_LINK + ".") and child != current
        stray_link = child.name.startswith(f".{SNAPSHOT_LINK}.link-")
        if stale_dir and child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
        elif (stale_dir or stray_link) and (child.is_symlink() or child.is_file()):
            child.unlink(missing_ok=True)
            removed.append(child)
    if removed:
        log.info("removed snapshot leftovers: %s", ", ".join(p.name for p in removed))
    return removed


def new_dirs(root: Path, moment: datetime) -> tuple[Path, Path]:
    """The folders of a new snapshot taken at ``moment``: (being built, once complete)."""
    final = root / f"{SNAPSHOT_LINK}.{compact(moment)}-{secrets.token_hex(3)}"
    return root / f"{final.name}{PARTIAL_SUFFIX}", final


def make_current(root: Path, work: Path, final: Path) -> None:
    """Rename the complete snapshot ``work`` to ``final`` and swap the link over to it."""
    os.rename(work, final)
    fsync_dir(root)
    snap_id = final.name.removeprefix(SNAPSHOT_LINK + ".")
    link = root / SNAPSHOT_LINK
    if link.is_dir() and not link.is_symlink():  # a plain folder from an older layout
        os.rename(link, root / f"{SNAPSHOT_LINK}.legacy-{snap_id}")
    tmp_link = root / f".{SNAPSHOT_LINK}.link-{snap_id}"
    os.symlink(final.name, tmp_link)
    os.replace(tmp_link, link)
    fsync_dir(root)


def discard(root: Path, work: Path, final: Path) -> None:
    """Remove what a failed snapshot left (never the current one)."""
    shutil.rmtree(work, ignore_errors=True)
    if current_dir(root) != final:
        shutil.rmtree(final, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def read_current(state_dir: Path, recipe: Recipe, *, base: Path | None = None) -> Manifest | None:
    """The current snapshot's manifest without re-hashing, ``None`` when there is none."""
    root = snapshot_root(state_dir, recipe, base)
    current = current_dir(root)
    return read_manifest(current) if current is not None else None


def verify(state_dir: Path, recipe: Recipe, *, base: Path | None = None) -> Manifest:
    """Re-hash every tar of the current snapshot against its manifest."""
    root = snapshot_root(state_dir, recipe, base)
    with locked(root):
        current = current_or_fail(root, recipe)
        manifest = read_manifest(current)
        verify_entries(current, manifest.volumes, f"snapshot of {recipe}")
    return manifest
