"""What one reconcile of a live-warm app should do (R2), decided from observed facts. Pure.

Facts: the app, the version deployed now (its ``coop-cloud.<stack>.version`` label, or
``None`` when nothing runs), the recorded ``InfraState`` (or ``None``), the recipe's version
tags, the release notes of a version, whether the app is stateful, the migration patterns.

Outcomes (``InfraPlan.outcome``):

* ``deploy``: nothing runs. Deploy ``target``: the recorded ``last_good`` when there is one
  (the data in the volumes was written by it; plan again afterwards to gate an upgrade), else
  the newest tag (first deployment). Health-check it; no rollback (``rollback_to`` is None).
* ``up-to-date``: the running version is the newest tag and is the recorded ``last_good``.
  Nothing to do.
* ``verify``: the newest tag runs but was never recorded healthy (no state file, or the
  state's ``last_good`` differs: a reconcile cut off between deploy and health gate, or a
  deploy by hand). Health-check it: healthy → record it as current and last_good; unhealthy →
  roll back to ``rollback_to`` (the recorded last_good; a stateful app restores its snapshot
  only if the snapshot is of that version) or, without one, alert.
* ``held`` (R2.1): the upgrade to the newest tag is a major bump (recipe major, or the
  upstream's leading number, ``versions.bump_kind``), or the release notes of a version
  between the running one (exclusive) and the target (inclusive) flag a manual migration
  (``versions.migration_flags``). Also held, with ``bump`` None or ``downgrade``, when the
  running version is no version tag at all or is newer than every tag: nothing is touched
  and an operator is told; likewise when the running version is no tag any more (a failed
  upgrade could not be rolled back to it), and when an app runs on the engine whose config
  (its env file) is not in this state root (``configured`` false: e.g. the state root was
  wiped while the app ran), since it can be neither probed nor redeployed as it was. Write
  an ``upgrade-held`` alert.
* ``upgrade`` (R2.2/R2.3): a patch or minor bump with clean notes. Record ``rollback_to``
  (the running version) as last_good, snapshot first when ``snapshot_first`` (stateful:
  undeploy, snapshot, deploy), deploy ``target``, health-check; unhealthy → roll back to
  ``rollback_to`` (stateful: restore the snapshot, then redeploy it).

Per R2.2 the running version is what an upgrade falls back to, even when the state file
records another ``last_good``; such a difference is reported in ``warnings``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from ccci_tasks.errors import AppNotFound, InvalidInput
from ccci_tasks.naming import Recipe
from ccci_tasks.state.infra import InfraState
from ccci_tasks.versions import (
    DEFAULT_MIGRATION_PATTERNS,
    BumpKind,
    Version,
    bump_kind,
    migration_flags,
    parse_version,
)

__all__ = ["OUTCOMES", "InfraPlan", "Notes", "Outcome", "plan_reconcile"]

Outcome = Literal["deploy", "up-to-date", "verify", "held", "upgrade"]
OUTCOMES: Final = ("deploy", "up-to-date", "verify", "held", "upgrade")
# Release notes of a version: a mapping, or a callable (e.g. ``RecipeRepo.release_notes``).
Notes = Mapping[str, str | None] | Callable[[str], str | None]


@dataclass(frozen=True)
class InfraPlan:
    """One reconcile's decision. ``current`` is what runs ("from"), ``target`` the "to"."""

    app: str
    outcome: Outcome
    current: str | None
    target: str
    newest: str
    why: str
    bump: BumpKind | None = None
    flagged: tuple[str, ...] = ()  # the release-note lines that flag a manual migration
    flagged_in: tuple[str, ...] = ()  # the versions whose notes flagged them
    notes: str | None = None  # the target's release notes, for the alert
    snapshot_first: bool = False
    rollback_to: str | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (tuples as lists), e.g. for a run report."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    @property
    def touches_app(self) -> bool:
        """False for ``up-to-date`` and ``held``: the running app is left alone."""
        return self.outcome in ("deploy", "verify", "upgrade")


def _sorted_tags(app: str, tags: Iterable[str]) -> list[Version]:
    parsed = []
    for tag in tags:
        try:
            parsed.append(parse_version(tag))
        except ValueError:
            continue  # not a version tag (e.g. a stray tag): ignored, like RecipeRepo does
    if not parsed:
        raise AppNotFound(
            f"recipe {app!r} has no version tags (<recipe-semver>+<upstream>, e.g. "
            "1.0.0+26.0.0); a live-warm app always deploys its newest tag: tag a release or "
            "fetch the recipe's tags"
        )
    return sorted(set(parsed))


def _notes_of(notes: Notes, version: str) -> str | None:
    return notes.get(version) if isinstance(notes, Mapping) else notes(version)


