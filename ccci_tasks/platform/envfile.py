"""App env files (``KEY=VALUE`` lines), shared by the swarm and abra backends, and the
compose-style ``${VAR}`` interpolation both env files and compose files use."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

_ENV_LINE_RE: Final = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")
_QUOTED_RE: Final = re.compile(r"""(["'])(.*?)\1(?:\s+#.*)?""")
_VAR_RE: Final = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose-style ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``.

    ``${VAR:?err}``/``${VAR?err}`` give ``""`` when unset (docker reports the error itself).
    """

    def repl(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        value = env.get(name)
        op = match.group("op") or ""
        if op == ":-" and not value:
            return interpolate(match.group("arg"), env)
        if op == "-" and value is None:
            return interpolate(match.group("arg"), env)
        return value or ""

    return _VAR_RE.sub(repl, text)


def referenced(text: str, *, required_only: bool = False) -> list[str]:
    """The variable names ``text`` refers to (``$VAR``, ``${VAR...}``), in order; with
    ``required_only``, not those with a default (``${VAR:-x}``, ``${VAR-x}``)."""
    return [m.group("braced") or m.group("named") for m in _VAR_RE.finditer(text)
            if not m.group("escaped")
            and not (required_only and (m.group("op") or "").endswith("-"))]


def parse_line(line: str) -> tuple[str, str, bool] | None:
    """``(key, value, expandable)`` of one ``KEY=VALUE`` line, None for anything else.

    A value in matching single or double quotes loses them (single quotes: taken literally,
    never expanded); a `` # comment`` after a quoted or an unquoted value is dropped.
    """
    if line.lstrip().startswith("#"):
        return None
    match = _ENV_LINE_RE.fullmatch(line)
    if match is None:
        return None
    value = match.group(2).strip()
    quoted = _QUOTED_RE.fullmatch(value)
    if quoted is not None:
        return match.group(1), quoted.group(2), quoted.group(1) == '"'
    return match.group(1), value.split(" #", 1)[0].strip(), True


def parse_env(text: str, *, expand: bool = False) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``export`` prefixes, blank lines and ``#`` comments allowed.

    A value in matching single or double quotes loses them; an unquoted value loses a
    trailing `` # comment``; a later key wins. ``expand``: ``$VAR``/``${VAR}`` in unquoted
    and double-quoted values are replaced by the value of a key set on an earlier line (as
    dotenv files and abra read them, e.g. ``COMPOSE_FILE="$COMPOSE_FILE:compose.db.yml"``).
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed is None:
            continue
        key, value, expandable = parsed
        values[key] = interpolate(value, values) if expand and expandable else value
    return values


def set_keys(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``KEY=VALUE`` of ``values`` set: replaced in place, else appended.

    Comments and every other line are kept as they are.
    """
    out: list[str] = []
    done: set[str] = set()
    for line in text.splitlines():
        match = _ENV_LINE_RE.fullmatch(line)
        if match is not None and match.group(1) in values and not line.lstrip().startswith("#"):
            key = match.group(1)
            if key not in done:  # a repeated key keeps only its first, now set, line
                out.append(f"{key}={values[key]}")
                done.add(key)
            continue
        out.append(line)
    out.extend(f"{key}={value}" for key, value in values.items() if key not in done)
    return "\n".join(out) + "\n"
