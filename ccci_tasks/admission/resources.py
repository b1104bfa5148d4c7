"""What a run holds from its first step to its last, as one typed value.

Lanes declare their resources with the constructors; only this module knows the wire form
(the string stored in a run spec in Redis and read by the admission scripts):

* ``slot`` - one of the MAX_TESTS run slots (R9.1); counted, not exclusive;
* ``sweep`` - the nightly sweep; exclusive;
* ``canon:<recipe>`` - the recipe's data-warm canonical (R6.8); exclusive;
* ``infra:<app>:shared`` / ``infra:<app>:excl`` - a live-warm app: shared by the runs whose
  recipe depends on it, exclusive for the app's reconcile.

Two resources with the same ``key`` conflict unless both are shared; ``slot`` never
conflicts (it is counted instead). The ``key`` also names the intent record of what a run
changes (``state.intents``: ``canon:<recipe>``, ``infra:<app>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from ccci_tasks.errors import InvalidInput

Kind = Literal["slot", "sweep", "canon", "infra"]

_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_WIRE_RE: Final = re.compile(
    r"(?P<kind>slot|sweep)|(?P<named>canon|infra):(?P<name>[a-z0-9][a-z0-9_-]{0,62})"
    r"(?::(?P<mode>shared|excl))?"
)
_WIRE_HINT: Final = "expected slot, sweep, canon:<recipe> or infra:<app>:shared|excl"
_EXCLUSIVE: Final = {"slot": (False,), "sweep": (True,), "canon": (True,), "infra": (True, False)}


@dataclass(frozen=True)
class Resource:
    """A resource a run holds; build it with ``slot``, ``sweep``, ``canon``, ``infra`` or
    ``parse``. ``str()`` is its wire form."""

    kind: Kind
    name: str = ""  # the recipe (canon) or the live-warm app (infra)
    exclusive: bool = True  # a slot is counted, not exclusive; an infra app may be shared

    def __post_init__(self) -> None:
        named = self.kind in ("canon", "infra")
        if self.kind not in _EXCLUSIVE \
                or named != bool(_NAME_RE.fullmatch(self.name)) \
                or (not named and self.name) \
                or self.exclusive not in _EXCLUSIVE[self.kind]:
            raise InvalidInput(f"resource {self!r} is invalid: {_WIRE_HINT}")

    @classmethod
    def slot(cls) -> Resource:
        """One of the MAX_TESTS run slots."""
        return cls("slot", exclusive=False)

    @classmethod
    def sweep(cls) -> Resource:
        """The nightly sweep (one at a time)."""
        return cls("sweep")

    @classmethod
    def canon(cls, recipe: str) -> Resource:
        """The data-warm canonical of ``recipe``, held alone."""
        return cls("canon", recipe)

    @classmethod
    def infra(cls, app: str, *, exclusive: bool) -> Resource:
        """The live-warm ``app``: shared by the runs that depend on it, exclusive for its
        reconcile."""
        return cls("infra", app, exclusive)

    @classmethod
    def parse(cls, text: object) -> Resource:
        """A resource from its wire form; anything else raises ``InvalidInput``."""
        found = _WIRE_RE.fullmatch(text) if isinstance(text, str) else None
        if found is None or (found["named"] == "infra") != (found["mode"] is not None):
            raise InvalidInput(f"resource {text!r} is invalid: {_WIRE_HINT}")
        if found["kind"] == "slot":
            return cls.slot()
        if found["kind"] == "sweep":
            return cls.sweep()
        if found["named"] == "canon":
            return cls.canon(found["name"])
        return cls.infra(found["name"], exclusive=found["mode"] == "excl")

    @classmethod
    def from_key(cls, key: str) -> Resource:
        """The canonical or live-warm app an intent record names (``canon:<recipe>``,
        ``infra:<app>``); an app comes back exclusive, as whoever undoes its change holds
        it."""
        kind, _, name = key.partition(":")
        if kind == "canon":
            return cls.canon(name)
        if kind == "infra":
            return cls.infra(name, exclusive=True)
        raise InvalidInput(f"resource key {key!r} is invalid: expected canon:<recipe> or "
                           "infra:<app>")

    @property
    def key(self) -> str:
        """What is held, whatever the sharing: ``slot``, ``sweep``, ``canon:<recipe>``,
        ``infra:<app>``."""
        return f"{self.kind}:{self.name}" if self.name else self.kind

    def __str__(self) -> str:
        if self.kind == "infra":
            return f"{self.key}:{'excl' if self.exclusive else 'shared'}"
        return self.key
