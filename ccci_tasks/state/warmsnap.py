"""Known-good snapshots of an app's volumes (R5.3): one raw tar per volume, plus a manifest.

Layout under ``<state>/<recipe>/`` (or any ``base`` folder, e.g. ``<state>/infra/keycloak``)::

    snapshot -> snapshot.<id>/          symlink, swapped by an atomic rename
    snapshot.<id>/manifest.json         {recipe, version, taken_at, volumes: [...]}
    snapshot.<id>/<volume>.tar          one tar per volume (0600, folder 0700)
    snapshot.<id>.partial/              a snapshot being built (removed on failure or next time)
    .snapshot.lock                      flock: one snapshot/verify/restore at a time

A snapshot is built in ``snapshot.<id>.partial/`` beside the current one, verified (re-hashed,
every member checked as restore would), renamed to ``snapshot.<id>/`` and only then made
current by renaming a new symlink over ``snapshot``. An interrupted or out-of-space snapshot
therefore never touches the current one; its leftovers are removed by the next snapshot.

The tars themselves are made and checked by ``voltar`` (GNU tar; see there why). The core
``snapshot_dirs``/``restore_dirs`` work on plain directories; ``snapshot``/``verify``/``restore``
add the platform (refusing while the app is deployed) and the atomic swap.

Volume names in the manifest are relative to the app's stack (``<stack>_data`` → ``data``),
so a snapshot restores into the same app under any domain that has the same volumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ccci_tasks import atomic, failpoints
from ccci_tasks.errors import SnapshotError, SnapshotRefused
from ccci_tasks.naming import stack_name, validate_domain, validate_recipe, validate_version
from ccci_tasks.platform.base import Platform, VolumeInfo
from ccci_tasks.state.canonical import recipe_dir
from ccci_tasks.state.clock import compact, iso, utc_now
from ccci_tasks.state.voltar import (
    STAMP_DIR,
    VolumeEntry,
    check_archive,
    restore_dirs,
    snapshot_dirs,
    tar_file_name,
    verify_entries,
)

__all__ = [
    "Manifest",
    "VolumeEntry",
    "app_volumes",
    "read_current",
    "read_manifest",
    "restore",
    "restore_dirs",
    "snapshot",
    "snapshot_dirs",
    "verify",
]

log = logging.getLogger(__name__)

SNAPSHOT_LINK: Final = "snapshot"
MANIFEST_FILE: Final = "manifest.json"
LOCK_FILE: Final = ".snapshot.lock"
PARTIAL_SUFFIX: Final = ".partial"

_SHA_RE: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Manifest:
    recipe: str
    version: str
    taken_at: str
    volumes: tuple[VolumeEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def volume(self, name: str) -> VolumeEntry | None:
        return next((v for v in self.volumes if v.name == name), None)


# --------------------------------------------------------------------------- manifests


def _entry(raw: Any, path: Path) -> VolumeEntry:
    if not isinstance(raw, dict):
        raise SnapshotError(f"{path}: a volume entry is not an object: {raw!r}")
    try:
        entry = VolumeEntry(
            name=raw["name"], file=raw["file"], size_bytes=raw["size_bytes"], sha256=raw["sha256"]
        )
    except KeyError as exc:
        raise SnapshotError(f"{path}: volume entry {raw!r} misses {exc}") from exc
    if not (isinstance(entry.name, str) and isinstance(entry.file, str)
            and isinstance(entry.sha256, str) and _SHA_RE.fullmatch(entry.sha256)
            and isinstance(entry.size_bytes, int) and entry.size_bytes >= 0):
        raise SnapshotError(f"{path}: volume entry {raw!r} has a bad field")
    try:
        expected_file = tar_file_name(entry.name)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: {exc}") from exc
    if entry.file != expected_file:
        raise SnapshotError(f"{path}: volume {entry.name} names file {entry.file!r}, "
                            f"expected {expected_file!r}")
    return entry


def read_manifest(snap_dir: Path) -> Manifest:
    path = Path(snap_dir) / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest(
            recipe=str(raw["recipe"]), version=str(raw["version"]),
            taken_at=str(raw["taken_at"]),
            volumes=tuple(_entry(v, path) for v in raw["volumes"]),
        )
    except FileNotFoundError as exc:
        raise SnapshotError(f"{path} is missing: the snapshot is incomplete") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{path}: unreadable manifest: {exc}") from exc
    if len({v.name for v in manifest.volumes}) != len(manifest.volumes):
        raise SnapshotError(f"{path}: a volume is listed twice")
    return manifest


# --------------------------------------------------------------------------- the swap


def _base(state_dir: Path, recipe: str, base: Path | None) -> Path:
    return Path(base) if base is not None else recipe_dir(state_dir, recipe)


@contextlib.contextmanager
def _locked(root: Path, *, create: bool = False) -> Iterator[None]:
    if create:
        root.mkdir(parents=True, exist_ok=True)
    elif not root.is_dir():
        raise SnapshotError(f"there is no snapshot under {root}")
    with atomic.file_lock(root / LOCK_FILE):
        yield


def current_dir(root: Path) -> Path | None:
    """The folder the ``snapshot`` link points to (or a plain ``snapshot/``), if any."""
    link = root / SNAPSHOT_LINK
    if link.is_symlink():
        target = root / os.readlink(link)
        return target if target.is_dir() else None
    return link if link.is_dir() else None


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


def _swap(root: Path, new_dir_name: str, snap_id: str) -> None:
    link = root / SNAPSHOT_LINK
    if link.is_dir() and not link.is_symlink():  # a plain folder from an older layout
        os.rename(link, root / f"{SNAPSHOT_LINK}.legacy-{snap_id}")
    tmp_link = root / f".{SNAPSHOT_LINK}.link-{snap_id}"
    os.symlink(new_dir_name, tmp_link)
    os.replace(tmp_link, link)
    atomic.fsync_dir(root)


def _refuse_if_deployed(platform: Platform, domain: str, doing: str) -> None:
    state = platform.deployed(domain)
    if state.is_deployed:
        services = ", ".join(s.name for s in state.services)
        raise SnapshotRefused(
            f"refusing to {doing} {domain}: it is deployed (services {services}); "
            "snapshots are taken and restored only while the app is undeployed"
        )


def _relative(volume: VolumeInfo, stack: str) -> VolumeInfo:
    prefix = stack + "_"
    name = volume.name[len(prefix):] if volume.name.startswith(prefix) else volume.name
    return dataclasses.replace(volume, name=name)


def app_volumes(platform: Platform, domain: str) -> list[VolumeInfo]:
    """The app's volumes, named relative to its stack (``<stack>_data`` → ``data``)."""
    stack = stack_name(domain)
    return sorted((_relative(v, stack) for v in platform.volumes(domain)), key=lambda v: v.name)


