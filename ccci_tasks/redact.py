"""Secret values out of everything a person reads: run reports, step output, pages, comments.

A ``Redactor`` replaces every occurrence of a known secret value with ``***``. The values are
every ``SecretStr`` setting (``settings_secrets``: forge token, webhook secret, Flower, web and
Keycloak admin passwords, broker and push URLs, each URL of a list on its own too) plus the
generated secrets of the apps a run works on (``Platform.secret_values``). ``for_run`` builds
the redactor of one run; ``for_settings`` the one of a reader that knows no app (the pages).

Redaction is applied to whole texts, never chunk by chunk, so a secret split across two
writes is still found (``StepOutput`` joins its parts before it redacts them). Longer values
are replaced first, so a secret that contains another one leaves no piece of itself behind.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

if TYPE_CHECKING:
    from ccci_tasks.config import Settings
    from ccci_tasks.naming import Domain
    from ccci_tasks.platform.base import Platform

log = logging.getLogger(__name__)

MASK: Final = "***"


class Redactor:
    """Replaces known secret values with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if isinstance(s, str) and s.strip()}
        self._count = len(values)
        ordered = sorted(values, key=len, reverse=True)
        self._values = tuple(ordered)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __repr__(self) -> str:  # never the values
        return f"Redactor({self._count} secrets)"

    def __len__(self) -> int:
        return self._count

    def text(self, value: str) -> str:
        """``value`` with every secret replaced by ``***``."""
        if self._pattern is None or not value:
            return value
        return self._pattern.sub(MASK, value)

    def data(self, value: Any) -> Any:
        """Every string inside a JSON-like value (dicts, lists), redacted; keys are kept."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.data(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(item) for item in value]
        return value

    def with_values(self, secrets: Iterable[str]) -> Redactor:
        """A redactor that also knows ``secrets``."""
        return Redactor([*self._values, *secrets])


def _pieces(value: str) -> list[str]:
    """A secret setting's value, each whitespace-separated part (URL lists), and the
    password of each URL (``redis://:pw@host``, ``json://user:pw@host``)."""
    out = [value]
    parts = value.split()
    if len(parts) > 1:
        out += parts
    for part in parts:
        try:
            password = urlsplit(part).password
        except ValueError:
            continue
        if password:
            out += [password, unquote(password)]
    return out


def settings_secrets(settings: Settings) -> list[str]:
    """Every value of a ``SecretStr`` setting (``CCCI_*`` secrets), with its pieces."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if secret:
                found += _pieces(secret)
    return found


def for_settings(settings: Settings) -> Redactor:
    return Redactor(settings_secrets(settings))


def app_secrets(platform: Platform, domains: Iterable[Domain | None]) -> list[str]:
    """The generated secret values of ``domains`` (apps without secrets give none)."""
    found: list[str] = []
    for domain in dict.fromkeys(d for d in domains if d):
        try:
            found += platform.secret_values(domain)
        except Exception as exc:  # a reader must still get the settings' secrets redacted
            log.warning("cannot read the secret values of %s to redact them: %s", domain, exc)
    return found


def for_run(settings: Settings, platform: Platform, domains: Iterable[Domain | None]
            ) -> Redactor:
    """The redactor of a run: the settings' secrets and those of the apps it works on."""
    return Redactor([*settings_secrets(settings), *app_secrets(platform, domains)])