def _as_version(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return parse_version(text)
    except ValueError:
        return None


def plan_reconcile(
    app: Recipe,
    deployed: str | None,
    recorded: InfraState | None,
    tags: Iterable[str],
    notes: Notes,
    *,
    stateful: bool,
    patterns: Sequence[str] = DEFAULT_MIGRATION_PATTERNS,
    configured: bool = True,
) -> InfraPlan:
    """Decide one reconcile of live-warm ``app`` (rules in the module docstring).

    ``deployed`` is the version label of the running app (``None``: nothing runs). Raises
    ``AppNotFound`` naming the recipe when it has no version tag.
    """
    if recorded is not None and recorded.app != app:
        raise InvalidInput(f"the recorded state is of app {recorded.app!r}, not {app!r}")
    versions = _sorted_tags(app, tags)
    newest = versions[-1]
    newest_s = newest.format()
    last_good = recorded.last_good if recorded is not None else None
    warnings: list[str] = []

    if deployed is None:
        if last_good is None:
            return InfraPlan(app, "deploy", None, newest_s, newest_s,
                             f"nothing runs and no version was recorded healthy: first "
                             f"deployment of the newest tag {newest_s}")
        if _as_version(last_good) in versions:
            why = f"nothing runs: bring back the recorded last-good {last_good}"
            if _as_version(last_good) != newest:
                why += f"; plan again to gate the upgrade to {newest_s}"
            return InfraPlan(app, "deploy", None, last_good, newest_s, why)
        return InfraPlan(
            app, "held", None, newest_s, newest_s,
            f"nothing runs and the recorded last-good {last_good} is no version tag any more; "
            f"deploying {newest_s} over its data could skip a migration: deploy a version by "
            "hand")

    if not configured:
        return InfraPlan(
            app, "held", deployed, newest_s, newest_s,
            f"{deployed} runs on the engine, but the app's config (its env file) is not in "
            "this state root, so it can be neither probed nor redeployed as it was: restore "
            "the state root (CCCI_STATE_DIR), or remove the app's stack and its volumes so "
            "that the next reconcile deploys it afresh")

    current = _as_version(deployed)
    if current is None:
        return InfraPlan(
            app, "held", deployed, newest_s, newest_s,
            f"the running version label {deployed!r} is no version tag; cannot gate an "
            f"upgrade to {newest_s}: deploy a version tag by hand")
    current_s = current.format()
    if last_good is not None and last_good != current_s:
        warnings.append(
            f"the recorded last-good {last_good} differs from the running {current_s}")

    if current == newest:
        if last_good == current_s:
            return InfraPlan(app, "up-to-date", current_s, current_s, newest_s,
                             f"{current_s} runs and is the newest tag",
                             warnings=tuple(warnings))
        return InfraPlan(
            app, "verify", current_s, current_s, newest_s,
            f"the newest tag {current_s} runs but was never recorded healthy: health-check "
            "it" + (f"; roll back to {last_good} if unhealthy" if last_good else ""),
            rollback_to=last_good if last_good and _as_version(last_good) in versions
            else None,
            warnings=tuple(warnings))

    bump = bump_kind(current, newest)
    if bump == "downgrade":
        return InfraPlan(
            app, "held", current_s, newest_s, newest_s,
            f"the running {current_s} is newer than the newest tag {newest_s}; refusing to "
            "downgrade (were tags deleted?)", bump=bump, warnings=tuple(warnings))

    if current not in versions:
        return InfraPlan(
            app, "held", current_s, newest_s, newest_s,
            f"the running {current_s} is no tag of the recipe any more, so a failed upgrade "
            f"to {newest_s} could not be rolled back to it: upgrade by hand",
            bump=bump, warnings=tuple(warnings))

    flagged: list[str] = []
    flagged_in: list[str] = []
    for version in versions:
        if current < version <= newest:
            lines = migration_flags(_notes_of(notes, version.format()) or "", patterns)
            if lines:
                flagged.extend(lines)
                flagged_in.append(version.format())
    target_notes = _notes_of(notes, newest_s)
    reasons = []
    if bump == "major":
        reasons.append(f"{current_s} -> {newest_s} is a major bump")
    if flagged_in:
        reasons.append(f"the release notes of {', '.join(flagged_in)} flag a manual migration")
    if reasons:
        return InfraPlan(
            app, "held", current_s, newest_s, newest_s,
            "; ".join(reasons) + f": staying on {current_s} until an operator upgrades",
            bump=bump, flagged=tuple(flagged), flagged_in=tuple(flagged_in),
            notes=target_notes, warnings=tuple(warnings))
    return InfraPlan(
        app, "upgrade", current_s, newest_s, newest_s,
        f"{current_s} -> {newest_s} is a {bump} bump with no migration flagged"
        + ("; snapshot the data volumes first" if stateful else ""),
        bump=bump, notes=target_notes, snapshot_first=stateful, rollback_to=current_s,
        warnings=tuple(warnings))
