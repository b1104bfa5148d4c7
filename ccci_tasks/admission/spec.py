"""A run as admission stores it (``RunSpec``) and a run that occupies resources (``Lease``).

A spec lives in Redis as a hash (``_hash_fields``, ``_from_hash``) and travels as JSON in
Celery task arguments (``to_json``, ``from_json``); both carry the resources in their wire
form, parsed back into ``Resource`` values here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

from ccci_tasks.admission.resources import Resource
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import Recipe, Ref, RunId

_LANE_RE: Final = re.compile(r"[a-z][a-z-]{0,30}")
NODE_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # as config's CCCI_NODE
LEGACY_HOLD_LANE: Final = "janitor"  # how holds were stored before ``RunSpec.hold``


@dataclass(frozen=True)
class RunSpec:
    """What a pending or running run is: enough to start its lane and to clean up after it."""

    run_id: RunId  # a Celery task id (uuid4 string)
    lane: str  # a lane name of ``ccci_tasks.lanes``
    recipe: Recipe  # the recipe (or live-warm app) under test
    ref: Ref | None = None
    resources: tuple[Resource, ...] = ()
    parent: RunId | None = None  # the run that started this one (a sweep), if any
    enqueued_at: float = 0.0  # epoch seconds, set by Slots.enqueue
    token: int = 0  # fencing token, set at admission
    hold: bool = False  # not a run: the janitor holding resources while it cleans up
    pin: str | None = None  # the node the run must run on (placement); None: any node
    node: str | None = None  # the node that admitted it (set by admission), where it runs

    @classmethod
    def for_hold(cls, hold_id: RunId, recipe: Recipe, resources: tuple[Resource, ...],
                 node: str | None = None) -> RunSpec:
        """The janitor's hold of ``resources`` (no lane) while it cleans up ``recipe`` on
        ``node``'s engine (its slot counts there)."""
        return cls(hold_id, "", recipe, resources=resources, hold=True, node=node)

    def __post_init__(self) -> None:
        # A spec read back from Redis or JSON is parsed here; typed values pass as they are.
        object.__setattr__(self, "run_id", RunId(self.run_id))
        if not isinstance(self.hold, bool):
            raise InvalidInput(f"hold {self.hold!r} of run {self.run_id} is not a bool")
        if self.hold and self.lane != "":
            raise InvalidInput(f"hold {self.run_id} names lane {self.lane!r}: a hold has none")
        if not self.hold and (not isinstance(self.lane, str)
                              or not _LANE_RE.fullmatch(self.lane)):
            raise InvalidInput(
                f"lane {self.lane!r} of run {self.run_id} is invalid: expected a lane name "
                "such as quick, cold, reconcile or sweep"
            )
        object.__setattr__(self, "recipe", Recipe(self.recipe))
        if self.ref is not None:
            object.__setattr__(self, "ref", Ref(self.ref))
        resources = tuple(self.resources)
        for resource in resources:
            if not isinstance(resource, Resource):
                raise InvalidInput(f"resource {resource!r} of run {self.run_id} is not a "
                                   "Resource: build it with Resource.parse or its constructors")
        object.__setattr__(self, "resources", resources)
        if self.parent is not None:
            object.__setattr__(self, "parent", RunId(self.parent))
        at = self.enqueued_at
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) \
                or at < 0:
            raise InvalidInput(
                f"enqueued_at {at!r} of run {self.run_id} is invalid: it must be a finite "
                "number of epoch seconds >= 0"
            )
        object.__setattr__(self, "enqueued_at", float(at))
        if isinstance(self.token, bool) or not isinstance(self.token, int) or self.token < 0:
            raise InvalidInput(f"token {self.token!r} of run {self.run_id} is invalid")
        for name in ("pin", "node"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not NODE_RE.fullmatch(value)):
                raise InvalidInput(f"{name} {value!r} of run {self.run_id} is invalid: expected "
                                   "a node name, 1-63 of [a-z0-9-] (CCCI_NODE)")

    @property
    def canonical(self) -> str | None:
        """The recipe whose canonical this run holds, if any."""
        for resource in self.resources:
            if resource.kind == "canon":
                return resource.name
        return None

    @property
    def holds_slot(self) -> bool:
        """Whether the run counts against MAX_TESTS."""
        return Resource.slot() in self.resources

    def to_json(self) -> str:
        """The spec as a JSON object (for Celery task arguments and logs)."""
        data = asdict(self)
        data["resources"] = [str(r) for r in self.resources]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, s: str | bytes) -> RunSpec:
        """Parse ``to_json`` output; anything else raises ``InvalidInput``."""
        try:
            data = json.loads(s)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"run spec {s!r:.200} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"run spec {s!r:.200} is not a JSON object")
        if isinstance(data.get("resources"), list):
            data["resources"] = tuple(Resource.parse(r) for r in data["resources"])
        return cls._from_mapping(data, f"run spec {s!r:.200}")

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], what: str) -> RunSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted({"run_id", "lane", "recipe"} - set(data))
        if unknown or missing:
            parts = [f"unknown fields {unknown}" if unknown else "",
                     f"missing fields {missing}" if missing else ""]
            raise InvalidInput(f"{what} is invalid: {'; '.join(p for p in parts if p)}; "
                               f"expected the fields {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInput(f"{what} is invalid: {exc}") from exc

    def _hash_fields(self) -> dict[str, str]:
        out = {"run_id": self.run_id, "lane": self.lane, "recipe": self.recipe,
               "resources": ",".join(str(r) for r in self.resources),
               "enqueued_at": repr(self.enqueued_at)}
        if self.ref is not None:
            out["ref"] = self.ref
        if self.parent is not None:
            out["parent"] = self.parent
        if self.hold:
            out["hold"] = "1"
        if self.pin is not None:
            out["pin"] = self.pin
        if self.node is not None:
            out["node"] = self.node
        return out

    @classmethod
    def _from_hash(cls, raw: Mapping[str, str]) -> RunSpec:
        data: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("started", "holder")}
        try:
            if "enqueued_at" in data:
                data["enqueued_at"] = float(data["enqueued_at"])
            if "token" in data:
                data["token"] = int(data["token"])
            if "hold" in data:
                data["hold"] = data["hold"] == "1"
            elif data.get("lane") == LEGACY_HOLD_LANE:  # a hold stored before the marker
                data["lane"], data["hold"] = "", True
        except ValueError as exc:
            raise InvalidInput(f"stored run spec {raw!r} has a bad number") from exc
        data["resources"] = tuple(Resource.parse(r)
                                  for r in data.get("resources", "").split(",") if r)
        return cls._from_mapping(data, f"stored run spec {raw!r}")


@dataclass(frozen=True)
class Lease:
    """A run that occupies resources: live (``state`` ``live``) or dead and not yet cleaned
    up (``expired``, ``reaping``)."""

    run_id: RunId
    expires_at: float
    spec: RunSpec | None
    state: str = "live"
    started: bool = True
    holder: str | None = None  # "<node> <pid> <start>" of the step acting for it, if any

    @property
    def node(self) -> str | None:
        """The node whose process last acted for the run."""
        return self.holder.split()[0] if self.holder else None
