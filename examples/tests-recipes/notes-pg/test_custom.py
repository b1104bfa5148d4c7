"""notes-pg overlay: the app serves what its database holds (run against the live app)."""

import json
import os
import urllib.request


def test_app_serves_its_database() -> None:
    """GET / answers the app's version and thousands of notes; /healthz answers ok."""
    base, host = os.environ["CCCI_BASE_URL"], os.environ["CCCI_DOMAIN"]
    request = urllib.request.Request(base + "/", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as response:
        state = json.loads(response.read().decode())
    assert state["tables"]["notes"] >= 1000
    assert state["tables"]["boots"] >= 1
    health = urllib.request.Request(base + "/healthz", headers={"Host": host})
    with urllib.request.urlopen(health, timeout=10) as response:
        assert response.read() == b"ok\n"
