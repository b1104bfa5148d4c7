"""App env files (``KEY=VALUE`` lines), shared by the swarm and abra backends."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

_ENV_LINE_RE: Final = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")


def parse_env(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``export`` prefixes, blank lines and ``#`` comments allowed.

    A value in matching single or double quotes loses them; an unquoted value loses a
    trailing `` # comment``; a later key wins.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE_RE.fullmatch(line)
        if match is None:
            continue
        value = match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[match.group(1)] = value
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
