"""kanban-pg overlay: the app and its worker both reached the database."""

import json
import os
import time
import urllib.request


def test_worker_beats() -> None:
    """The worker records heartbeats in the database the app serves."""
    request = urllib.request.Request(
        os.environ["CCCI_BASE_URL"] + "/", headers={"Host": os.environ["CCCI_DOMAIN"]}
    )
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(request, timeout=10) as response:
            tables = json.loads(response.read().decode())["tables"]
        if tables.get("worker_heartbeat") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert tables.get("worker_heartbeat") == 1
    assert tables["cards"] >= 1000
