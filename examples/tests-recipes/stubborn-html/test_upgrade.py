"""stubborn-html overlay after an upgrade: the upgraded app still serves its page."""

import os
import urllib.request


def test_page_names_the_app() -> None:
    """GET / answers 200 with the app name in the body."""
    request = urllib.request.Request(
        os.environ["CCCI_BASE_URL"] + "/", headers={"Host": os.environ["CCCI_DOMAIN"]}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
        assert response.status == 200
    assert "stubborn-html" in body
