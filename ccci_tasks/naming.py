"""Names of everything: value types for outside strings, and the domain/stack/realm schemes.

Every outside string (recipe, ref, version, domain, realm, run id) is parsed here once, where
it enters; a bad one raises ``InvalidInput`` naming the value, the rule it broke and what to
do, and nothing has been touched yet (R1.3). Recipe names, refs, domains, run ids and run
hexes become ``Recipe``, ``Ref``, ``Domain``, ``RunId`` and ``RunHex`` (``Parsed`` strings,
made only by their parser); code further in takes those types and never re-checks them.

Domain schemes (R1.1)
---------------------
* warm: ``warm-<label>.<base>`` where ``<label>`` is the recipe name with ``_`` mapped to
  ``-`` (``_`` is not allowed in a DNS label). Real Co-op Cloud recipe names never contain
  ``_``, so for them the label *is* the recipe; two recipes differing only in ``_``/``-`` would
  share a warm domain, which ``warm_domain`` cannot tell apart (avoid such names).
* cold: ``<prefix>-<6hex>.<base>``. ``<prefix>`` is ``recipe[:4]`` with ``_`` mapped to ``-``
  and trailing ``-`` stripped (so the label never holds ``--`` at positions 3-4, which DNS
  reserves for IDNA-style labels such as ``xn--``), except that the prefix ``warm`` is
  replaced by ``wrm``: recipe ``warmup`` runs cold at ``wrm-1a2b3c.<base>``.

Why the two never mix up, by construction and by parser:

* ``parse_domain`` treats every label starting with ``warm-`` as warm, always.
* a cold label starts with its prefix; the prefix has at most 4 characters and is never
  ``warm``, so no cold label starts with ``warm-``.
* hence ``warm-abcdef.<base>`` (warm app of recipe ``abcdef``) can never be a cold domain,
  although it looks like prefix ``warm`` + hex ``abcdef``.

Recipe names may themselves start with ``warm-`` (``warm-x`` is a valid recipe name): its warm
domain is ``warm-warm-x.<base>`` and its cold prefix is ``warm`` → ``wrm``; both parse right,
so such names need not be rejected.

The cold prefix is informational (many recipes share their first four characters); the
run hex is what makes a cold domain unique.

Stack names follow abra: the domain with dots turned into underscores, cut to
``MAX_STACK_NAME_LENGTH`` = 45 characters (abra's ``MAX_SANITISED_APP_NAME_LENGTH``, which
keeps ``<stack>_<service>`` names within Docker's limits). A cold label has at most 11
characters, so cold stacks are never cut for a base domain of up to 33 characters.

Per-run Keycloak realms are ``<parent>-<6hex>`` with the hex of the run (R1.2).
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal, Self

from pydantic_core import core_schema

from ccci_tasks.errors import InvalidInput
from ccci_tasks.versions import is_version, parse_version

__all__ = [
    "MAX_STACK_NAME_LENGTH",
    "RUN_HEX_LEN",
    "Domain",
    "ParsedDomain",
    "Recipe",
    "Ref",
    "RunHex",
    "RunId",
    "cold_domain",
    "cold_prefix",
    "new_run_hex",
    "parse_domain",
    "parse_realm",
    "realm_name",
    "stack_name",
    "validate_domain",
    "validate_realm",
    "validate_recipe",
    "validate_ref",
    "validate_run_hex",
    "validate_run_id",
    "validate_version",
    "warm_domain",
]

RUN_HEX_LEN: Final = 6
MAX_STACK_NAME_LENGTH: Final = 45  # abra's MAX_SANITISED_APP_NAME_LENGTH
MAX_REF_LENGTH: Final = 200
MAX_DOMAIN_LENGTH: Final = 253
MAX_REALM_LENGTH: Final = 100

WARM_PREFIX: Final = "warm-"
_COLD_PREFIX_LEN: Final = 4
_COLD_PREFIX_REPLACEMENTS: Final = {"warm": "wrm"}

_RECIPE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_RUN_HEX_RE: Final = re.compile(r"[0-9a-f]{6}")
_REALM_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SHA_RE: Final = re.compile(r"[0-9a-fA-F]{7,40}")
_REF_CHARS_RE: Final = re.compile(r"[A-Za-z0-9._/-]+")
_COLD_LABEL_RE: Final = re.compile(r"([a-z0-9](?:[a-z0-9-]{0,2}[a-z0-9])?)-([0-9a-f]{6})")
_REALM_SHAPE_RE: Final = re.compile(r"([a-z0-9][a-z0-9_-]{0,92})-([0-9a-f]{6})")


def _invalid(what: str, value: object, rule: str, hint: str) -> InvalidInput:
    """An ``InvalidInput`` that names the value, the rule it broke and what to do."""
    return InvalidInput(f"{what} {value!r} is invalid: {rule}; {hint}")


def _require_str(what: str, value: object, hint: str) -> str:
    if not isinstance(value, str):
        raise _invalid(what, value, f"expected a string, got {type(value).__name__}", hint)
    return value


# --- validators -------------------------------------------------------------------------


def validate_recipe(name: str) -> str:
    """Return ``name`` if it is a Co-op Cloud recipe name, else raise ``InvalidInput``.

    Rule: ``^[a-z0-9][a-z0-9_-]{0,62}$`` - lowercase letters, digits, ``-`` and ``_``, not
    starting with ``-`` or ``_``, at most 63 characters. This excludes ``/``, ``..``,
    whitespace, control characters and shell metacharacters.
    """
    hint = "use the recipe's repository name as in the Co-op Cloud catalogue, e.g. 'keycloak'"
    _require_str("recipe name", name, hint)
    if not _RECIPE_RE.fullmatch(name):
        raise _invalid(
            "recipe name",
            name,
            "it must match ^[a-z0-9][a-z0-9_-]{0,62}$ (lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters)",
            hint,
        )
    return name


def validate_ref(ref: str) -> str:
    """Return ``ref`` if it is a commit sha or a safe git ref name, else raise ``InvalidInput``.

    Accepted: a 7-40 character hex sha, or a ref name of ``[A-Za-z0-9._/-]`` at most 200
    characters that does not start with ``-``, ``/`` or ``.``, holds no ``..``, ``//``, no
    path component starting with ``.`` or ending in ``.lock``, and does not end in ``/``,
    ``.`` or ``.lock``. So ``--upload-pack=x`` (an option) and ``$(id)`` (a shell
    substitution) are rejected. A Co-op Cloud version tag (``1.2.0+1.2``, see
    ``validate_version``) is a ref too: the ``+`` is part of every such tag.
    """
    what = "git ref"
    hint = ("give a commit sha (7-40 hex digits), a branch/tag name such as 'main' or "
            "'pr/12', or a version tag such as '1.2.0+1.2'")
    _require_str(what, ref, hint)
    if _SHA_RE.fullmatch(ref) or (len(ref) <= MAX_REF_LENGTH and is_version(ref)):
        return ref
    rule: str | None = None
    if not ref:
        rule = "it is empty"
    elif len(ref) > MAX_REF_LENGTH:
        rule = f"it is longer than {MAX_REF_LENGTH} characters"
    elif ref[0] in "-/.":
        rule = "it must not start with '-', '/' or '.' (a leading '-' would read as an option)"
    elif not _REF_CHARS_RE.fullmatch(ref):
        rule = "only letters, digits, '.', '_', '/' and '-' are allowed"
    elif ".." in ref or "//" in ref:
        rule = "it must not contain '..' or '//'"
    elif ref.endswith(("/", ".", ".lock")):
        rule = "it must not end in '/', '.' or '.lock'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/")):
        rule = "no path component may start with '.' or end in '.lock'"
    if rule is not None:
        raise _invalid(what, ref, rule, hint)
    return ref


def validate_version(v: str) -> str:
    """Return ``v`` if it is a Co-op Cloud version, else raise ``InvalidInput``.

    ``<semver>+<upstream>`` (e.g. ``1.7.1+1.27.2``, ``5.0.3+27.0.1-fpm``) where upstream is
    ``[A-Za-z0-9._-]+`` not starting with ``-`` or ``.``. A plain semver without ``+`` is
    accepted too: some recipes tag releases that way. See ``ccci_tasks.versions``.
    """
    parse_version(v)
    return v


def validate_domain(d: str) -> str:
    """Return ``d`` if it is a lowercase DNS name of 2+ labels, else raise ``InvalidInput``.

    Labels match ``[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?``; the name is at most 253
    characters; the last label is not all digits (so IP addresses are rejected);
    ``ci.localhost`` passes. No trailing dot.
    """
    what = "domain"
    hint = "give a lowercase DNS name such as 'ci.example.org' (no scheme, port or trailing dot)"
    _require_str(what, d, hint)
    labels = d.split(".")
    rule: str | None = None
    if len(d) > MAX_DOMAIN_LENGTH:
        rule = f"it is longer than {MAX_DOMAIN_LENGTH} characters"
    elif len(labels) < 2:
        rule = "it needs at least two labels, e.g. 'ci.localhost'"
    elif not all(_LABEL_RE.fullmatch(label) for label in labels):
        rule = (
            "every dot-separated label must match [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])? "
            "(lowercase letters, digits and inner '-', 1-63 characters)"
        )
    elif labels[-1].isdigit():
        rule = "the last label must not be all digits (IP addresses are not domains)"
    if rule is not None:
        raise _invalid(what, d, rule, hint)
    return d


def validate_realm(name: str) -> str:
    """Return ``name`` if it is a Keycloak realm name ``^[a-z0-9][a-z0-9_-]{0,99}$``."""
    hint = "use lowercase letters, digits, '-' and '_', e.g. 'ccci' or 'ccci-1a2b3c'"
    _require_str("realm name", name, hint)
    if not _REALM_RE.fullmatch(name):
        raise _invalid(
            "realm name",
            name,
            "it must match ^[a-z0-9][a-z0-9_-]{0,99}$ (start with a letter or digit, "
            "at most 100 characters)",
            hint,
        )
    return name


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a run id: a Celery task id, i.e. a UUID in canonical
    lowercase form (``0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a``)."""
    if isinstance(run_id, str):
        try:
            if str(uuid.UUID(run_id)) == run_id:
                return run_id
        except ValueError:
            pass
    raise InvalidInput(
        f"run id {run_id!r} is invalid: expected a Celery task id (a lowercase UUID such as "
        "'0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a'); see `ccci runs list`"
    )


def validate_run_hex(h: str) -> str:
    """Return ``h`` if it is a run id: exactly 6 lowercase hex digits."""
    hint = "use the 6-hex run id of a cold run, as made by new_run_hex(), e.g. '1a2b3c'"
    _require_str("run hex", h, hint)
    if not _RUN_HEX_RE.fullmatch(h):
        raise _invalid("run hex", h, "it must be exactly 6 lowercase hex digits [0-9a-f]", hint)
    return h


# --- value types --------------------------------------------------------------------------


class Parsed(str):
    """A string that passed its check: made only by ``Type(text)`` / ``Type.parse(text)``,
    which raise ``InvalidInput`` like the matching ``validate_*`` function. Code inside takes
    the type and never re-checks; ``mypy --strict`` refuses a plain ``str`` where one is due.
    Being a ``str``, a value goes into paths, JSON, Redis and Celery arguments unchanged."""

    __slots__ = ()

    @staticmethod
    def _check(value: Any) -> object:
        """Raise ``InvalidInput`` unless ``value`` is good text for this type."""
        raise NotImplementedError

    def __new__(cls, value: object) -> Self:
        if type(value) is cls:
            return value  # already parsed: no second check
        cls._check(value)
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, value: object) -> Self:
        """``value`` as this type, or ``InvalidInput`` naming it and the rule it broke."""
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: object) -> Any:
        """In a pydantic record the field is checked by the same rule and stored as text."""
        return core_schema.no_info_plain_validator_function(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(str))


