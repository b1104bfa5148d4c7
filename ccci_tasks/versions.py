"""Co-op Cloud versions: parsing, ordering, bump kinds and migration flags. Pure code.

A recipe version is a git tag ``<recipe-semver>+<upstream>``: ``1.7.1+1.27.2``,
``5.0.3+27.0.1-fpm``, ``2.0.1+1.0.6-social-amd64``. The recipe part is semver 2.0
(``MAJOR.MINOR.PATCH`` with an optional ``-prerelease``, no leading zeros); the upstream part
is the main image's tag, ``[A-Za-z0-9._-]+`` not starting with ``-`` or ``.`` and need not
be semver. A plain semver without ``+<upstream>`` is accepted too, since some recipes tag
that way; it sorts before every ``+<upstream>`` of the same semver.

Ordering: recipe semver first (a prerelease before its release), then the upstream compared
piecewise - runs of digits numerically, the text between them lexically - and finally the
upstream text itself, so two versions are equal only when their texts are.

Bump kinds (the working rule of the warm reconciler, R2.1): ``major`` if the recipe major
grows or the upstream's leading number grows (``27.0.1-fpm`` → ``28.0.0-fpm``; the leading
number is the first digits of the upstream, after an optional ``v``; an upstream without
one never counts as a major bump); ``minor`` if the recipe minor grows; else ``patch``.
Equal versions are ``none``; a lower target is ``downgrade``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ccci_tasks.errors import ConfigError, InvalidInput

# Release-note lines that flag a manual migration (case-insensitive regexes); the default of
# ``CCCI_MIGRATION_PATTERNS``.
DEFAULT_MIGRATION_PATTERNS: Final = (
    r"manual migration",
    r"migration required",
    r"\battention\b",
    r"\bbreaking\b",
)

__all__ = [
    "BumpKind",
    "Version",
    "bump_kind",
    "is_version",
    "latest",
    "migration_flags",
    "parse_version",
]

BumpKind = Literal["none", "patch", "minor", "major", "downgrade"]

MAX_VERSION_LENGTH: Final = 128

_NUM: Final = r"(?:0|[1-9][0-9]*)"
_PRE_ID: Final = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION_RE: Final = re.compile(
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+(?P<up>[A-Za-z0-9_][A-Za-z0-9._-]*))?"
)
_PIECES_RE: Final = re.compile(r"[0-9]+|[^0-9]+")
_LEADING_NUMBER_RE: Final = re.compile(r"[vV]?([0-9]+)")

# A piece of a version for ordering: numbers (0, n, "") sort before text (1, 0, s).
_Piece = tuple[int, int, str]
_Key = tuple[int, int, int, tuple[object, ...], tuple[object, ...]]


def _piece(text: str) -> _Piece:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _key(major: int, minor: int, patch: int, pre: str | None, up: str | None) -> _Key:
    pre_key: tuple[object, ...] = (
        (1,) if pre is None else (0, tuple(_piece(p) for p in pre.split(".")))
    )
    up_key: tuple[object, ...] = (
        (0,) if up is None else (1, tuple(_piece(p) for p in _PIECES_RE.findall(up)), up)
    )
    return (major, minor, patch, pre_key, up_key)


def _bad_version(value: object, rule: str) -> InvalidInput:
    return InvalidInput(
        f"version {value!r} is invalid: {rule}; give a Co-op Cloud version tag "
        "'<recipe-semver>+<upstream>' such as '1.7.1+1.27.2' or '5.0.3+27.0.1-fpm'"
    )


@dataclass(frozen=True, order=True)
class Version:
    """One parsed version. Compares and hashes by ``_sort_key``; ``str()`` is the tag text."""

    _sort_key: _Key = field(init=False, repr=False)
    major: int = field(compare=False)
    minor: int = field(compare=False)
    patch: int = field(compare=False)
    prerelease: str | None = field(default=None, compare=False)
    upstream: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        parts = (self.major, self.minor, self.patch)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in parts):
            raise _bad_version(parts, "major, minor and patch must be integers")
        _check(self.format())
        key = _key(self.major, self.minor, self.patch, self.prerelease, self.upstream)
        object.__setattr__(self, "_sort_key", key)

    def format(self) -> str:
        """The version as its tag text; ``parse_version(v.format()) == v``."""
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease is not None:
            text += f"-{self.prerelease}"
        if self.upstream is not None:
            text += f"+{self.upstream}"
        return text

    def __str__(self) -> str:
        return self.format()

    @property
    def upstream_major(self) -> int | None:
        """The upstream's leading number (``27`` of ``27.0.1-fpm``, ``2`` of ``v2.1``)."""
        if self.upstream is None:
            return None
        match = _LEADING_NUMBER_RE.match(self.upstream)
        return int(match.group(1)) if match else None


