"""Settings: validated once, secrets never shown, Celery config copied in one place."""

from __future__ import annotations

import pytest

from ccci_tasks.celery_app import TASK_ROUTES, celery_config
from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import ConfigError


def test_defaults_follow_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no CCCI_* variables the defaults are those of INTERFACES.md."""
    for key in list(__import__("os").environ):
        if key.startswith("CCCI_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert s.broker_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert str(s.state_dir) == "/var/lib/ci-warm"
    assert s.platform == "swarm"
    assert s.base_domain == "ci.localhost"
    assert s.max_tests == 1
    assert (s.prune_threshold_pct, str(s.prune_path)) == (80, "/")
    assert (s.timezone, s.nightly_at) == ("UTC", "03:00")
    assert s.alert_url_list() == []
    assert s.node_beat_s == 2.0


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passwords and push-target tokens never appear in repr or str of the settings."""
    monkeypatch.setenv("CCCI_KEYCLOAK_ADMIN_PASSWORD", "kc-hunter2")
    monkeypatch.setenv("CCCI_ALERT_URLS", "ntfys://token-hunter3@ntfy.example/topic")
    monkeypatch.setenv("CCCI_BROKER_URL", "redis://:redis-hunter4@127.0.0.1:6379/0")
    s = Settings()
    for text in (repr(s), str(s), repr(s.model_dump())):
        assert "hunter" not in text
    assert s.keycloak_admin_password is not None
    assert s.keycloak_admin_password.get_secret_value() == "kc-hunter2"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("CCCI_MAX_TESTS", "0", "max_tests"),
        ("CCCI_NIGHTLY_AT", "3am", "3am"),
        ("CCCI_BASE_DOMAIN", "bad domain", "bad domain"),
        ("CCCI_PLATFORM", "k8s", "platform"),
        ("CCCI_VISIBILITY_TIMEOUT_S", "600", "visibility_timeout_s"),
        ("CCCI_BEAT_LOCK_TIMEOUT_S", "5", r"beat_lock_timeout_s \(5\) must be at least 3 x "
                                          r"beat_max_interval_s \(2\)"),
        ("CCCI_NODE_BEAT_S", "0", "CCCI_NODE_BEAT_S '0' is invalid: give the seconds between "
                                  "two beats of a node, from 0.1 to 60"),
        ("CCCI_NODE_BEAT_S", "-2", "CCCI_NODE_BEAT_S '-2' is invalid"),
        ("CCCI_NODE_BEAT_S", "2s", "CCCI_NODE_BEAT_S '2s' is invalid"),
        ("CCCI_NODE_BEAT_S", "inf", "CCCI_NODE_BEAT_S 'inf' is invalid"),
        ("CCCI_NODE_BEAT_S", "120", "CCCI_NODE_BEAT_S '120' is invalid"),
        ("CCCI_NODE_BEAT_S", "30", r"CCCI_NODE_BEAT_S \(30\) must be at most half of "
                                   r"CCCI_LEASE_TTL_S \(20\)"),
    ],
)
def test_bad_settings_name_the_value(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, needle: str
) -> None:
    """A bad setting is a ConfigError at start-up that names the offending key or value."""
    monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match=needle):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_visibility_timeout_exceeds_hard_limit() -> None:
    """The Redis visibility timeout is longer than the longest hard time limit."""
    conf = celery_config(Settings())
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    assert conf["task_soft_time_limit"] < conf["task_time_limit"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert conf["result_extended"] and conf["enable_utc"]


def test_beat_schedule_and_lock_live_in_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beat fires through RedBeat on the broker, its keys under ccci:beat:, renewing its lock
    every CCCI_BEAT_MAX_INTERVAL_S and holding it CCCI_BEAT_LOCK_TIMEOUT_S."""
    monkeypatch.setenv("CCCI_BEAT_MAX_INTERVAL_S", "7")
    monkeypatch.setenv("CCCI_BEAT_LOCK_TIMEOUT_S", "30")
    settings = Settings()
    conf = celery_config(settings)
    assert conf["beat_scheduler"] == "ccci_tasks.beat:Scheduler"
    assert conf["redbeat_redis_url"] == settings.broker_url.get_secret_value()
    assert conf["redbeat_redis_options"] == {}
    assert conf["redbeat_key_prefix"] == "ccci:beat:"
    assert conf["redbeat_lock_key"] == "ccci:beat:lock"
    assert (conf["beat_max_loop_interval"], conf["redbeat_lock_timeout"]) == (7, 30)


def test_routes_cover_every_queue() -> None:
    """task_routes maps each ccci.<queue>.* name pattern to that queue."""
    assert TASK_ROUTES == {
        "ccci.runs.*": {"queue": "runs"},
        "ccci.infra.*": {"queue": "infra"},
        "ccci.alerts.*": {"queue": "alerts"},
    }
