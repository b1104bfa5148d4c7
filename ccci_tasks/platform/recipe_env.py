"""What a recipe's env declares, read strictly: ``.env.sample`` (or an app's env file made
from it) and the version variables of ``abra.sh``.

Co-op Cloud recipes declare in their env (INTERFACES "Real-shaped recipes"):

* ``COMPOSE_FILE="compose.yml:compose.db.yml"``: the compose files, ``:``-separated (default
  ``compose.yml``); a later line may extend it (``COMPOSE_FILE="$COMPOSE_FILE:compose.x.yml"``);
* ``SECRET_<NAME>_VERSION=<v>``, optionally followed by ``# length=N``: a Docker secret
  ``<STACK_NAME>_<name>_<v>`` (``<name>`` lowercased) with a random value of N characters
  (default 32) that the platform generates once per app;
* ``CCCI_<NAME>_PORT``: a loopback port the platform allocates once per app (besides
  ``CCCI_HTTP_PORT``), e.g. for a database on the host network.

Every line is checked: a line that is neither blank, a comment nor ``KEY=VALUE``, a secret
version that is not a plain word, a malformed ``length``, a ``COMPOSE_FILE`` entry that is no
compose file name: ``InvalidInput`` naming the file and the line, before anything is done.
``abra.sh`` is a shell script that is never run: only its ``export <NAME>_VERSION=<value>``
lines are read (the config and secret versions of that recipe version); the rest (shell
functions for abra's commands) is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ccci_tasks.errors import InvalidInput
from ccci_tasks.platform.envfile import interpolate, parse_line

__all__ = [
    "DEFAULT_COMPOSE_FILE",
    "DEFAULT_SECRET_LENGTH",
    "HTTP_PORT_KEY",
    "RecipeEnv",
    "SecretDecl",
    "read_abra_sh",
    "read_recipe_env",
]

DEFAULT_COMPOSE_FILE: Final = "compose.yml"
DEFAULT_SECRET_LENGTH: Final = 32
MAX_SECRET_LENGTH: Final = 4096
HTTP_PORT_KEY: Final = "CCCI_HTTP_PORT"

_SECRET_KEY_RE: Final = re.compile(r"SECRET_([A-Z0-9][A-Z0-9_]*)_VERSION")
_PORT_KEY_RE: Final = re.compile(r"CCCI_[A-Z0-9][A-Z0-9_]*_PORT")
_WORD_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_LENGTH_RE: Final = re.compile(r"length\s*=\s*(\S*)")
_COMPOSE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.ya?ml")
_ABRA_EXPORT_RE: Final = re.compile(r"\s*export\s+([A-Za-z_][A-Za-z0-9_]*_VERSION)=(.*)")


@dataclass(frozen=True)
class SecretDecl:
    """One ``SECRET_<NAME>_VERSION`` line: the secret ``<stack>_<name>_<version>``."""

    key: str  # SECRET_DB_PASSWORD_VERSION
    name: str  # db_password
    version: str  # v1 (as declared; a deploy may take it from abra.sh)
    length: int
    line: int

    def docker_name(self, stack: str, version: str | None = None) -> str:
        return f"{stack}_{self.name}_{version or self.version}"


@dataclass(frozen=True)
class RecipeEnv:
    """The values of an env (expanded, later lines win) and what they declare."""

    values: dict[str, str]
    secrets: tuple[SecretDecl, ...]
    port_keys: tuple[str, ...]  # CCCI_<NAME>_PORT keys, CCCI_HTTP_PORT first
    compose_files: tuple[str, ...]
    compose_line: int | None  # the (last) line that sets COMPOSE_FILE

    def secret(self, key: str) -> SecretDecl | None:
        return next((s for s in self.secrets if s.key == key), None)


def _bad(where: str, number: int, line: str, why: str) -> InvalidInput:
    shown = line.strip()
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return InvalidInput(f"{where} line {number}: {why}: {shown!r}")


def _secret(key: str, value: str, line: str, number: int, where: str) -> SecretDecl:
    match = _SECRET_KEY_RE.fullmatch(key)
    assert match is not None
    if not _WORD_RE.fullmatch(value):
        raise _bad(where, number, line, f"{key} must be a version word such as v1 "
                                        "(letters, digits, '.', '_', '-')")
    length = DEFAULT_SECRET_LENGTH
    comment = line.split("#", 1)[1] if "#" in line.split("=", 1)[1] else ""
    found = _LENGTH_RE.search(comment)
    if found is not None:
        text = found.group(1)
        if not text.isdigit() or not 1 <= int(text) <= MAX_SECRET_LENGTH:
            raise _bad(where, number, line, f"'# length=N' needs a whole number from 1 to "
                                            f"{MAX_SECRET_LENGTH}, got {text!r}")
        length = int(text)
    elif "length" in comment:
        raise _bad(where, number, line, "write the secret's length as '# length=N'")
    return SecretDecl(key=key, name=match.group(1).lower(), version=value, length=length,
                      line=number)


def read_recipe_env(text: str, where: str) -> RecipeEnv:
    """Read ``text`` (an ``.env.sample`` or an app's env file) strictly; see the module
    docstring. ``where`` names the file in errors ("notes-pg 1.2.0+1.2: .env.sample")."""
    values: dict[str, str] = {}
    secrets: dict[str, SecretDecl] = {}
    ports: list[str] = []
    compose_line: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parsed = parse_line(line)
        if parsed is None:
            raise _bad(where, number, line, "not a KEY=VALUE line, a comment or blank")
        key, value, expandable = parsed
        value = interpolate(value, values) if expandable else value
        values[key] = value
        if _SECRET_KEY_RE.fullmatch(key):
            secrets[key] = _secret(key, value, line, number, where)
        elif _PORT_KEY_RE.fullmatch(key) and key != HTTP_PORT_KEY and key not in ports:
            if value and not value.isdigit():
                raise _bad(where, number, line, f"{key} is a port: a number or empty")
            ports.append(key)
        elif key == "COMPOSE_FILE":
            compose_line = number
            for name in value.split(":"):
                if name and not _COMPOSE_NAME_RE.fullmatch(name):
                    raise _bad(where, number, line, f"COMPOSE_FILE entry {name!r} is not a "
                                                    "compose file name such as compose.db.yml")
    names = values.get("COMPOSE_FILE", DEFAULT_COMPOSE_FILE).split(":")
    compose = tuple(dict.fromkeys(n for n in names if n)) or (DEFAULT_COMPOSE_FILE,)
    return RecipeEnv(values=values, secrets=tuple(secrets.values()),
                     port_keys=(HTTP_PORT_KEY, *ports), compose_files=compose,
                     compose_line=compose_line)


def read_abra_sh(text: str, where: str) -> dict[str, str]:
    """The ``export <NAME>_VERSION=<value>`` lines of an ``abra.sh``; a value that is not a
    plain word (a command substitution, a variable) is refused naming the file and line."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _ABRA_EXPORT_RE.fullmatch(line)
        if match is None:
            continue
        raw = match.group(2).split(" #", 1)[0].strip()
        value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
        if not _WORD_RE.fullmatch(value):
            raise _bad(where, number, line, f"{match.group(1)} must be a plain version word "
                                            "such as v2 (abra.sh is read, never run)")
        found[match.group(1)] = value
    return found
