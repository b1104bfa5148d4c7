"""The one error tree of ccci-tasks.

Foreign errors (docker, redis, httpx, subprocess) are translated into these at the edge
that talks to them, chained with ``from exc``. Messages say what was expected, what was
seen, and what to do.

    CcciError
    ├── LeaseLost             a step's run lost its lease (expired, flushed): the step stops
    │                         and acts no more; the janitor owns the cleanup
    ├── InvalidInput          an outside string (recipe, ref, version, realm, domain) is bad;
    │                         nothing was deployed, written or deleted       → CLI exit 2
    ├── ConfigError           bad settings or a bad recipe_meta.py           → CLI exit 2
    ├── RunFailed             the app under test failed an assertion (a red verdict)
    ├── InfraError            something we depend on failed                  → CLI exit 3
    │   ├── PlatformError     Docker / abra / git failed
    │   │   ├── CommandFailed an external command exited non-zero
    │   │   ├── DeployFailed  a deploy cannot converge (missing image, crash loop)
    │   │   ├── UncleanStop   a stop had to kill a container: its data is not consistent
    │   │   └── AppNotFound   no such app, volume or recipe on the platform
    │   ├── WaitTimeout       a long wait ran out; names what it waited for and what it saw
    │   ├── BrokerError       Redis unreachable or misbehaving
    │   ├── KeycloakError     the Keycloak admin API failed
    │   ├── AlertRelayError   a push target did not take an alert
    │   └── ForgeError        the Gitea/Forgejo API failed or refused
    │       └── ForgeAccessError  the forge token cannot see a repository (a 404 where
    │                             the repository must exist): a misconfiguration
    └── StateError            the state root holds something unusable
        ├── RegistryError     canonical.json unreadable or inconsistent
        └── SnapshotError     a snapshot cannot be taken or restored
            ├── SnapshotRefused   the app is deployed (snapshots are taken undeployed)
            ├── IntegrityError    a tar's sha256 does not match its manifest
            └── UnsafeArchive     a tar member would escape its volume
"""

from __future__ import annotations


class CcciError(Exception):
    """Base of every error raised on purpose by ccci-tasks."""


class LeaseLost(CcciError):
    """The run no longer holds its lease with this step's fencing token. Raised before a
    platform mutation or a report write; nothing after it reaches the engine or the report."""


class InvalidInput(CcciError, ValueError):
    """An outside string failed validation. Raised before anything is touched."""


class ConfigError(CcciError):
    """Settings or a recipe_meta.py file are wrong; the message names the file/key."""


class RunFailed(CcciError):
    """The app under test failed a check. The run's verdict is ``fail``, not ``error``."""


class InfraError(CcciError):
    """An outside system failed: the run's verdict is ``error``."""


class PlatformError(InfraError):
    """Docker, abra or git did not do what was asked."""


class CommandFailed(PlatformError):
    """An external command exited non-zero. Carries argv (never the environment) and stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        super().__init__(
            f"{argv[0]} exited {returncode}: {' '.join(argv)}"
            + (f"; stderr: {' | '.join(tail)}" if tail else "")
        )


class DeployFailed(PlatformError):
    """A deploy will not converge: a task was rejected (e.g. missing image) or crash-loops."""


class UncleanStop(PlatformError):
    """A graceful stop had to kill a container (or could not be watched): its volumes may
    hold data as after a crash, so no snapshot is taken of them (R12.3). ``killed``: a
    container was seen killed (the app's fault), not merely unwatched."""

    def __init__(self, message: str, *, killed: bool = False) -> None:
        super().__init__(message)
        self.killed = killed


class AppNotFound(PlatformError):
    """The app, volume, recipe or version does not exist."""


class WaitTimeout(InfraError):
    """A wait ran out of time. ``waited_for`` and ``last_seen`` are in the message."""

    def __init__(self, waited_for: str, timeout_s: float, last_seen: str) -> None:
        self.waited_for = waited_for
        self.timeout_s = timeout_s
        self.last_seen = last_seen
        super().__init__(
            f"timed out after {timeout_s:g} s waiting for {waited_for}; last seen: {last_seen}"
        )


class BrokerError(InfraError):
    """Redis (broker, results or run slots) failed."""


class KeycloakError(InfraError):
    """The Keycloak admin API failed or refused."""


class AlertRelayError(InfraError):
    """A push target did not accept an alert; the alert stays pending."""


class ForgeError(InfraError):
    """The Gitea/Forgejo API did not answer, or refused. ``status`` is the HTTP status, if any.

    Messages name the method, the API path and what the forge said; never the token.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ForgeAccessError(ForgeError):
    """The forge token cannot see a repository the webhook came from (the forge answers 404
    for what the token may not read). Retrying does not help; an operator must give the
    token's user read access or fix CCCI_FORGE_OWNER / CCCI_FORGE_TOKEN."""


class StateError(CcciError):
    """The state root holds something unusable."""


class RegistryError(StateError):
    """A canonical registry file is missing fields, unreadable or inconsistent."""


class SnapshotError(StateError):
    """A snapshot could not be taken, verified or restored."""


class SnapshotRefused(SnapshotError):
    """Snapshots are taken only while the app is undeployed."""


class IntegrityError(SnapshotError):
    """A snapshot tar does not match the sha256 in its manifest."""


class UnsafeArchive(SnapshotError):
    """A tar member would land outside its volume (absolute, ``..`` or an escaping link)."""
