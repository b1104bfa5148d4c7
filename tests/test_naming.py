"""Validators and the warm/cold domain, stack and realm schemes of ``ccci_tasks.naming``."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import (
    MAX_STACK_NAME_LENGTH,
    RUN_HEX_LEN,
    Domain,
    Parsed,
    ParsedDomain,
    Recipe,
    Ref,
    RunHex,
    RunId,
    cold_domain,
    cold_prefix,
    new_run_hex,
    parse_domain,
    parse_realm,
    realm_name,
    stack_name,
    validate_domain,
    validate_realm,
    validate_recipe,
    validate_ref,
    validate_run_hex,
    validate_run_id,
    validate_version,
    warm_domain,
)
from ccci_tasks.state.records import Record

BASE = Domain("ci.localhost")
recipes = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")
parsed_recipes = recipes.map(Recipe)
hexes = st.from_regex(r"\A[0-9a-f]{6}\Z").map(RunHex)
bases = st.sampled_from(["ci.localhost", "ci.commoninternet.net", "a.b", "x1.example.org"]).map(
    Domain
)
# Names a warm domain can be made of: no trailing '-'/'_', at most 58 characters.
warm_recipes = st.from_regex(r"\A[a-z0-9]([a-z0-9_-]{0,56}[a-z0-9])?\Z").map(Recipe)


# --- validators: tables -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["keycloak", "traefik", "matrix-synapse", "a", "0x", "my_app", "warm-x", "a" * 63]
)
def test_recipe_names_accepted(name: str) -> None:
    """Co-op Cloud recipe names pass validate_recipe unchanged."""
    assert validate_recipe(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-x",
        "_x",
        "Keycloak",
        "a/b",
        "../x",
        "a..b",
        "a b",
        "a\tb",
        "a\n",
        "$(id)",
        "a;b",
        "a|b",
        "a&b",
        "a`b`",
        "a.b",
        "a" * 64,
        "ä",
        "a\x00",
    ],
)
def test_recipe_names_rejected(name: str) -> None:
    """Names with uppercase, '/', '.', whitespace, controls or shell characters are rejected."""
    with pytest.raises(InvalidInput):
        validate_recipe(name)


@pytest.mark.parametrize(
    "ref",
    [
        "main",
        "HEAD",
        "pr/12",
        "feature/x-y_z.1",
        "abc1234",
        "a" * 40,
        "0123456789abcdef" * 2,
        "v1.2.3",
        "release-1.0",
    ],
)
def test_refs_accepted(ref: str) -> None:
    """Shas and plain branch/tag names pass validate_ref unchanged."""
    assert validate_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "--upload-pack=x",
        "-x",
        "$(id)",
        "`id`",
        "a..b",
        "/main",
        "main/",
        "a//b",
        "main.",
        "main.lock",
        "a/.hidden",
        "x.lock/y",
        ".x",
        "a b",
        "a\nb",
        "a;b",
        "a|b",
        "a&b",
        "a<b",
        "a>b",
        "a(b)",
        "a*",
        "a?",
        "a[b]",
        "a~1",
        "a^",
        "a:b",
        "a\\b",
        "a'b",
        'a"b',
        "a@{1}",
        "1.0.0+",
        "+1.2",
        "main+x/y",
        "x" * 201,
    ],
)
def test_refs_rejected(ref: str) -> None:
    """Option-like, shell-like and git-invalid ref names are rejected."""
    with pytest.raises(InvalidInput):
        validate_ref(ref)


@pytest.mark.parametrize("tag", ["1.0.0+1.2", "2.0.0+2.0", "1.7.1+1.27.2", "5.0.3+27.0.1-fpm"])
def test_version_tags_are_refs(tag: str) -> None:
    """Every Co-op Cloud version tag (with its '+') is a valid ref."""
    assert validate_ref(tag) == tag


@pytest.mark.parametrize(
    "version",
    [
        "1.7.1+1.27.2",
        "5.0.3+27.0.1-fpm",
        "2.0.1+1.0.6-social-amd64",
        "0.7.0+3.3.1",
        "3.0.10+1.10.8",
        "1.0.0",
        "1.0.0-rc.1+v2_x",
    ],
)
def test_versions_accepted(version: str) -> None:
    """Co-op Cloud versions, and plain semver, pass validate_version unchanged."""
    assert validate_version(version) == version


@pytest.mark.parametrize(
    "version",
    [
        "",
        "1.2",
        "v1.2.3",
        "01.2.3+1",
        "1.2.3+",
        "1.2.3+-x",
        "1.2.3+.x",
        "1.2.3+a b",
        "1.2.3+$(id)",
        "1.2.3+a..b",
        "1.2.3+a/b",
        "--upload-pack=x",
    ],
)
def test_versions_rejected(version: str) -> None:
    """Strings that are no Co-op Cloud version are rejected."""
    with pytest.raises(InvalidInput):
        validate_version(version)


@pytest.mark.parametrize(
    "domain",
    [
        "ci.localhost",
        "ci.commoninternet.net",
        "warm-keycloak.ci.localhost",
        "a.b",
        "x-1.example.org",
        ("a" * 63 + ".") * 3 + "a" * 61,
    ],
)
def test_domains_accepted(domain: str) -> None:
    """Lowercase DNS names of two or more labels pass validate_domain."""
    assert validate_domain(domain) == domain


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "localhost",
        "CI.localhost",
        "ci.localhost.",
        ".ci.localhost",
        "a..b",
        "-a.b",
        "a-.b",
        "a_b.c",
        "a b.c",
        "https://a.b",
        "a.b:80",
        "127.0.0.1",
        "a" * 64 + ".b",
        ("a" * 63 + ".") * 3 + "a" * 62,
    ],
)
def test_domains_rejected(domain: str) -> None:
    """Uppercase, empty labels, '_', schemes, ports, IPs and over-long names are rejected."""
    with pytest.raises(InvalidInput):
        validate_domain(domain)


@pytest.mark.parametrize("name", ["master", "ccci", "ccci-1a2b3c", "my_realm", "a" * 100])
def test_realms_accepted(name: str) -> None:
    """Keycloak realm names of the allowed shape pass validate_realm."""
    assert validate_realm(name) == name


@pytest.mark.parametrize("name", ["", "-a", "Master", "a b", "a/b", "a.b", "a" * 101])
def test_realms_rejected(name: str) -> None:
    """Realm names outside ^[a-z0-9][a-z0-9_-]{0,99}$ are rejected."""
    with pytest.raises(InvalidInput):
        validate_realm(name)


@pytest.mark.parametrize("h", ["", "abcde", "abcdefa", "ABCDEF", "abcdeg", " abcde"])
def test_run_hex_rejected(h: str) -> None:
    """A run hex must be exactly 6 lowercase hex digits."""
    with pytest.raises(InvalidInput):
        validate_run_hex(h)


def test_non_strings_rejected() -> None:
    """A non-string (e.g. None from JSON) is InvalidInput, not a TypeError."""
    for validator in (
        validate_recipe,
        validate_ref,
        validate_domain,
        validate_realm,
        validate_run_hex,
        validate_version,
    ):
        with pytest.raises(InvalidInput, match="None"):
            validator(None)  # type: ignore[arg-type]


# --- error messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("validator", "value", "rule"),
    [
        (validate_recipe, "../etc", r"\^\[a-z0-9\]"),
        (validate_ref, "--upload-pack=x", "must not start with '-'"),
        (validate_ref, "$(id)", "only letters, digits"),
        (validate_ref, "a..b", "'\\.\\.'"),
        (validate_version, "1.2", "MAJOR.MINOR.PATCH"),
        (validate_domain, "CI.localhost", "label"),
        (validate_realm, "Master", r"\^\[a-z0-9\]"),
        (validate_run_hex, "xyz", "6 lowercase hex"),
    ],
)
def test_error_messages_name_value_rule_and_hint(validator: object, value: str, rule: str) -> None:
    """Each error names the bad value (repr), the rule it broke and a hint what to do."""
    assert callable(validator)
    with pytest.raises(InvalidInput) as info:
        validator(value)
    message = str(info.value)
    assert repr(value) in message
    assert re.search(rule, message)
    assert re.search(r"; (use|give)", message)


# --- validators: properties -----------------------------------------------------------------

_SAFE = st.text(alphabet="abc123_-", max_size=10)
_BAD_PIECES = st.sampled_from(["/", "..", " ", "\t", "\n", "\x00", "/../", "\u2028"])


@given(_SAFE, _BAD_PIECES, _SAFE)
def test_no_recipe_with_slash_dotdot_or_whitespace(head: str, bad: str, tail: str) -> None:
    """No recipe or realm name with '/', '..' or whitespace is ever accepted."""
    name = head + bad + tail
    with pytest.raises(InvalidInput):
        validate_recipe(name)
    with pytest.raises(InvalidInput):
        validate_realm(name)


@given(st.text(max_size=20))
def test_no_leading_dash_accepted(tail: str) -> None:
    """No recipe, ref, realm or domain starting with '-' is ever accepted."""
    for validator in (validate_recipe, validate_ref, validate_realm, validate_domain):
        with pytest.raises(InvalidInput):
            validator("-" + tail)


@given(_SAFE, st.sampled_from(["..", " ", "\t", "\n", "$(", "`", ";"]), _SAFE)
def test_no_ref_with_dotdot_whitespace_or_shell(head: str, bad: str, tail: str) -> None:
    """No ref with '..', whitespace or shell metacharacters is ever accepted."""
    with pytest.raises(InvalidInput):
        validate_ref(head + bad + tail)


@given(recipes)
def test_every_recipe_regex_name_is_accepted(name: str) -> None:
    """validate_recipe accepts exactly what its documented regex allows."""
    assert validate_recipe(name) == name


# --- domains --------------------------------------------------------------------------------


def test_domain_examples() -> None:
    """The documented examples of both schemes, including the prefix 'warm' → 'wrm'."""
    assert warm_domain(Recipe("keycloak"), BASE) == "warm-keycloak.ci.localhost"
    assert cold_domain(Recipe("keycloak"), RunHex("1a2b3c"), BASE) == "keyc-1a2b3c.ci.localhost"
    assert cold_domain(Recipe("ab"), RunHex("1a2b3c"), BASE) == "ab-1a2b3c.ci.localhost"
    assert cold_domain(Recipe("my_app"), RunHex("1a2b3c"), BASE) == "my-a-1a2b3c.ci.localhost"
    assert cold_domain(Recipe("ab_x"), RunHex("1a2b3c"), BASE) == "ab-x-1a2b3c.ci.localhost"
    assert cold_domain(Recipe("abc-x"), RunHex("1a2b3c"), BASE) == "abc-1a2b3c.ci.localhost"
    assert cold_domain(Recipe("warmup"), RunHex("1a2b3c"), BASE) == "wrm-1a2b3c.ci.localhost"
    assert cold_domain(Recipe("warm-x"), RunHex("abcdef"), BASE) == "wrm-abcdef.ci.localhost"


def test_warm_looking_like_cold_is_warm() -> None:
    """'warm-abcdef.<base>' is the warm app of recipe abcdef, never cold prefix warm + hex."""
    assert parse_domain("warm-abcdef.ci.localhost", BASE) == ParsedDomain("warm", "abcdef", None)
    assert parse_domain("wrm-abcdef.ci.localhost", BASE) == ParsedDomain("cold", "wrm", "abcdef")


@pytest.mark.parametrize(
    "domain",
    [
        "ci.localhost",
        "x.ci.localhost",
        "keyc-1a2b3.ci.localhost",
        "keycl-1a2b3c.ci.localhost",
        "keyc-1A2B3C.ci.localhost",
        "a.keyc-1a2b3c.ci.localhost",
        "keyc-1a2b3c.ci.localhost.",
        "keyc-1a2b3c.other.org",
        "keyc-1a2b3c.xci.localhost",
        "warm-.ci.localhost",
        "warm--x.ci.localhost",
        "WARM-x.ci.localhost",
        "ab--1a2b3c.ci.localhost",
        "",
        "warm-x",
        "-ab-1a2b3c.ci.localhost",
    ],
)
def test_parse_domain_none_for_others(domain: str) -> None:
    """Domains that are neither warm nor cold under the base parse as None."""
    assert parse_domain(domain, BASE) is None


def test_parse_domain_rejects_bad_base() -> None:
    """A bad base domain is an error, not a silent None."""
    with pytest.raises(InvalidInput, match="'CI'"):
        # parse_domain checks its base again itself: what it does with an unparsed one
        parse_domain("warm-x.CI", "CI")  # type: ignore[arg-type]


def test_warm_domain_limits() -> None:
    """A recipe whose warm label is no DNS label (too long, trailing '-') is InvalidInput."""
    assert warm_domain(Recipe("a" * 58), BASE) == f"warm-{'a' * 58}.{BASE}"
    for recipe in ("a" * 59, "ab-", "ab_"):
        with pytest.raises(InvalidInput, match=re.escape(repr(recipe))):
            warm_domain(Recipe(recipe), BASE)


@given(warm_recipes, bases)
def test_warm_round_trip(recipe: Recipe, base: Domain) -> None:
    """parse(warm_domain(r)) is warm with the recipe as label ('_' shown as '-')."""
    domain = warm_domain(recipe, base)
    assert validate_domain(domain) == domain
    assert parse_domain(domain, base) == ParsedDomain("warm", recipe.replace("_", "-"), None)


@given(parsed_recipes, hexes, bases)
def test_cold_round_trip(recipe: Recipe, run: RunHex, base: Domain) -> None:
    """parse(cold_domain(r, hex)) is cold with the recipe's prefix and the same hex."""
    domain = cold_domain(recipe, run, base)
    parsed = parse_domain(domain, base)
    assert parsed == ParsedDomain("cold", cold_prefix(recipe), run)
    prefix = cold_prefix(recipe)
    assert 1 <= len(prefix) <= 4
    assert prefix != "warm"
    assert not prefix.endswith("-")