class Recipe(Parsed):
    """A Co-op Cloud recipe name (``validate_recipe``)."""

    __slots__ = ()
    @staticmethod
    def _check(value: Any) -> object:
        return validate_recipe(value)


class Ref(Parsed):
    """A commit sha, a safe git ref name or a version tag (``validate_ref``)."""

    __slots__ = ()
    @staticmethod
    def _check(value: Any) -> object:
        return validate_ref(value)


class Domain(Parsed):
    """A lowercase DNS name of two or more labels (``validate_domain``)."""

    __slots__ = ()
    @staticmethod
    def _check(value: Any) -> object:
        return validate_domain(value)


class RunId(Parsed):
    """A run id: a Celery task id, a canonical lowercase uuid (``validate_run_id``)."""

    __slots__ = ()
    @staticmethod
    def _check(value: Any) -> object:
        return validate_run_id(value)

    @property
    def hex(self) -> RunHex:
        """The run's 6-hex id (cold domains, realms): the uuid's first six hex digits."""
        return RunHex(self[:RUN_HEX_LEN])


class RunHex(Parsed):
    """The 6-hex id of a run (``validate_run_hex``)."""

    __slots__ = ()
    @staticmethod
    def _check(value: Any) -> object:
        return validate_run_hex(value)


def new_run_hex() -> RunHex:
    """A fresh random run id: 6 lowercase hex digits from ``secrets``."""
    return RunHex(secrets.token_hex(RUN_HEX_LEN // 2))


# --- domains ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedDomain:
    """What ``parse_domain`` recognised.

    ``label``: for warm, the recipe as it appears in the domain (``_`` shown as ``-``); for
    cold, the prefix of up to 4 characters. ``run``: the 6-hex run id of a cold app.
    """

    kind: Literal["warm", "cold"]
    label: str
    run: str | None


def cold_prefix(recipe: Recipe) -> str:
    """The prefix of ``recipe``'s cold domains: ``recipe[:4]``, ``_``→``-``, never ``warm``."""
    prefix = Recipe(recipe)[:_COLD_PREFIX_LEN].replace("_", "-").rstrip("-")
    return _COLD_PREFIX_REPLACEMENTS.get(prefix, prefix)


def warm_domain(recipe: Recipe, base_domain: Domain) -> Domain:
    """``warm-<recipe>.<base>`` (``_`` in the recipe becomes ``-``).

    Raises ``InvalidInput`` when the result is no valid domain: the recipe ends in ``-``/``_``
    or is longer than 58 characters (a DNS label holds 63), or the whole is too long.
    """
    label = WARM_PREFIX + Recipe(recipe).replace("_", "-")
    Domain(base_domain)
    if not _LABEL_RE.fullmatch(label):
        raise _invalid(
            "recipe name",
            recipe,
            f"its warm domain label {label!r} is not a DNS label (at most 63 characters, "
            "not ending in '-')",
            "warm canonicals need a recipe name of at most 58 characters not ending in '-'/'_'",
        )
    return Domain(f"{label}.{base_domain}")


def cold_domain(recipe: Recipe, run_hex: RunHex, base_domain: Domain) -> Domain:
    """``<prefix>-<6hex>.<base>`` with the prefix of ``cold_prefix``."""
    prefix = cold_prefix(recipe)
    return Domain(f"{prefix}-{RunHex(run_hex)}.{Domain(base_domain)}")


def parse_domain(domain: str, base_domain: Domain) -> ParsedDomain | None:
    """Recognise a warm or cold domain under ``base_domain``; ``None`` for anything else.

    Exactly one label must precede the base. A label starting with ``warm-`` is warm, always;
    otherwise it is cold only if it is ``<prefix>-<6hex>`` with a prefix ``cold_prefix`` can
    produce. Matching is exact (lowercase, no trailing dot).
    """
    Domain(base_domain)
    if not isinstance(domain, str):
        return None
    suffix = "." + base_domain
    if not domain.endswith(suffix):
        return None
    label = domain[: -len(suffix)]
    if "." in label or not _LABEL_RE.fullmatch(label):
        return None
    if label.startswith(WARM_PREFIX):
        recipe_label = label[len(WARM_PREFIX) :]
        if not _RECIPE_RE.fullmatch(recipe_label):
            return None
        return ParsedDomain("warm", recipe_label, None)
    match = _COLD_LABEL_RE.fullmatch(label)
    if match is None or match.group(1) in _COLD_PREFIX_REPLACEMENTS:
        return None
    return ParsedDomain("cold", match.group(1), match.group(2))


def stack_name(domain: Domain) -> str:
    """The Docker stack of an app: dots → underscores, cut to 45 characters like abra."""
    return Domain(domain).replace(".", "_")[:MAX_STACK_NAME_LENGTH]


# --- realms -----------------------------------------------------------------------------


def realm_name(parent: str, run_hex: RunHex) -> str:
    """The per-run realm ``<parent>-<6hex>``; the parent is at most 93 characters."""
    validate_realm(parent)
    name = f"{parent}-{RunHex(run_hex)}"
    if len(name) > MAX_REALM_LENGTH:
        raise _invalid(
            "realm parent",
            parent,
            f"'<parent>-<6hex>' would exceed {MAX_REALM_LENGTH} characters",
            "use a parent realm name of at most 93 characters",
        )
    return name


def parse_realm(name: str, parent: str | None = None) -> tuple[str, str] | None:
    """``(parent, hex)`` for a per-run realm ``<parent>-<6hex>``, else ``None``.

    With ``parent`` given, only realms of that parent match. Realms such as ``master`` or
    an operator's own are never of this shape, so the reaper never touches them (R3.2).
    """
    if not isinstance(name, str):
        return None
    match = _REALM_SHAPE_RE.fullmatch(name)
    if match is None:
        return None
    if parent is not None and match.group(1) != parent:
        return None
    return match.group(1), match.group(2)
