"""Pure planning shared by the app lanes: where the cold upgrade tier starts, who promotes.

Everything here is pure: it takes observed facts (tags, the canonical registry, enrolment)
and returns decisions; the lanes carry them out.
"""

from __future__ import annotations

from ccci_tasks.versions import parse_version


def upgrade_base(
    canonical_version: str | None, versions: list[str], target_version: str | None, ref: str | None
) -> tuple[str | None, str | None]:
    """The version the cold upgrade tier starts from, or why the tier is skipped.

    From the canonical's version when there is one. When that equals the target (the steady
    state after a promotion), step back to the newest tag older than the target. A PR run
    (``ref``) upgrades from the canonical's version to the ref as it is.
    Returns ``(base, None)`` or ``(None, reason)``.
    """
    if canonical_version is None:
        return None, "no canonical: nothing known-good to upgrade from"
    if ref is not None:
        return canonical_version, None
    if target_version is None:
        return None, "the recipe has no version tags"
    if canonical_version != target_version:
        if parse_version(canonical_version) > parse_version(target_version):
            return None, f"canonical {canonical_version} is newer than {target_version}"
        return canonical_version, None
    older = [v for v in versions if parse_version(v) < parse_version(target_version)]
    if not older:
        return None, f"base == head ({target_version}) and no older published predecessor"
    return max(older, key=parse_version), None


def should_promote(ref: str | None, enrolled: bool) -> bool:
    """Only a cold run on latest (no ref) of an enrolled recipe re-seeds its canonical
    (R7.2); PR runs never do (quick runs never get here)."""
    return ref is None and enrolled
