"""Version parsing, ordering, bump kinds and migration flags of ``ccci_tasks.versions``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccci_tasks.errors import ConfigError, InvalidInput
from ccci_tasks.versions import (
    DEFAULT_MIGRATION_PATTERNS,
    Version,
    bump_kind,
    is_version,
    latest,
    migration_flags,
    parse_version,
)

REAL_TAGS = [
    "1.7.1+1.27.2",
    "5.0.3+27.0.1-fpm",
    "2.0.1+1.0.6-social-amd64",
    "0.7.0+3.3.1",
    "3.0.10+1.10.8",
]

_nums = st.integers(min_value=0, max_value=10**6)
_pre_ids = st.one_of(_nums.map(str), st.from_regex(r"\A[0-9]*[A-Za-z-][0-9A-Za-z-]{0,5}\Z"))
_prereleases = st.none() | st.lists(_pre_ids, min_size=1, max_size=3).map(".".join)
_upstreams = st.none() | st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,20}\Z").filter(
    lambda s: ".." not in s and not s.endswith((".", ".lock"))
)
versions = st.builds(Version, _nums, _nums, _nums, _prereleases, _upstreams)


# --- parsing --------------------------------------------------------------------------------


def test_parse_real_tags() -> None:
    """Real recipe tags parse into recipe semver and upstream, and format back unchanged."""
    v = parse_version("5.0.3+27.0.1-fpm")
    assert (v.major, v.minor, v.patch, v.prerelease, v.upstream) == (5, 0, 3, None, "27.0.1-fpm")
    assert v.upstream_major == 27
    assert parse_version("2.0.1+1.0.6-social-amd64").upstream == "1.0.6-social-amd64"
    for tag in REAL_TAGS:
        assert str(parse_version(tag)) == parse_version(tag).format() == tag


def test_plain_semver_and_prerelease() -> None:
    """A plain semver (no '+upstream') and a semver prerelease are versions too."""
    plain = parse_version("1.2.3")
    assert plain.upstream is None and plain.upstream_major is None
    pre = parse_version("1.2.3-rc.1+v4.5")
    assert pre.prerelease == "rc.1" and pre.upstream_major == 4


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "v1.2.3",
        "01.2.3",
        "1.02.3",
        "1.2.3-01",
        "1.2.3+",
        "1.2.3++x",
        "1.2.3+-fpm",
        "1.2.3+.x",
        "1.2.3+a..b",
        "1.2.3+a.",
        "1.2.3+a.lock",
        "1.2.3+a b",
        "1.2.3+a/b",
        "1.2.3 ",
        "1.2.3+$(id)",
        "1.2.3+" + "a" * 130,
    ],
)
def test_parse_rejects(text: str) -> None:
    """Malformed versions raise InvalidInput naming the value and the expected form."""
    with pytest.raises(InvalidInput) as info:
        parse_version(text)
    assert repr(text) in str(info.value)
    assert "1.7.1+1.27.2" in str(info.value)  # the hint shows a good example
    assert not is_version(text)


def test_constructor_checks_parts() -> None:
    """A Version built from bad parts is InvalidInput, so every Version formats validly."""
    for args in [(-1, 0, 0), (1, 0, 0, "01"), (1, 0, 0, None, "-x"), (1, 0, 0, None, "")]:
        with pytest.raises(InvalidInput):
            Version(*args)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        Version("1", 0, 0)  # type: ignore[arg-type]


@given(versions)
def test_parse_format_round_trip(v: Version) -> None:
    """parse(format(x)) == x for every constructible version."""
    assert parse_version(v.format()) == v
    assert parse_version(str(v)).format() == v.format()


@given(
    st.from_regex(
        r"\A(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]?)\.(0|[1-9])(\+[a-z0-9][a-z0-9.-]{0,8})?\Z"
    )
)
def test_format_parse_round_trip(text: str) -> None:
    """format(parse(s)) == s for every valid version string."""
    if is_version(text):
        assert parse_version(text).format() == text


# --- ordering -------------------------------------------------------------------------------


def test_ordering_examples() -> None:
    """Recipe semver first, then upstream piecewise with numbers compared numerically."""
    ordered = [
        "0.7.0+3.3.1",
        "1.0.0-rc.1+9",
        "1.0.0",
        "1.0.0+1.9",
        "1.0.0+1.10",
        "1.0.0+1.10-alpine",
        "1.7.1+1.27.2",
        "2.0.1+1.0.6-social-amd64",
        "3.0.9+1.10.8",
        "3.0.10+1.10.8",
        "5.0.3+27.0.1-fpm",
        "10.0.0+1",
    ]
    shuffled = list(reversed(ordered))
    assert [v.format() for v in sorted(map(parse_version, shuffled))] == ordered


def test_equality_and_hash_follow_text() -> None:
    """Versions are equal (and hash alike) exactly when their texts are equal."""
    assert parse_version("1.0.0+1.2") == parse_version("1.0.0+1.2")
    assert parse_version("1.0.0+1.02") != parse_version("1.0.0+1.2")
    assert len({parse_version("1.0.0+1.2"), parse_version("1.0.0+1.2")}) == 1


@given(versions, versions)
def test_order_is_total_and_consistent(a: Version, b: Version) -> None:
    """Exactly one of a<b, a==b, a>b holds, and a==b iff their texts are equal."""
    assert [a < b, a == b, a > b].count(True) == 1
    assert (a == b) == (a.format() == b.format())


@given(versions, versions, versions)
def test_order_is_transitive(a: Version, b: Version, c: Version) -> None:
    """a <= b <= c implies a <= c."""
    low, mid, high = sorted([a, b, c])
    assert low <= mid <= high and low <= high


# --- bump kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target", "kind"),
    [
        ("1.7.1+1.27.2", "1.7.1+1.27.2", "none"),
        ("1.7.1+1.27.2", "1.7.2+1.27.3", "patch"),
        ("1.7.1+1.27.2", "1.8.0+1.27.2", "minor"),
        ("1.7.1+1.27.2", "2.0.0+1.27.2", "major"),
        ("1.7.1+1.27.2", "1.7.2+2.0.0", "major"),  # upstream leading number grows
        ("1.7.1+1.27.2", "1.7.0+1.27.2", "downgrade"),
        ("5.0.3+27.0.1-fpm", "5.0.4+27.0.2-fpm", "patch"),
        ("5.0.3+27.0.1-fpm", "5.1.0+27.1.0-fpm", "minor"),
        ("5.0.3+27.0.1-fpm", "5.0.4+28.0.0-fpm", "major"),
        ("5.0.3+27.0.1-fpm", "5.0.3+27.0.1-apache", "downgrade"),
        ("2.0.1+1.0.6-social-amd64", "2.0.2+1.0.7-social-amd64", "patch"),
        ("2.0.1+1.0.6-social-amd64", "3.0.0+1.0.6-social-amd64", "major"),
        ("0.7.0+3.3.1", "0.7.1+3.3.2", "patch"),
        ("0.7.0+3.3.1", "0.8.0+3.4.0", "minor"),
        ("0.7.0+3.3.1", "0.7.0+3.3.1", "none"),
        ("0.7.0+3.3.1", "0.6.9+3.3.1", "downgrade"),
        ("3.0.10+1.10.8", "3.0.11+1.10.9", "patch"),
        ("3.0.9+1.10.8", "3.0.10+1.10.8", "patch"),  # numeric, not lexical, patch compare
        ("3.0.10+1.10.8", "3.0.9+1.10.8", "downgrade"),
        ("3.0.10+1.10.8", "4.0.0+2.0.0", "major"),
        ("1.0.0", "1.0.1", "patch"),
        ("1.0.0-rc.1", "1.0.0", "patch"),
        ("1.0.0+latest", "1.0.1+2.0", "patch"),  # an upstream without a number never is major
        ("1.0.0+v1.2", "1.0.1+v2.0", "major"),
    ],
)
def test_bump_kind_table(current: str, target: str, kind: str) -> None:
    """bump_kind follows the documented rule, on real tags and edge cases."""
    assert bump_kind(current, target) == kind
    assert bump_kind(parse_version(current), parse_version(target)) == kind


def test_bump_kind_rejects_bad_versions() -> None:
    """bump_kind of a malformed version raises InvalidInput naming it."""
    with pytest.raises(InvalidInput, match=r"'1\.2'"):
        bump_kind("1.2", "1.2.3+1")


@given(versions, versions)
def test_bump_kind_agrees_with_order(a: Version, b: Version) -> None:
    """none iff equal, downgrade iff lower, otherwise an upgrade kind."""
    kind = bump_kind(a, b)
    if a == b:
        assert kind == "none"
    elif b < a:
        assert kind == "downgrade"
    else:
        assert kind in ("patch", "minor", "major")
        assert (kind == "major") >= (b.major > a.major)


# --- migration flags ------------------------------------------------------------------------

NOTES = """\
Fixed the healthcheck.
ATTENTION: this release has breaking changes, start your env file from scratch.
  Manual migration: run `abra app cmd db migrate`.
