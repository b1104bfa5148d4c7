"""Plans for runs, as plain data: which lane, which domain, which versions, which steps.

Everything here is pure: it takes observed facts (tags, the canonical registry, enrolment)
and returns decisions. The acting layer (``lanes.steps``) only carries them out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ccci_tasks import naming
from ccci_tasks.versions import parse_version

Lane = Literal["quick", "cold"]

QUICK_STEPS: tuple[str, ...] = (
    "admit",
    "deploy_canonical",
    "health_check",
    "realm_create",
    "upgrade",
    "assert_upgrade",
    "overlay_upgrade",
    "overlay_custom",
    "finish_quick",
)
COLD_STEPS: tuple[str, ...] = (
    "admit",
    "new_app",
    "install",
    "health_check",
    "realm_create",
    "overlay_install",
    "upgrade_tier",
    "overlay_custom",
    "teardown",
)
PROMOTE_STEPS: tuple[str, ...] = (
    "promote_deploy",
    "promote_health",
    "promote_undeploy",
    "promote_snapshot",
)
FINISH_COLD = "finish_cold"


@dataclass(frozen=True)
class RunCtx:
    """Everything a step needs to know about its run; passed to every step as a dict."""

    run_id: str
    lane: Lane
    recipe: str
    ref: str | None
    domain: str  # the app under test: cold per-run domain, or the warm canonical
    run_hex: str
    target_version: str | None = None  # tag deployed for latest / base of a chaos deploy
    base_version: str | None = None  # cold upgrade tier: deploy this first, then upgrade
    upgrade_skip: str | None = None  # why the cold upgrade tier is skipped
    known_good: str | None = None  # quick: the canonical's version
    promote: bool = False  # cold on latest of an enrolled recipe: re-seed the canonical
    warm_domain: str | None = None
    deps: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["deps"] = list(self.deps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunCtx:
        return cls(**{**data, "deps": tuple(data.get("deps", ()))})

    @property
    def realm(self) -> str | None:
        """The per-run Keycloak realm, when the recipe depends on keycloak."""
        if "keycloak" not in self.deps:
            return None
        return naming.realm_name(self.recipe, self.run_hex)


def run_hex(run_id: str) -> str:
    """The 6-hex id of a run, taken from its Celery task id (a uuid)."""
    return naming.validate_run_hex(run_id.replace("-", "")[:6].lower())


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


def should_promote(lane: Lane, ref: str | None, enrolled: bool) -> bool:
    """Only a cold run on latest (no ref) of an enrolled recipe re-seeds its canonical."""
    return lane == "cold" and ref is None and enrolled


def steps_for(ctx: RunCtx) -> tuple[str, ...]:
    """The names of the steps of this run, in order."""
    if ctx.lane == "quick":
        return QUICK_STEPS
    promote = PROMOTE_STEPS if ctx.promote else ()
    return (*COLD_STEPS, *promote, FINISH_COLD)
