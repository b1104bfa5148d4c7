"""What a forge webhook delivery means: signature check and a pure decision.

``signature_ok`` checks the hex HMAC-SHA256 of the raw body (header ``X-Gitea-Signature`` or
``X-Forgejo-Signature``, no prefix, as Gitea sends it) in constant time. ``form_payload``
reads the JSON out of a form-encoded delivery (Gitea's other content type, body
``payload=<json>``; the signature is then over that JSON, not over the body). ``decide`` turns a
signed delivery into a ``Trigger`` (a ``!testme`` / ``!testme --quick`` comment, just created,
on a pull request of ``<owner>/<recipe>`` where the recipe is in the catalogue) or an
``Ignored`` with the reason. Nothing here does I/O except asking ``in_catalogue``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

from ccci_tasks.bridge import Trigger as Lane
from ccci_tasks.bridge import parse_comment
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import Recipe

__all__ = [
    "DELIVERY_HEADERS",
    "EVENT_HEADERS",
    "SIGNATURE_HEADERS",
    "Ignored",
    "Trigger",
    "decide",
    "delivery_id",
    "form_payload",
    "sign",
    "signature_ok",
]

SIGNATURE_HEADERS: Final = ("x-forgejo-signature", "x-gitea-signature")
EVENT_HEADERS: Final = ("x-forgejo-event", "x-gitea-event")
DELIVERY_HEADERS: Final = ("x-forgejo-delivery", "x-gitea-delivery")
COMMENT_EVENT: Final = "issue_comment"
FORM_TYPE: Final = "application/x-www-form-urlencoded"
_DELIVERY_RE: Final = re.compile(r"[A-Za-z0-9-]{1,100}")
_LOGIN_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Trigger:
    """A valid request to run ``lane`` of ``recipe`` at the head of PR ``number``."""

    recipe: str
    number: int
    lane: Lane
    user: str


@dataclass(frozen=True)
class Ignored:
    why: str


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _first(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    lowered = _lower(headers)
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def sign(secret: bytes, body: bytes) -> str:
    """The signature Gitea/Forgejo send: hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, headers: Mapping[str, str]) -> bool:
    """True when a signature header is present and every one present matches the body."""
    if not secret:
        return False
    lowered = _lower(headers)
    given = [lowered[name] for name in SIGNATURE_HEADERS if name in lowered]
    if not given:
        return False
    expected = sign(secret, body).encode("ascii")
    return all(
        hmac.compare_digest(expected, value.strip().lower().encode("utf-8", "replace"))
        for value in given
    )


def form_payload(headers: Mapping[str, str], body: bytes) -> bytes | None:
    """The ``payload`` field of a form-encoded delivery (what Gitea signs), else None.

    An empty ``b""`` when the body is form-encoded but has no single ``payload`` field.
    """
    ctype = _first(headers, ("content-type",)) or ""
    if ctype.split(";", 1)[0].strip().lower() != FORM_TYPE:
        return None
    try:
        fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return b""
    values = fields.get("payload", [])
    return values[0].encode("utf-8") if len(values) == 1 else b""


def event_of(headers: Mapping[str, str]) -> str | None:
    return _first(headers, EVENT_HEADERS)


def delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    """The delivery id header when it is sane, else ``body-<sha256 of the body>``.

    A redelivery carries the same id (and the same body), so either way it maps to one key.
    """
    given = _first(headers, DELIVERY_HEADERS)
    if given is not None and _DELIVERY_RE.fullmatch(given):
        return given
    return "body-" + hashlib.sha256(body).hexdigest()


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _login(user: Any) -> str | None:
    for key in ("login", "username"):
        value = _dig(user, key)
        if isinstance(value, str) and _LOGIN_RE.fullmatch(value) and ".." not in value:
            return value
    return None


def decide(
    event: str | None, body: bytes, owner: str, in_catalogue: Callable[[str], bool]
) -> Trigger | Ignored:
    """What a signed delivery asks for. ``owner`` is CCCI_FORGE_OWNER."""
    if event != COMMENT_EVENT:
        return Ignored(f"not an issue_comment event ({str(event)[:40]!r})")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Ignored("the body is not JSON")
    if not isinstance(payload, dict):
        return Ignored("the body is not a JSON object")
    action = payload.get("action")
    if action != "created":
        return Ignored(f"comment action is {str(action)[:20]!r}, not 'created'")
    issue = payload.get("issue")
    is_pull = payload.get("is_pull") is True or isinstance(_dig(issue, "pull_request"), dict)
    if not is_pull:
        return Ignored("the comment is on an issue, not on a pull request")
    number = _dig(issue, "number")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        return Ignored("the pull request has no number")
    repo_owner = _login(_dig(payload, "repository", "owner"))
    if repo_owner is None or repo_owner.lower() != owner.lower():
        return Ignored(f"the repository is not owned by {owner}")
    name = _dig(payload, "repository", "name")
    try:
        recipe = Recipe(name)
    except InvalidInput:
        return Ignored(f"repository name {str(name)[:70]!r} is not a recipe name")
    lane = parse_comment(_dig(payload, "comment", "body"))
    if lane is None:
        return Ignored("the comment is not '!testme' or '!testme --quick'")
    user = _login(_dig(payload, "comment", "user")) or _login(payload.get("sender"))
    if user is None:
        return Ignored("the comment has no valid author")
    if not in_catalogue(recipe):
        return Ignored(f"recipe {recipe} is not in the recipe catalogue")
    return Trigger(recipe=recipe, number=number, lane=lane, user=user)