@given(warm_recipes, parsed_recipes, hexes)
def test_warm_and_cold_never_collide(warm_recipe: Recipe, cold_recipe: Recipe, run: RunHex) -> None:
    """No warm domain equals any cold domain, and each parses as its own kind."""
    warm = warm_domain(warm_recipe, BASE)
    cold = cold_domain(cold_recipe, run, BASE)
    assert warm != cold
    warm_parsed, cold_parsed = parse_domain(warm, BASE), parse_domain(cold, BASE)
    assert warm_parsed is not None and warm_parsed.kind == "warm"
    assert cold_parsed is not None and cold_parsed.kind == "cold"


@given(hexes)
def test_hex_named_recipe_is_warm(run: RunHex) -> None:
    """warm-<6hex> (a recipe named like a hex) always parses as warm, never as cold."""
    parsed = parse_domain(warm_domain(Recipe(run), BASE), BASE)
    assert parsed == ParsedDomain("warm", run, None)


@given(parsed_recipes, hexes)
def test_cold_label_never_reserved(recipe: Recipe, run: RunHex) -> None:
    """Cold labels never hold '--' at positions 3-4 (reserved for IDNA-like labels)."""
    label = cold_domain(recipe, run, BASE).split(".")[0]
    assert label[2:4] != "--"