Nothing else to see here; the word attentionally is not a flag.
"""


def test_migration_flags_default_patterns() -> None:
    """Lines matching a default pattern are returned, stripped; others are not."""
    assert migration_flags(NOTES) == [
        "ATTENTION: this release has breaking changes, start your env file from scratch.",
        "Manual migration: run `abra app cmd db migrate`.",
    ]
    assert migration_flags("Just a bugfix.\nBumped the image.\n") == []
    assert migration_flags("") == []


def test_migration_flags_case_insensitive_and_custom() -> None:
    """Patterns match case-insensitively; custom patterns replace the defaults."""
    assert migration_flags("BREAKING stuff\nbreaking too", DEFAULT_MIGRATION_PATTERNS) == [
        "BREAKING stuff",
        "breaking too",
    ]
    assert migration_flags(NOTES, [r"healthcheck"]) == ["Fixed the healthcheck."]
    assert migration_flags(NOTES, "HEALTHCHECK") == ["Fixed the healthcheck."]
    assert migration_flags(NOTES, []) == []


def test_migration_flags_bad_pattern() -> None:
    """A pattern that is not a regex is a ConfigError naming the pattern."""
    with pytest.raises(ConfigError, match=r"'\('"):
        migration_flags(NOTES, ["("])


# --- latest ---------------------------------------------------------------------------------


def test_latest() -> None:
    """latest picks the highest valid version and ignores strings that are none."""
    assert latest(REAL_TAGS) == "5.0.3+27.0.1-fpm"
    assert latest(["3.0.9+1.10.8", "3.0.10+1.10.8", "junk", "v9.9.9"]) == "3.0.10+1.10.8"
    assert latest(iter(["1.0.0+1.9", "1.0.0+1.10"])) == "1.0.0+1.10"
    assert latest([]) is None
    assert latest(["junk", "latest"]) is None


@given(st.lists(versions, max_size=8))
def test_latest_is_max(vs: list[Version]) -> None:
    """latest of formatted versions is the format of their max."""
    expected = max(vs).format() if vs else None
    assert latest(v.format() for v in vs) == expected