def _check(s: object) -> re.Match[str]:
    """Match ``s`` against the version grammar, or raise ``InvalidInput`` saying why not."""
    if not isinstance(s, str):
        raise _bad_version(s, f"expected a string, got {type(s).__name__}")
    if len(s) > MAX_VERSION_LENGTH:
        raise _bad_version(s, f"it is longer than {MAX_VERSION_LENGTH} characters")
    match = _VERSION_RE.fullmatch(s)
    if match is None:
        raise _bad_version(
            s,
            "it must be MAJOR.MINOR.PATCH (no leading zeros, optional -prerelease), "
            "optionally followed by '+' and an upstream tag of [A-Za-z0-9._-] "
            "not starting with '-' or '.'",
        )
    up = match.group("up")
    if up is not None and (".." in up or up.endswith((".", ".lock"))):
        raise _bad_version(s, "the upstream part must not contain '..' or end in '.' or '.lock'")
    return match


def parse_version(s: str) -> Version:
    """Parse ``<recipe-semver>[+<upstream>]``; a bad string raises ``InvalidInput``."""
    match = _check(s)
    return Version(
        major=int(match.group("major")),
        minor=int(match.group("minor")),
        patch=int(match.group("patch")),
        prerelease=match.group("pre"),
        upstream=match.group("up"),
    )


def is_version(s: str) -> bool:
    """True if ``parse_version(s)`` would succeed."""
    try:
        parse_version(s)
    except InvalidInput:
        return False
    return True


def _as_version(v: str | Version) -> Version:
    return v if isinstance(v, Version) else parse_version(v)


def bump_kind(current: str | Version, target: str | Version) -> BumpKind:
    """How big the step from ``current`` to ``target`` is (rule in the module docstring)."""
    cur, tgt = _as_version(current), _as_version(target)
    if tgt == cur:
        return "none"
    if tgt < cur:
        return "downgrade"
    cur_up, tgt_up = cur.upstream_major, tgt.upstream_major
    if tgt.major > cur.major or (cur_up is not None and tgt_up is not None and tgt_up > cur_up):
        return "major"
    if tgt.minor > cur.minor:
        return "minor"
    return "patch"


def migration_flags(
    notes_text: str, patterns: Sequence[str] = DEFAULT_MIGRATION_PATTERNS
) -> list[str]:
    """The lines of ``notes_text`` (stripped) that match any pattern, case-insensitively.

    An empty list means the notes flag no manual migration. A pattern that is not a regex
    raises ``ConfigError`` (patterns come from settings).
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ConfigError(
                f"migration pattern {pattern!r} is not a regex ({exc}); fix CCCI_MIGRATION_PATTERNS"
            ) from exc
    return [
        line.strip()
        for line in notes_text.splitlines()
        if any(regex.search(line) for regex in compiled)
    ]


def latest(versions: Iterable[str]) -> str | None:
    """The highest valid version among ``versions``; strings that are no version are skipped."""
    parsed = [v for v in (_try_parse(s) for s in versions) if v is not None]
    return max(parsed).format() if parsed else None


def _try_parse(s: str) -> Version | None:
    try:
        return parse_version(s)
    except InvalidInput:
        return None
