"""A recipe's compose files, loaded with line numbers and checked before anything deploys.

``docker stack deploy -c a.yml -c b.yml`` merges the files itself (later files extend or
override services and top-level objects); the swarm platform passes every file of
``COMPOSE_FILE`` that way. Before it does, ``check_stack`` refuses, naming the compose file
and the line, what would fail half-way or do harm:

* an external secret whose ``name`` uses a ``${SECRET_<NAME>_VERSION}`` the app's env does not
  declare (or no such variable at all: the platform could not create it);
* a service that uses a secret or config no file declares;
* a config or secret ``file:`` that is absolute, leaves the recipe tree (``..``, a symlink) or
  does not exist: the file is uploaded into the stack, and only the recipe's own files may be;
* a config or secret ``name`` that uses a variable neither the env nor ``abra.sh`` sets (the
  name would end in ``_`` and the next change of the file would collide with it).

It returns the secrets the platform must create (``NeededSecret``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import yaml

from ccci_tasks.errors import InvalidInput, PlatformError
from ccci_tasks.platform.envfile import interpolate, referenced
from ccci_tasks.platform.recipe_env import RecipeEnv, SecretDecl

__all__ = ["ComposeFile", "NeededSecret", "check_stack", "load_compose"]

MAX_SECRET_NAME: Final = 64  # Docker's limit on secret and config names
_OBJECTS: Final = ("secrets", "configs")


@dataclass(frozen=True)
class ComposeFile:
    name: str
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int]  # (section, key[, field]) -> 1-based line

    def line(self, *path: str) -> int | None:
        return self.lines.get(path)

    def where(self, *path: str) -> str:
        number = self.line(*path)
        return f"{self.name} line {number}" if number else self.name


@dataclass(frozen=True)
class NeededSecret:
    docker_name: str
    decl: SecretDecl


def _lines(node: yaml.Node) -> dict[tuple[str, ...], int]:
    """Lines of the top-level objects (secrets, configs, services) and of their fields."""
    found: dict[tuple[str, ...], int] = {}
    if not isinstance(node, yaml.MappingNode):
        return found
    for section_key, section in node.value:
        if not isinstance(section, yaml.MappingNode):
            continue
        for key, value in section.value:
            path = (str(section_key.value), str(key.value))
            found[path] = key.start_mark.line + 1
            if isinstance(value, yaml.MappingNode):
                for field_key, _ in value.value:
                    found[(*path, str(field_key.value))] = field_key.start_mark.line + 1
    return found


def load_compose(tree: Path, name: str) -> ComposeFile:
    """``<tree>/<name>`` parsed, with the lines of its objects."""
    path = tree / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{name} is not in the recipe (COMPOSE_FILE names it); add it to "
                           "the recipe or remove it from COMPOSE_FILE") from None
    try:
        loaded = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PlatformError(f"{name} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict) or not isinstance(loaded.get("services"), dict):
        raise PlatformError(f"{name} is no compose file: it has no 'services' mapping")
    return ComposeFile(name, cast(dict[str, Any], loaded), _lines(node) if node else {})


def _inside(tree: Path, raw: str, where: str, what: str) -> None:
    if Path(raw).is_absolute():
        raise InvalidInput(f"{where}: {what} file {raw!r} is an absolute path; only files of "
                           "the recipe (relative paths) may go into the stack")
    root = tree.resolve()
    target = (tree / raw).resolve()
    if not target.is_relative_to(root):
        raise InvalidInput(f"{where}: {what} file {raw!r} is outside the recipe; only the "
                           "recipe's own files may go into the stack")
    if not target.is_file():
        raise InvalidInput(f"{where}: {what} file {raw!r} is not in the recipe")


def _entries(service: Any, section: str) -> list[str]:
    """The object names a service uses (short ``- name`` or long ``- source: name`` form)."""
    found = []
    for item in (service or {}).get(section) or []:
        source = item.get("source") if isinstance(item, dict) else item
        if source is not None:
            found.append(str(source))
    return found


def check_stack(
    files: list[ComposeFile], *, env: Mapping[str, str], declared: RecipeEnv, stack: str,
    tree: Path,
) -> list[NeededSecret]:
    """Check the compose files of one deploy (see the module docstring); the secrets the
    platform must create. ``env`` is what the deploy interpolates with."""
    defined: dict[str, set[str]] = {section: set() for section in _OBJECTS}
    needed: dict[str, NeededSecret] = {}
    for compose in files:
        for section in _OBJECTS:
            objects = compose.data.get(section) or {}
            if not isinstance(objects, dict):
                raise PlatformError(f"{compose.name}: '{section}' must be a mapping")
            for key, raw in objects.items():
                obj = raw or {}
                where = compose.where(section, str(key), "name") if "name" in obj else \
                    compose.where(section, str(key))
                defined[section].add(str(key))
                if obj.get("file") is not None:
                    _inside(tree, str(obj["file"]), compose.where(section, str(key), "file"),
                            section[:-1])
                name = str(obj.get("name") or "")
                unset = [v for v in referenced(name, required_only=True) if v not in env]
                if section == "secrets" and obj.get("external"):
                    secret = _external(str(key), name, unset, where, env, declared, stack)
                    needed[secret.docker_name] = secret
                elif unset:
                    raise InvalidInput(f"{where}: {section[:-1]} {key!r} is named with "
                                       f"${{{unset[0]}}}, which neither the app's env nor the "
                                       "recipe's abra.sh sets")
    for compose in files:
        for service_name, service in (compose.data.get("services") or {}).items():
            for section in _OBJECTS:
                for used in _entries(service, section):
                    if used not in defined[section]:
                        raise InvalidInput(
                            f"{compose.where('services', str(service_name))}: service "
                            f"{service_name} uses {section[:-1]} {used!r}, which no compose "
                            f"file declares under '{section}'")
    return list(needed.values())


def _external(key: str, name: str, unset: list[str], where: str, env: Mapping[str, str],
              declared: RecipeEnv, stack: str) -> NeededSecret:
    """The secret an ``external: true`` declaration names, if the env declares it."""
    versions = [v for v in referenced(name) if v.startswith("SECRET_") and
                v.endswith("_VERSION")]
    decl = declared.secret(versions[0]) if len(versions) == 1 else None
    if decl is None:
        hint = (f"${{{versions[0]}}}" if versions else "no ${SECRET_<NAME>_VERSION}")
        raise InvalidInput(
            f"{where}: external secret {key!r} is named {name!r} with {hint}, which the app's "
            "env does not declare; add a line such as "
            f"SECRET_{key.upper()}_VERSION=v1 to .env.sample (the platform creates the secret)")
    if unset:
        raise InvalidInput(f"{where}: secret {key!r} is named with ${{{unset[0]}}}, which the "
                           "app's env does not set")
    docker_name = interpolate(name, env)
    expected = decl.docker_name(stack, env.get(decl.key))
    if docker_name != expected:
        raise InvalidInput(
            f"{where}: external secret {key!r} is named {docker_name!r}; Co-op Cloud names it "
            f"${{STACK_NAME}}_{decl.name}_${{{decl.key}}} ({expected!r})")
    if len(docker_name) > MAX_SECRET_NAME:
        raise InvalidInput(f"{where}: secret name {docker_name!r} is longer than Docker's "
                           f"{MAX_SECRET_NAME} characters; use a shorter domain or secret name")
    return NeededSecret(docker_name, decl)