@given(st.text(max_size=40))
def test_parse_domain_total(text: str) -> None:
    """parse_domain never raises on arbitrary text; it returns a ParsedDomain or None."""
    result = parse_domain(text + "." + BASE, BASE)
    assert result is None or isinstance(result, ParsedDomain)


# --- stacks ---------------------------------------------------------------------------------


def test_stack_name() -> None:
    """Dots become underscores and the name is cut to abra's 45 characters."""
    assert stack_name(Domain("warm-keycloak.ci.example.org")) == "warm-keycloak_ci_example_org"
    long = Domain("warm-" + "a" * 50 + ".ci.localhost")
    assert stack_name(long) == long.replace(".", "_")[:45]
    assert len(stack_name(long)) == MAX_STACK_NAME_LENGTH == 45
    with pytest.raises(InvalidInput):
        stack_name(Domain("not a domain"))


@given(parsed_recipes, hexes)
def test_cold_stacks_are_distinct_per_hex(recipe: Recipe, run: RunHex) -> None:
    """A cold stack name is never cut, so it keeps the run's hex."""
    base = Domain("ci.commoninternet.net")
    assert stack_name(cold_domain(recipe, run, base)).split("_")[0].endswith(run)


# --- run hex and realms ---------------------------------------------------------------------


def test_new_run_hex() -> None:
    """new_run_hex gives 6 lowercase hex digits that validate, and varies."""
    values = {new_run_hex() for _ in range(50)}
    assert all(len(h) == RUN_HEX_LEN and validate_run_hex(h) == h for h in values)
    assert len(values) > 40


