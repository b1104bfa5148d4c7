"""One typed settings object, read from ``CCCI_*`` environment variables.

Validated once at start-up (``get_settings()`` caches it). Secrets are ``SecretStr``:
they never show in a repr, a log line or Flower. ``celery_app`` copies what Celery needs
from here in one place.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ccci_tasks.errors import ConfigError
from ccci_tasks.naming import Domain, Recipe
from ccci_tasks.versions import DEFAULT_MIGRATION_PATTERNS

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_NODE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NODE_BEAT_MAX_S = 60.0


def default_node() -> str:
    """The hostname's first label, lowercased, other characters as '-'."""
    import socket

    label = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9-]", "-", label).strip("-")[:63]
    return name or "localhost"


class Settings(BaseSettings):
    """Every knob of ccci-tasks. Environment prefix ``CCCI_``."""

    model_config = SettingsConfigDict(env_prefix="CCCI_", extra="ignore", frozen=True)

    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    state_dir: Path = Path("/var/lib/ci-warm")
    tests_dir: Path = Path("./tests-recipes")
    platform: Literal["swarm", "abra"] = "swarm"
    recipes_dir: Path = Path("./recipes")
    base_domain: Domain = Domain("ci.localhost")
    max_tests: int = Field(default=1, ge=1, le=64)

    prune_threshold_pct: int = Field(default=80, ge=1, le=100)
    prune_path: Path = Path("/")

    keycloak_url: str | None = None
    keycloak_admin_user: str | None = None
    keycloak_admin_password: SecretStr | None = None

    # Apprise URLs often carry tokens, so the whole list is a secret.
    alert_urls: SecretStr = SecretStr("")
    alert_retry_max_s: int = Field(default=300, ge=1)
    migration_patterns: tuple[str, ...] = DEFAULT_MIGRATION_PATTERNS

    timezone: str = "UTC"
    nightly_at: str = "03:00"
    # The watchdog fires a sweep when the last completed one is older than this (R8.3), and
    # looks that often. A scheduled (beat) sweep is skipped when one completed this recently
    # (a double fire around a DST change or a beat restart runs the night once).
    sweep_max_age_h: float = Field(default=25, gt=0)
    sweep_watchdog_s: int = Field(default=3600, ge=1)
    sweep_min_interval_h: float = Field(default=12, ge=0)
    # Beat may run on several hosts: the one holding a lock in the broker fires. It renews the
    # lock at least every max interval; a lock not renewed for the timeout passes to another.
    beat_max_interval_s: int = Field(default=10, ge=1)
    beat_lock_timeout_s: int = Field(default=60, ge=3)

    # Run slots (MAX_TESTS) and the janitor.
    lease_ttl_s: int = Field(default=300, ge=5)
    janitor_interval_s: int = Field(default=60, ge=1)
    # An admitted run whose first step has not started yet keeps its lease this long (its
    # first step may wait behind the step of another run, or for a worker that is down);
    # past it, the run is queued again.
    lease_start_grace_s: int = Field(default=600, ge=5)
    # A step whose delivery killed its worker this many times ends its run with an error.
    poison_max_deliveries: int = Field(default=3, ge=1, le=100)

    # Live-warm infrastructure (R2): recipes deployed at warm-<app>.<base>, space separated.
    infra_apps: str = "keycloak traefik"
    # Disk prune (R9.2): only what is older than this many hours.
    prune_min_age_h: float = Field(default=24, ge=0)

    # Apprise URLs told of every finished run (a secret: URLs carry tokens).
    notify_urls: SecretStr = SecretStr("")

    # The forge (Gitea/Forgejo, R11).
    forge_url: str | None = None
    forge_token: SecretStr | None = None
    forge_owner: str | None = None
    webhook_secret: SecretStr | None = None
    bridge_listen: str = "127.0.0.1:8787"

    # Run pages and metrics (R14), served by the bridge: where people reach them (commit
    # status links; default http://<bridge_listen>), and optional basic auth (both or none).
    public_url: str | None = None
    web_user: str | None = None
    web_password: SecretStr | None = None

    # Per-step time limits. The Redis visibility timeout must exceed the hard limit,
    # or a long step is redelivered while it still runs (see docs/decisions.md).
    step_soft_time_limit_s: int = Field(default=3300, ge=10)
    step_hard_time_limit_s: int = Field(default=3600, ge=10)
    visibility_timeout_s: int = Field(default=4 * 3600, ge=60)

    # This host's name when several hosts share one broker (R15): leases name it, and a
    # host's janitor kills only its own processes. Default: the hostname, made [a-z0-9-].
    node: str = Field(default_factory=lambda: default_node())
    # Every host reads run reports from the broker, which keeps a finished one this many days
    # after its end; each host keeps its own copies of the reports it wrote on its disk.
    report_broker_days: float = Field(default=30, gt=0)
    # The runs worker of this node publishes it in the node registry this often (seconds); a
    # node with no beat for CCCI_LEASE_TTL_S is lost.
    node_beat_s: float = 2.0

    docker_host: str = "unix:///var/run/docker.sock"
    abra_bin: str = "abra"
    abra_server: str = "default"
    abra_dir: Path | None = None  # default: <state_dir>/abra

    flower_user: str = "ccci"
    flower_password: SecretStr | None = None

    @field_validator("node")
    @classmethod
    def _node_ok(cls, value: str) -> str:
        if not _NODE.fullmatch(value):
            raise ValueError(f"node {value!r} is invalid: expected 1-63 of [a-z0-9-], not "
                             "starting with '-' (set CCCI_NODE)")
        return value

    @field_validator("node_beat_s", mode="before")
    @classmethod
    def _node_beat_ok(cls, value: object) -> float:
        try:
            seconds = float(str(value))  # "2", 2, 2.5; never a bool ("True")
        except ValueError:
            seconds = math.nan
        if not 0.1 <= seconds <= NODE_BEAT_MAX_S:  # NaN too
            raise ValueError(f"CCCI_NODE_BEAT_S {value!r} is invalid: give the seconds between "
                             f"two beats of a node, from 0.1 to {NODE_BEAT_MAX_S:g} (default 2)")
        return seconds

    @field_validator("infra_apps")
    @classmethod
    def _infra_apps_ok(cls, value: str) -> str:
        for app in value.split():
            Recipe(app)
        return " ".join(value.split())

    @field_validator("nightly_at")
    @classmethod
    def _nightly_at_ok(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"nightly_at {value!r} must be HH:MM in 24 h time, e.g. 03:00")
        return value

    @field_validator("migration_patterns")
    @classmethod
    def _patterns_compile(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"migration pattern {pattern!r} is not a regex: {exc}") from exc
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url_ok(cls, value: str | None) -> str | None:
        if not value:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query
                or parts.fragment or parts.username is not None):
            raise ValueError(
                f"public_url {value!r} must be an http(s) URL without credentials, query or "
                "fragment, e.g. https://ci.example.org (where the run pages are reached)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _web_auth_whole(self) -> Settings:
        password = self.web_password.get_secret_value() if self.web_password else ""
        if bool(self.web_user) != bool(password):
            raise ValueError(
                "set both CCCI_WEB_USER and CCCI_WEB_PASSWORD (basic auth for the run pages "
                "and metrics) or neither (public pages)"
            )
        return self

    @model_validator(mode="after")
    def _limits_ordered(self) -> Settings:
        if self.step_soft_time_limit_s >= self.step_hard_time_limit_s:
            raise ValueError(
                f"step_soft_time_limit_s ({self.step_soft_time_limit_s}) must be below "
                f"step_hard_time_limit_s ({self.step_hard_time_limit_s})"
            )
        if self.beat_lock_timeout_s < 3 * self.beat_max_interval_s:
            raise ValueError(
                f"beat_lock_timeout_s ({self.beat_lock_timeout_s}) must be at least 3 x "
                f"beat_max_interval_s ({self.beat_max_interval_s}), or the beat that fires "
                "loses its lock between two ticks"
            )
        if self.lease_ttl_s < 2 * self.node_beat_s:
            raise ValueError(
                f"CCCI_NODE_BEAT_S ({self.node_beat_s:g}) must be at most half of "
                f"CCCI_LEASE_TTL_S ({self.lease_ttl_s}), or one late beat makes a live node "
                "look lost; beat more often or raise the lease TTL"
            )
        if self.visibility_timeout_s <= self.step_hard_time_limit_s:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed "
                f"step_hard_time_limit_s ({self.step_hard_time_limit_s}), or long steps run twice"
            )
        return self

    @property
    def abra_root(self) -> Path:
        return self.abra_dir or self.state_dir / "abra"

    @property
    def public_base_url(self) -> str:
        """Where the run pages are reached: CCCI_PUBLIC_URL, else http://<bridge listen>."""
        return self.public_url or f"http://{self.bridge_listen}"

    def run_url(self, run_id: str) -> str:
        """The page of one run (the ``target_url`` of its commit statuses)."""
        return f"{self.public_base_url}/runs/{run_id}"

    def alert_url_list(self) -> list[str]:
        return self.alert_urls.get_secret_value().split()

    def notify_url_list(self) -> list[str]:
        return self.notify_urls.get_secret_value().split()

    def infra_app_list(self) -> list[Recipe]:
        """The live-warm apps of ``CCCI_INFRA_APPS`` (``""``: none)."""
        return [Recipe(app) for app in self.infra_apps.split()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated once. A bad value is a ``ConfigError``."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise ConfigError(f"invalid CCCI_* settings: {exc}") from exc
