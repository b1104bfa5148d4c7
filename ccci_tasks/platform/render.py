"""Rendering a recipe's compose files for ``docker stack deploy``: the labels the rest of the
system relies on, and the update monitor the swarm platform does not need.

``ccci.kind``/``ccci.run``/``ccci.recipe``/``ccci.domain`` go on every service (service and
container labels) and every top-level volume, network, secret and config the stack creates;
``coop-cloud.<stack>.version`` and, for a chaos deploy, ``coop-cloud.<stack>.chaos-version``
(the short sha) on the ``app`` service. Everything else (``${VAR}`` interpolation included) is
left to ``docker stack deploy``, which merges several files itself (``-c a -c b``).

``deploy.update_config.monitor`` is set to ``UPDATE_MONITOR`` for every service whose recipe
sets no monitor in any of its files (only in the first file that declares the service, so a
partial service in a later file never overrides a recipe's own value). See the swarm
platform's docstring for why.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Final

from ccci_tasks import constants
from ccci_tasks.errors import InvalidInput
from ccci_tasks.platform.envfile import interpolate

__all__ = ["APP_SERVICE", "UPDATE_MONITOR", "declared_version", "monitor_defaults",
           "render_compose"]

APP_SERVICE: Final = "app"
UPDATE_MONITOR: Final = "1ms"


def _label_items(raw: Any) -> list[tuple[str, str]]:
    """Compose labels (a list of ``k=v`` or a mapping) as ``(key, value)`` pairs."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [(str(k), "" if v is None else str(v)) for k, v in raw.items()]
    if isinstance(raw, list):
        items = []
        for entry in raw:
            key, _, value = str(entry).partition("=")
            items.append((key, value))
        return items
    raise InvalidInput(f"compose labels must be a list or a mapping, got {raw!r}")


def _merge_labels(raw: Any, ours: dict[str, str], env: dict[str, str]) -> list[str]:
    """Existing labels (minus the keys we set) followed by ours, as ``k=v`` strings.

    The list form keeps ``${VAR}`` in keys working: docker interpolates list entries whole.
    """
    kept = [
        f"{k}={v}" for k, v in _label_items(raw) if interpolate(k, env) not in ours
    ]
    return kept + [f"{k}={v}" for k, v in ours.items()]


def declared_version(compose: dict[str, Any], stack: str, env: dict[str, str]) -> str | None:
    """The ``coop-cloud.<stack>.version`` the compose's ``app`` service declares, if any."""
    services = compose.get("services") or {}
    app = services.get(APP_SERVICE) or {}
    deploy = app.get("deploy") or {}
    wanted = constants.version_label(stack)
    for key, value in _label_items(deploy.get("labels")):
        if interpolate(key, env) == wanted:
            return interpolate(value, env).strip() or None
    return None


def monitor_defaults(composes: Sequence[dict[str, Any]]) -> list[set[str]]:
    """Per file, the services that file sets the default update monitor for: the first file
    declaring a service, when no file sets the service's monitor."""
    has_monitor = {
        name
        for compose in composes
        for name, service in (compose.get("services") or {}).items()
        if "monitor" in (((service or {}).get("deploy") or {}).get("update_config") or {})
    }
    seen: set[str] = set()
    out = []
    for compose in composes:
        names = set(compose.get("services") or {}) - seen - has_monitor
        seen |= set(compose.get("services") or {})
        out.append(names)
    return out


def render_compose(
    compose: dict[str, Any],
    *,
    stack: str,
    env: dict[str, str],
    ccci_labels: dict[str, str],
    app_labels: dict[str, str],
    set_monitor: Collection[str] | None = None,
) -> dict[str, Any]:
    """A copy of ``compose`` with the ccci labels everywhere and ``app_labels`` on ``app``;
    the default update monitor on the services of ``set_monitor`` (None: every service that
    sets none, for a recipe of one compose file)."""
    out = dict(compose)
    services = {}
    for name, raw_service in (compose.get("services") or {}).items():
        service = dict(raw_service or {})
        deploy = dict(service.get("deploy") or {})
        ours = dict(ccci_labels)
        if name == APP_SERVICE:
            ours.update(app_labels)
        deploy["labels"] = _merge_labels(deploy.get("labels"), ours, env)
        if set_monitor is None or name in set_monitor:
            update = dict(deploy.get("update_config") or {})
            update.setdefault("monitor", UPDATE_MONITOR)
            deploy["update_config"] = update
        service["deploy"] = deploy
        service["labels"] = _merge_labels(service.get("labels"), ccci_labels, env)
        services[name] = service
    out["services"] = services
    for section in ("volumes", "networks", "secrets", "configs"):
        objects = compose.get(section)
        if not isinstance(objects, dict):
            continue
        rendered = {}
        for name, raw_obj in objects.items():
            obj = dict(raw_obj or {})
            if not obj.get("external"):
                obj["labels"] = _merge_labels(obj.get("labels"), ccci_labels, env)
            rendered[name] = obj
        out[section] = rendered
    return out