def test_realm_examples() -> None:
    """realm_name joins parent and hex; parse_realm splits only that exact shape."""
    assert realm_name("ccci", RunHex("1a2b3c")) == "ccci-1a2b3c"
    assert parse_realm("ccci-1a2b3c") == ("ccci", "1a2b3c")
    assert parse_realm("a-1a2b3c-abcdef") == ("a-1a2b3c", "abcdef")
    assert parse_realm("ccci-1a2b3c", parent="ccci") == ("ccci", "1a2b3c")
    assert parse_realm("other-1a2b3c", parent="ccci") is None
    for name in (
        "master",
        "ccci",
        "ccci-1a2b3",
        "ccci-1A2B3C",
        "ccci_1a2b3c",
        "-1a2b3c",
        "ccci-1a2b3c ",
        "Ccci-1a2b3c",
    ):
        assert parse_realm(name) is None


def test_realm_name_rejects_bad_parts() -> None:
    """Bad parents, bad hexes and too-long results are InvalidInput naming the value."""
    with pytest.raises(InvalidInput, match="'Bad'"):
        realm_name("Bad", RunHex("1a2b3c"))
    with pytest.raises(InvalidInput, match="'xyz'"):
        realm_name("ccci", RunHex("xyz"))
    with pytest.raises(InvalidInput, match="93"):
        realm_name("a" * 94, RunHex("1a2b3c"))


