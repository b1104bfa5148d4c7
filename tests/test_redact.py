"""Secret values become *** before anything is written: the settings' secrets and the app's
generated ones, in reports, step output and whatever is cut or joined on the way."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from pydantic import SecretStr

from ccci_tasks.config import Settings
from ccci_tasks.naming import Domain, RunId
from ccci_tasks.redact import MASK, Redactor, for_run, settings_secrets
from ccci_tasks.state import outputs
from ccci_tasks.state.outputs import MAX_STEP_OUTPUT_CHARS, StepOutput, cap


def _settings(**kw: Any) -> Settings:
    return Settings(**kw)


def test_every_secret_setting_is_known() -> None:
    """Forge token, webhook secret, Flower, web and Keycloak admin passwords, the broker
    URL's password and each push URL (and its password) are secrets; plain settings not."""
    settings = _settings(
        forge_token=SecretStr("tok-1234567890"), webhook_secret=SecretStr("hook-abcdef"),
        flower_password=SecretStr("flower-pw-1"), web_user="viewer",
        web_password=SecretStr("web-pw-2"), keycloak_admin_password=SecretStr("kc-pw-3"),
        broker_url=SecretStr("redis://:broker-pw-4@127.0.0.1:6379/0"),
        alert_urls=SecretStr("json://a:push-pw-5@h/x tgram://bot-token-6/chat"),
        forge_owner="recipes")
    secrets = settings_secrets(settings)
    for value in ("tok-1234567890", "hook-abcdef", "flower-pw-1", "web-pw-2", "kc-pw-3",
                  "broker-pw-4", "push-pw-5", "tgram://bot-token-6/chat"):
        assert value in secrets, value
    assert "recipes" not in secrets and "viewer" not in secrets
    text = Redactor(secrets).text("owner recipes used tok-1234567890 and kc-pw-3 at 1.2.3.4")
    assert text == "owner recipes used *** and *** at 1.2.3.4"


def test_longer_secret_first_and_no_fragments() -> None:
    """A secret that contains another is masked whole, not in pieces."""
    redactor = Redactor(["abc", "xxabcxx"])
    assert redactor.text("1 xxabcxx 2 abc") == f"1 {MASK} 2 {MASK}"
    assert redactor.data({"a": ["xxabcxx"], "n": 3}) == {"a": [MASK], "n": 3}
    assert "abc" not in repr(redactor) and Redactor().text("same") == "same"


def test_app_secrets_come_from_the_platform() -> None:
    """for_run asks the platform for the secret values of the run's apps; a platform that
    cannot answer still leaves the settings' secrets redacted."""
    app_secret = "app-" + uuid.uuid4().hex
    platform = SimpleNamespace(secret_values=lambda domain: [app_secret]
                               if domain == "demo-1a2b3c.ci.example" else [])
    settings = _settings(forge_token=SecretStr("tok-0987654321"))
    redactor = for_run(settings, cast(Any, platform), [Domain("demo-1a2b3c.ci.example"), None])
    assert redactor.text(f"db password {app_secret}; token tok-0987654321") == \
        "db password ***; token ***"

    def broken(domain: str) -> list[str]:
        raise OSError("engine down")

    partial = for_run(settings, cast(Any, SimpleNamespace(secret_values=broken)), [Domain("x.y")])
    assert partial.text("tok-0987654321") == MASK


def test_step_output_is_redacted_whole_and_capped(tmp_path: Path) -> None:
    """A secret printed in two writes of one stream, and one straddling the point where a
    huge section is cut, never reach the file; the file keeps the tail and says what was
    cut; a second delivery of the step adds to the first."""
    secret = "s3cr3t-" + uuid.uuid4().hex
    out = StepOutput()
    out.section("pytest", "token " + secret[:9] + secret[9:] + " end")
    filler = "x" * 79 + "\n"
    huge = filler * (4 * MAX_STEP_OUTPUT_CHARS // 80) + f"the secret {secret} here\n" + filler * 3
    # the raw cut lands inside the line with the secret: that whole line goes
    out.section("service logs", secret[5:] + "\n" + huge)
    out.section("result", f"failed: {secret}")
    run_id = RunId(str(uuid.uuid4()))
    path = outputs.keep(tmp_path, run_id, "overlay_custom", "t-1", False, out,
                        Redactor([secret]))
    text = path.read_text()
    assert secret not in text and secret[9:] not in text and secret[5:] not in text
    assert text.startswith("[... ") and "characters cut" in text.splitlines()[0]
    assert len(text) <= MAX_STEP_OUTPUT_CHARS + 200
    assert text.rstrip().endswith("failed: ***")
    again = StepOutput()
    again.section("result", "second delivery")
    outputs.keep(tmp_path, run_id, "overlay_custom", "t-1", False, again, Redactor())
    assert "second delivery" in path.read_text() and "delivered again" in path.read_text()
    assert path.parent == tmp_path / "runs" / run_id


def test_cap_keeps_whole_lines() -> None:
    text = "\n".join(f"line {n}" for n in range(1000))
    capped = cap(text, 100)
    assert capped.splitlines()[0].startswith("[... ") and capped.endswith("line 999")
    assert all(line.startswith("line ") for line in capped.splitlines()[1:])
