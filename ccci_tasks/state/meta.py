"""Per-recipe CI config ``<tests_dir>/<recipe>/recipe_meta.py``, read with ``ast``, never run.

Only top-level literal assignments count (``KEY = <literal>``, evaluated with
``ast.literal_eval``); a module docstring is allowed. Names that start with a lowercase letter
or ``_`` are ignored. Anything else at top level (imports, calls, functions, ``if``) is a
``ConfigError``, and so is an unknown key (with a "did you mean" hint), a non-literal value
or a wrong type; every message names the file, the key and what was expected.
"""

from __future__ import annotations

import ast
import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ccci_tasks.errors import ConfigError, InvalidInput
from ccci_tasks.naming import Recipe

log = logging.getLogger(__name__)

META_FILE: Final = "recipe_meta.py"
NEVER_HEALTHY: Final = 404  # a proxy's fallback answer: never proof that the app serves


@dataclass(frozen=True)
class RecipeMeta:
    """A recipe's CI settings; the defaults apply when the file or a key is missing."""

    warm_canonical: bool = False
    health_path: str = "/"
    health_ok: tuple[int, ...] = (200, 301, 302)
    deploy_timeout: int = 600
    http_timeout: int = 300
    deps: tuple[Recipe, ...] = ()
    # Live-warm apps only: snapshot the data volumes before an upgrade, restore on rollback.
    stateful: bool = False


class _Bad(ValueError):
    """A value of the wrong type or shape; the message says what was expected."""


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("expected a bool (True or False)")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(
        ch.isspace() or ord(ch) < 32 for ch in value
    ):
        raise _Bad('expected a str: a URL path starting with "/", without spaces')
    return value


def _seconds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Bad("expected an int: a positive number of seconds")
    return value


def _statuses(value: Any) -> tuple[int, ...]:
    expected = "expected a non-empty list of int HTTP status codes (100-599), e.g. [200, 302]"
    if not isinstance(value, list | tuple) or not value:
        raise _Bad(expected)
    codes: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 100 <= item <= 599:
            raise _Bad(f"{expected}; got {item!r}")
        if item == NEVER_HEALTHY:
            raise _Bad(
                f"{expected}; 404 is refused: it is what a proxy answers for an unknown app, "
                "so it never proves the app is serving"
            )
        codes.append(item)
    return tuple(dict.fromkeys(codes))


def _deps(value: Any) -> tuple[Recipe, ...]:
    expected = 'expected a list of str app names, e.g. ["keycloak"]'
    if not isinstance(value, list | tuple):
        raise _Bad(expected)
    names: list[Recipe] = []
    for item in value:
        if not isinstance(item, str):
            raise _Bad(f"{expected}; got {item!r}")
        try:
            names.append(Recipe(item))
        except InvalidInput as exc:
            raise _Bad(f"{expected}; {exc}") from exc
    return tuple(dict.fromkeys(names))


# key in the file -> (RecipeMeta field, converter)
_KEYS: Final[dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "WARM_CANONICAL": ("warm_canonical", _bool),
    "HEALTH_PATH": ("health_path", _path),
    "HEALTH_OK": ("health_ok", _statuses),
    "DEPLOY_TIMEOUT": ("deploy_timeout", _seconds),
    "HTTP_TIMEOUT": ("http_timeout", _seconds),
    "DEPS": ("deps", _deps),
    "STATEFUL": ("stateful", _bool),
}
KNOWN_KEYS: Final = tuple(_KEYS)


def _is_key(name: str) -> bool:
    """Keys start with an uppercase letter; ``lower`` and ``_private`` names are ignored."""
    return name[:1].isupper()


def _unknown_key(path: Path, key: str, line: int) -> ConfigError:
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(KNOWN_KEYS)}"
    return ConfigError(f"{path}:{line}: unknown key {key!r}; {hint}")


def _target(path: Path, node: ast.stmt) -> tuple[str, ast.expr] | None:
    """``(name, value)`` of a top-level assignment, ``None`` for a docstring; else raise."""
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return None
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        if isinstance(target, ast.Name):
            return target.id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
        return node.target.id, node.value
    raise ConfigError(
        f"{path}:{node.lineno}: only top-level literal assignments (KEY = <literal>) are "
        f"allowed in {META_FILE}, found {type(node).__name__}; this file is read, never executed"
    )


def parse_meta(path: Path, source: bytes | str) -> RecipeMeta:
    """Parse the text of a recipe_meta.py file; ``path`` is used in messages only."""
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid Python: {exc}") from exc
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for node in tree.body:
        found = _target(path, node)
        if found is None:
            continue
        name, value_node = found
        if not _is_key(name):
            continue
        if name not in _KEYS:
            raise _unknown_key(path, name, node.lineno)
        if name in lines:
            raise ConfigError(
                f"{path}:{node.lineno}: key {name!r} is assigned twice "
                f"(first on line {lines[name]}); keep one"
            )
        field_name, convert = _KEYS[name]
        try:
            literal = ast.literal_eval(value_node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ConfigError(
                f"{path}:{node.lineno}: key {name!r} must be a literal value "
                "(no names, calls or expressions)"
            ) from exc
        try:
            values[field_name] = convert(literal)
        except _Bad as exc:
            raise ConfigError(
                f"{path}:{node.lineno}: key {name!r}: {exc}; got {literal!r} "
                f"({type(literal).__name__})"
            ) from exc
        lines[name] = node.lineno
    return RecipeMeta(**values)


def meta_path(tests_dir: Path, recipe: Recipe) -> Path:
    return Path(tests_dir) / recipe / META_FILE


def load_meta(tests_dir: Path, recipe: Recipe) -> RecipeMeta:
    """The CI settings of ``recipe``; the defaults when it has no recipe_meta.py."""
    path = meta_path(tests_dir, recipe)
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        return RecipeMeta()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_meta(path, source)


def enrolled_recipes(tests_dir: Path) -> list[Recipe]:
    """Recipes with ``WARM_CANONICAL = True``, sorted.

    A missing tests dir or a bad recipe_meta.py is a ``ConfigError`` rather than "nothing is
    enrolled": ``prune_stale`` deletes the warm data of recipes that are not enrolled.
    """
    root = Path(tests_dir)
    if not root.is_dir():
        raise ConfigError(
            f"tests dir {root} does not exist or is not a directory; set CCCI_TESTS_DIR to the "
            "folder holding <recipe>/recipe_meta.py"
        )
    enrolled: list[Recipe] = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith((".", "_")):
            continue
        try:
            recipe = Recipe(child.name)
        except InvalidInput:
            log.warning("ignoring %s: its name is not a recipe name", child)
            continue
        if load_meta(root, recipe).warm_canonical:
            enrolled.append(recipe)
    return enrolled
