"""prune_stale (R5.4): warm data of recipes no longer enrolled goes; everything else stays."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ccci_tasks import constants as c
from ccci_tasks.config import Settings
from ccci_tasks.errors import ConfigError
from ccci_tasks.lanes.stale import plan_prune, prune_stale
from ccci_tasks.naming import Domain, Recipe, stack_name, warm_domain
from ccci_tasks.platform.base import AppInfo, Kind
from ccci_tasks.state.canonical import Canonical, write_registry

if TYPE_CHECKING:
    from docker import DockerClient

BASE = Domain("ci.localhost")


def _app(recipe: str, kind: Kind = "warm", deployed: bool = False, domain: str | None = None
         ) -> AppInfo:
    parsed = Domain(domain) if domain else warm_domain(Recipe(recipe), BASE)
    return AppInfo(parsed, stack_name(parsed), recipe, kind, None, deployed)


def _seed(state_dir: Path, name: str) -> Path:
    recipe = Recipe(name)
    write_registry(state_dir, Canonical(recipe=recipe, domain=warm_domain(recipe, BASE),
                                        version="1.0.0+1.0", commit=None))
    snap = state_dir / recipe / "snapshot.x"
    snap.mkdir()
    (snap / "data.tar").write_bytes(b"tar")
    (state_dir / recipe / "snapshot").symlink_to("snapshot.x")
    return state_dir / recipe


def test_plan_keeps_enrolled_reserved_and_foreign(tmp_path: Path) -> None:
    """Only non-enrolled recipe folders and their exact warm apps are planned for removal."""
    _seed(tmp_path, "custom-html")
    stale = _seed(tmp_path, "old-app")
    for name in ("alerts", "runs", "infra", "apps", "beat", "abra", "Not_A_Recipe"):
        (tmp_path / name).mkdir()
    apps = [
        _app("custom-html"),
        _app("old-app"),
        _app("busy-app", deployed=True),
        _app("old-app", kind="cold", domain="old-1a2b3c.ci.localhost"),
        _app("keycloak", kind="infra"),
        _app("imposter", domain="warm-other.ci.localhost"),
    ]
    plan = plan_prune(tmp_path, BASE, ["custom-html"], apps)
    assert plan.state_dirs == (stale,)
    assert plan.apps == ("warm-old-app.ci.localhost",)
    assert plan.kept_deployed == ("warm-busy-app.ci.localhost",)


def test_prune_refuses_without_tests_dir(settings: Settings, state_dir: Path) -> None:
    """A missing tests dir aborts the prune instead of treating every recipe as stale."""
    _seed(state_dir, "custom-html")
    broken = settings.model_copy(update={"tests_dir": state_dir / "no-such-dir"})
    with pytest.raises(ConfigError, match="does not exist"):  # before the platform is used
        prune_stale(broken, platform=None)  # type: ignore[arg-type]
    assert (state_dir / "custom-html" / "canonical.json").exists()


@pytest.mark.docker
def test_prune_stale_on_the_swarm(settings: Settings, clean_swarm: DockerClient,
                                  state_dir: Path) -> None:
    """A stale recipe's registry, snapshot and warm volume go; the enrolled one stays."""
    from ccci_tasks.platform.swarm import SwarmPlatform

    platform = SwarmPlatform(settings)
    volumes: dict[str, str] = {}
    for recipe in (Recipe("custom-html"), Recipe("old-app")):
        _seed(state_dir, recipe)
        domain = warm_domain(recipe, settings.base_domain)
        stack = stack_name(domain)
        volumes[recipe] = clean_swarm.volumes.create(
            name=f"{stack}_data",
            labels={c.STACK_NAMESPACE_LABEL: stack, c.LABEL_KIND: "warm",
                    c.LABEL_RECIPE: recipe, c.LABEL_DOMAIN: domain},
        ).name
    (state_dir / "alerts").mkdir()

    removed = prune_stale(settings, platform)

    stale = warm_domain(Recipe("old-app"), settings.base_domain)
    assert removed == [f"app:{stale}", f"state:{state_dir / 'old-app'}"]
    assert not (state_dir / "old-app").exists()
    assert (state_dir / "custom-html" / "snapshot" / "data.tar").exists()
    assert (state_dir / "alerts").is_dir()
    names = {v.name for v in clean_swarm.volumes.list(filters={"label": c.LABEL_KIND})}
    assert volumes["custom-html"] in names and volumes["old-app"] not in names
    assert prune_stale(settings, platform) == []