# --------------------------------------------------------------------------- platform API


Guard = Callable[[str], None]


def snapshot(
    platform: Platform, state_dir: Path, recipe: str, domain: str, version: str,
    *, base: Path | None = None, guard: Guard | None = None,
) -> Manifest:
    """Take the known-good snapshot of ``domain``'s volumes; the app must be undeployed.

    The new snapshot replaces the current one only once it is complete and verified, and
    only if ``guard`` (the caller's fence check) passes right before the swap.
    """
    validate_recipe(recipe)
    validate_domain(domain)
    validate_version(version)
    root = _base(state_dir, recipe, base)
    with _locked(root, create=True):
        _refuse_if_deployed(platform, domain, "snapshot")
        cleanup_leftovers(root)
        volumes = app_volumes(platform, domain)
        moment = utc_now()
        snap_id = f"{compact(moment)}-{secrets.token_hex(3)}"
        final = root / f"{SNAPSHOT_LINK}.{snap_id}"
        work = root / f"{final.name}{PARTIAL_SUFFIX}"
        what = f"snapshot of {recipe} ({domain})"
        if not volumes:
            raise SnapshotError(
                f"{what}: the app has no volumes (was it removed?); refusing to replace the "
                "known-good snapshot with an empty one"
            )
        try:
            work.mkdir(mode=0o700)
            entries = snapshot_dirs(volumes, work)
            manifest = Manifest(recipe, version, iso(moment), tuple(entries))
            atomic.write_json(work / MANIFEST_FILE, manifest.to_json(), mode=0o600)
            if read_manifest(work) != manifest:
                raise SnapshotError(f"{what}: manifest did not read back as written")
            verify_entries(work, manifest.volumes, what)
            for entry in manifest.volumes:
                check_archive(work / entry.file, f"{what}: volume {entry.name}")
            _refuse_if_deployed(platform, domain, "keep a snapshot of")
            if guard is not None:
                guard(f"swap in the new known-good snapshot of {recipe}")
            failpoints.fire("before-snapshot-swap")
            os.rename(work, final)
            atomic.fsync_dir(root)
            _swap(root, final.name, snap_id)
        except BaseException as exc:
            shutil.rmtree(work, ignore_errors=True)
            if current_dir(root) != final:
                shutil.rmtree(final, ignore_errors=True)
            if isinstance(exc, OSError):
                raise SnapshotError(
                    f"{what} failed: {exc}; the previous snapshot is unchanged"
                ) from exc
            raise
        cleanup_leftovers(root)
    log.info("%s taken: %d volume(s), %d bytes", what, len(entries),
             sum(e.size_bytes for e in entries))
    return manifest


def _current_or_fail(root: Path, recipe: str) -> Path:
    current = current_dir(root)
    if current is None:
        raise SnapshotError(f"there is no snapshot of {recipe} under {root}")
    return current


def read_current(state_dir: Path, recipe: str, *, base: Path | None = None) -> Manifest | None:
    """The current snapshot's manifest without re-hashing, ``None`` when there is none."""
    root = _base(state_dir, recipe, base)
    current = current_dir(root)
    return read_manifest(current) if current is not None else None


def verify(state_dir: Path, recipe: str, *, base: Path | None = None) -> Manifest:
    """Re-hash every tar of the current snapshot against its manifest."""
    validate_recipe(recipe)
    root = _base(state_dir, recipe, base)
    with _locked(root):
        current = _current_or_fail(root, recipe)
        manifest = read_manifest(current)
        verify_entries(current, manifest.volumes, f"snapshot of {recipe}")
    return manifest


def restore(
    platform: Platform, state_dir: Path, recipe: str, domain: str,
    *, base: Path | None = None, guard: Guard | None = None,
) -> Manifest:
    """Clear each volume of ``domain`` and untar the known-good snapshot back into it.

    Refused while the app is deployed. Every sha256 and every member is checked before
    any volume is touched, and ``guard`` (the caller's fence check) right before.
    """
    validate_recipe(recipe)
    validate_domain(domain)
    root = _base(state_dir, recipe, base)
    with _locked(root):
        _refuse_if_deployed(platform, domain, "restore")
        current = _current_or_fail(root, recipe)
        manifest = read_manifest(current)
        what = f"snapshot of {recipe}"
        volumes = app_volumes(platform, domain)
        _refuse_if_deployed(platform, domain, "restore")
        if guard is not None:
            guard(f"restore the snapshot of {recipe} into {domain}")
        restore_dirs(volumes, current, manifest.volumes, what, stamp_dir=root / STAMP_DIR)
    log.info("restored %s into %s: %d volume(s)", what, domain, len(manifest.volumes))
    return manifest
