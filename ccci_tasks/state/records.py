"""One way to keep a JSON record under the state root: a frozen pydantic model, read and
written whole.

A record type is a ``Record``: its fields are the file's keys and its validators say what a
good value is, the same check for a value made in code and one read from disk. Making a
record from a bad value raises ``InvalidInput`` naming the field and the value, so nothing
is written; reading a file that holds no such record raises ``StateError`` (or the caller's
subclass of it) naming the file. Keys a record does not know are ignored when it is read, so
a file written by a newer version still loads. Files are written atomically, keys sorted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

import ccci_tasks.atomic as atomic
from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.naming import validate_version
from ccci_tasks.state.clock import iso, parse_iso, utc_now

MAX_SHOWN: Final = 80  # characters of a bad value quoted in an error


class Record(BaseModel):
    """A JSON record under the state root (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidInput(f"{type(self).__name__}: {problems(exc)}") from exc

    def to_json(self) -> dict[str, Any]:
        """The record as it is stored."""
        return self.model_dump(mode="json")


R = TypeVar("R", bound=Record)
M = TypeVar("M", bound=BaseModel)  # any pydantic model kept as a file (a Record, a run report)
N = TypeVar("N", bound=str)  # a record's name: a value type such as ``Recipe``


def problems(exc: ValidationError) -> str:
    """What is wrong, one clause per bad field: our validators' own words where they spoke."""
    found: list[str] = []
    for error in exc.errors():
        cause = error.get("ctx", {}).get("error")
        where = ".".join(str(part) for part in error["loc"])
        if isinstance(cause, Exception):
            found.append(str(cause))
        elif error["type"] == "missing":
            found.append(f"missing field {where}")
        else:
            shown = repr(error["input"])
            if len(shown) > MAX_SHOWN:
                shown = shown[:MAX_SHOWN] + "..."
            found.append(f"{where or 'the record'} {shown} is invalid: {error['msg']}")
    return "; ".join(found)


def read(path: Path, model: type[M], *, what: str,
         error: type[StateError] = StateError) -> M | None:
    """The record in ``path``, ``None`` when there is no such file; ``error`` naming the
    file when it cannot be read or holds no valid ``model``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"{path}: unreadable {what}: {exc}") from exc
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise error(f"{path}: invalid {what}: {problems(exc)}") from exc


def write(path: Path, record: Record, mode: int = 0o644) -> Path:
    """Write ``record`` to ``path`` atomically; return the path."""
    atomic.write_json(path, record.to_json(), mode)
    return path


@dataclass(frozen=True)
class Store(Generic[R, N]):
    """Records of one type, one file per name (a recipe's registry, an app's state), each
    file naming itself in ``name_field``."""

    model: type[R]
    what: str
    name_field: str
    path: Callable[[Path, N], Path]  # (state root, name) -> its file
    names: Callable[[Path], Iterable[N]]  # the names that may have a file
    error: type[StateError] = StateError

    def read(self, state_dir: Path, name: N) -> R | None:
        """The record of ``name``, ``None`` when it has none."""
        path = self.path(state_dir, name)
        record = read(path, self.model, what=self.what, error=self.error)
        if record is not None and (named := getattr(record, self.name_field)) != name:
            raise self.error(f"{path}: the file names {self.name_field} {named!r}, expected "
                             f"{name!r}")
        return record

    def write(self, state_dir: Path, record: R) -> Path:
        return write(self.path(state_dir, getattr(record, self.name_field)), record)

    def all(self, state_dir: Path) -> list[R]:
        """Every name's record, sorted by name."""
        found = (self.read(state_dir, name) for name in sorted(self.names(state_dir)))
        return [record for record in found if record is not None]


# --- field types: a value that passes these is good wherever it came from ---------------


def _utc_text(text: str) -> str:
    try:
        parse_iso(text)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"ts {text!r} is invalid: expected ISO 8601 UTC") from exc
    return text


def one_of(what: str, allowed: tuple[str, ...]) -> BeforeValidator:
    """A field that takes one of ``allowed``; the error names ``what``."""

    def check(value: object) -> object:
        if value not in allowed:
            raise InvalidInput(f"{what} {value!r} is invalid: expected one of {allowed}")
        return value

    return BeforeValidator(check)


def now_text() -> str:
    """Now, as a record's ``ts`` (ISO 8601 UTC with microseconds and ``Z``)."""
    return iso(utc_now())


VersionText = Annotated[str, BeforeValidator(validate_version)]
UtcText = Annotated[str, AfterValidator(_utc_text)]
