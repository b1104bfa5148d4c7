"""The alerts outbox: atomic alert files, pending and seen, best-effort relay enqueue."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccci_tasks.errors import InvalidInput
from ccci_tasks.state import alerts

REPO = Path(__file__).resolve().parent.parent


def test_write_alert_file(tmp_path: Path) -> None:
    """An alert is one JSON file <ts>-<kind>-<app>.json with the documented keys."""
    alert = alerts.write_alert(tmp_path, "upgrade-held", "keycloak", "held 26.0 -> 27.0",
                               "major bump", notes="## 27.0\nmanual migration")
    path = tmp_path / "alerts" / f"{alert.id}.json"
    raw = json.loads(path.read_text())
    assert set(raw) == {"id", "kind", "app", "ts", "summary", "detail", "notes"}
    assert raw["id"] == alert.id and alert.id.endswith("-upgrade-held-keycloak")
    assert raw["ts"].endswith("Z")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_notes_optional(tmp_path: Path) -> None:
    """Without notes the key is absent, not null."""
    alert = alerts.write_alert(tmp_path, "rolled-back", "traefik", "rolled back", "unhealthy")
    raw = json.loads((tmp_path / "alerts" / f"{alert.id}.json").read_text())
    assert "notes" not in raw


@pytest.mark.parametrize(("kind", "app"), [("Upgrade", "keycloak"), ("x/y", "keycloak"),
                                           ("rolled-back", "../etc"), ("rolled-back", "")])
def test_bad_kind_or_app_refused(tmp_path: Path, kind: str, app: str) -> None:
    """A bad kind or app is refused and nothing is written."""
    with pytest.raises(InvalidInput):
        alerts.write_alert(tmp_path, kind, app, "s", "d")
    assert not (tmp_path / "alerts").exists() or not list((tmp_path / "alerts").glob("*.json"))


def test_pending_seen_and_mark_seen(tmp_path: Path) -> None:
    """mark_seen moves an alert from pending to seen once; a second call does nothing."""
    first = alerts.write_alert(tmp_path, "rolled-back", "traefik", "one", "d")
    second = alerts.write_alert(tmp_path, "rolled-back", "traefik", "two", "d")
    assert first.id != second.id
    assert [a.id for a in alerts.pending(tmp_path)] == [first.id, second.id]
    assert alerts.seen(tmp_path) == []
    assert alerts.mark_seen(tmp_path, first.id) is True
    assert alerts.mark_seen(tmp_path, first.id) is False
    assert [a.id for a in alerts.pending(tmp_path)] == [second.id]
    assert alerts.seen(tmp_path) == [first]


def test_alert_id_validated(tmp_path: Path) -> None:
    """An alert id that could escape the alerts folder is refused."""
    with pytest.raises(InvalidInput, match="alert id"):
        alerts.mark_seen(tmp_path, "../../etc/passwd")


def test_partial_files_are_not_alerts(tmp_path: Path) -> None:
    """A temp file left by an interrupted write is never listed as an alert."""
    folder = tmp_path / "alerts"
    folder.mkdir()
    (folder / ".20260101T000000.000000Z-x-y.json.tmp-abc").write_text('{"id": ')
    (folder / "20260101T000000.000000Z-x-y.json").write_text('{"id": ')  # not ours: skipped
    assert alerts.pending(tmp_path) == []


def test_broker_down_alert_stays_pending(tmp_path: Path) -> None:
    """With the broker unreachable write_alert still succeeds quickly; the alert stays pending."""
    script = (
        "import sys; from pathlib import Path; from ccci_tasks.outbox.alerts import write_alert; "
        "print(write_alert(Path(sys.argv[1]), 'run-crashed', 'custom-html', 'crashed', 'd').id)"
    )
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
        timeout=120, cwd=REPO,
        env={**os.environ, "CCCI_BROKER_URL": dead, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    took = time.monotonic() - started
    assert took < 60, f"write_alert took {took:.1f} s with the broker down (6 s when idle)"
    assert "stays pending" in out.stderr
    assert [a.id for a in alerts.pending(tmp_path)] == [out.stdout.strip()]