@given(st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,92}\Z"), hexes)
def test_realm_round_trip(parent: str, run: RunHex) -> None:
    """parse_realm(realm_name(p, h)) == (p, h), and the result is a valid realm."""
    name = realm_name(parent, run)
    assert validate_realm(name) == name
    assert parse_realm(name) == (parent, run)
    assert parse_realm(name, parent=parent) == (parent, run)


# --- value types ---------------------------------------------------------------------------

VALUE_CASES = [
    (Recipe, validate_recipe, "custom-html", "../x"),
    (Ref, validate_ref, "1.2.0+1.2", "--upload-pack=x"),
    (Domain, validate_domain, "ci.localhost", "CAPS.ci.localhost"),
    (RunId, validate_run_id, "0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a", "0B6F1D5E"),
    (RunHex, validate_run_hex, "1a2b3c", "1A2B3C"),
]


@pytest.mark.parametrize(("kind", "validate", "good", "bad"), VALUE_CASES)
def test_value_types_are_made_only_by_their_parser(
    kind: type[Parsed], validate: Callable[[str], str], good: str, bad: str
) -> None:
    """A value type accepts what its validator accepts and refuses the rest with the very
    same message; a non-string is refused too."""
    made = kind(good)
    assert isinstance(made, kind) and made == good and kind.parse(good) == made
    with pytest.raises(InvalidInput) as ours:
        kind(bad)
    with pytest.raises(InvalidInput) as theirs:
        validate(bad)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(InvalidInput, match="invalid"):
        kind(3)


def test_a_parsed_value_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passing a value of the type through its constructor returns it as it is: code inside
    that takes a Recipe never re-runs the check."""
    recipe = Recipe("custom-html")

    def refuse(value: object) -> str:
        raise AssertionError(f"checked again: {value!r}")

    monkeypatch.setattr(Recipe, "_check", staticmethod(refuse))
    assert Recipe(recipe) is recipe
    with pytest.raises(AssertionError, match="checked again"):
        Recipe("other")  # plain text still goes through the check


def test_value_types_travel_as_plain_text() -> None:
    """A value is a string wherever one is read: JSON, pickle (same type back), a pydantic
    record (checked by the same rule, dumped as text)."""
    run = RunId("0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a")
    assert json.loads(json.dumps({"run": run})) == {"run": str(run)}
    back = pickle.loads(pickle.dumps(run))
    assert type(back) is RunId and back == run
    assert run.hex == "0b6f1d" and isinstance(run.hex, RunHex)

    class Named(Record):
        recipe: Recipe
        domain: Domain | None = None

    named = Named(recipe="keycloak", domain="warm-keycloak.ci.localhost")  # type: ignore[arg-type]
    assert type(named.recipe) is Recipe and type(named.domain) is Domain
    assert named.to_json() == {"recipe": "keycloak", "domain": "warm-keycloak.ci.localhost"}
    assert all(type(v) is str for v in named.to_json().values())
    with pytest.raises(InvalidInput, match=re.escape("recipe name '../x' is invalid")):
        Named(recipe="../x")  # type: ignore[arg-type]
