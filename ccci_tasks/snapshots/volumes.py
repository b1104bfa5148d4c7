"""An app's volumes into its known-good snapshot and back (R5.3), through the platform.

``snapshot`` and ``restore`` refuse while the app is deployed (and check again right before
they act), hold the snapshot lock, and call the caller's fence check (``guard``) right before
the current snapshot is replaced or a volume is touched. The files are ``state.warmsnap``'s;
the data goes through ``snapshots.voltar``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from ccci_tasks import failpoints
from ccci_tasks.errors import SnapshotError, SnapshotRefused
from ccci_tasks.naming import (
    Domain,
    Recipe,
    stack_name,
    validate_version,
)
from ccci_tasks.platform.base import Platform, VolumeInfo
from ccci_tasks.snapshots.tarcheck import check_archive
from ccci_tasks.snapshots.voltar import restore_dirs, snapshot_dirs
from ccci_tasks.state import warmsnap
from ccci_tasks.state.clock import iso, utc_now
from ccci_tasks.state.warmsnap import Manifest

__all__ = ["Guard", "app_volumes", "restore", "snapshot"]

log = logging.getLogger(__name__)

Guard = Callable[[str], None]


def _refuse_if_deployed(platform: Platform, domain: Domain, doing: str) -> None:
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


def app_volumes(platform: Platform, domain: Domain) -> list[VolumeInfo]:
    """The app's volumes, named relative to its stack (``<stack>_data`` → ``data``)."""
    stack = stack_name(domain)
    return sorted((_relative(v, stack) for v in platform.volumes(domain)), key=lambda v: v.name)


def snapshot(
    platform: Platform, state_dir: Path, recipe: Recipe, domain: Domain, version: str,
    *, base: Path | None = None, guard: Guard | None = None,
) -> Manifest:
    """Take the known-good snapshot of ``domain``'s volumes; the app must be undeployed.

    The new snapshot is built beside the current one, verified (re-hashed, every member
    checked as restore would) and replaces the current one only once it is complete, and
    only if ``guard`` (the caller's fence check) passes right before the swap.
    """
    validate_version(version)
    root = warmsnap.snapshot_root(state_dir, recipe, base)
    with warmsnap.locked(root, create=True):
        _refuse_if_deployed(platform, domain, "snapshot")
        warmsnap.cleanup_leftovers(root)
        volumes = app_volumes(platform, domain)
        moment = utc_now()
        work, final = warmsnap.new_dirs(root, moment)
        what = f"snapshot of {recipe} ({domain})"
        if not volumes:
            raise SnapshotError(
                f"{what}: the app has no volumes (was it removed?); refusing to replace the "
                "known-good snapshot with an empty one"
            )
        try:
            work.mkdir(mode=0o700)
            entries = snapshot_dirs(volumes, work)
            manifest = Manifest(recipe=recipe, version=version, taken_at=iso(moment),
                                volumes=tuple(entries))
            warmsnap.write_manifest(work, manifest, what)
            warmsnap.verify_entries(work, manifest.volumes, what)
            for entry in manifest.volumes:
                check_archive(work / entry.file, f"{what}: volume {entry.name}")
            _refuse_if_deployed(platform, domain, "keep a snapshot of")
            if guard is not None:
                guard(f"swap in the new known-good snapshot of {recipe}")
            failpoints.fire("before-snapshot-swap")
            warmsnap.make_current(root, work, final)
        except BaseException as exc:
            warmsnap.discard(root, work, final)
            if isinstance(exc, OSError):
                raise SnapshotError(
                    f"{what} failed: {exc}; the previous snapshot is unchanged"
                ) from exc
            raise
        warmsnap.cleanup_leftovers(root)
    log.info("%s taken: %d volume(s), %d bytes", what, len(entries),
             sum(e.size_bytes for e in entries))
    return manifest


def restore(
    platform: Platform, state_dir: Path, recipe: Recipe, domain: Domain,
    *, base: Path | None = None, guard: Guard | None = None,
) -> Manifest:
    """Clear each volume of ``domain`` and untar the known-good snapshot back into it.

    Refused while the app is deployed. Every sha256 and every member is checked before
    any volume is touched, and ``guard`` (the caller's fence check) right before.
    """
    root = warmsnap.snapshot_root(state_dir, recipe, base)
    with warmsnap.locked(root):
        _refuse_if_deployed(platform, domain, "restore")
        current = warmsnap.current_or_fail(root, recipe)
        manifest = warmsnap.read_manifest(current)
        what = f"snapshot of {recipe}"
        volumes = app_volumes(platform, domain)
        _refuse_if_deployed(platform, domain, "restore")
        if guard is not None:
            guard(f"restore the snapshot of {recipe} into {domain}")
        restore_dirs(volumes, current, manifest.volumes, what,
                     stamp_dir=root / warmsnap.STAMP_DIR)
    log.info("restored %s into %s: %d volume(s)", what, domain, len(manifest.volumes))
    return manifest
