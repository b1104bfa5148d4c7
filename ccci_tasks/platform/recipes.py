"""Read-only access to one recipe's git repository: versions, release notes, commits, trees.

``git`` runs with argument lists only (never a shell), with a timeout, in a C locale and with
terminal prompts off. Every ref, version and path is validated before any process starts, so
an option-like or shell-like string (``--upload-pack=x``, ``$(id)``) never reaches git.

Refs: a version tag (``1.7.1+1.27.2``, see ``naming.validate_version``) is read as
``refs/tags/<version>``; anything else must pass ``naming.validate_ref`` (a sha or a safe
ref name such as ``main``).

Only ``fetch`` writes to the repository: it adds the objects of a pull request's head and one
ref under ``refs/pull/``; HEAD, branches, tags and the working tree are never touched. Files
are read from git objects, and ``checkout`` exports a tree with ``git archive`` into a
separate directory. Several runs may therefore share one recipe repository.

Errors: a missing repository, ref or version is ``AppNotFound``; git exiting non-zero is
``CommandFailed``; git missing or running out of time is ``PlatformError``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from pydantic import SecretStr

from ccci_tasks.errors import AppNotFound, CommandFailed, InvalidInput, PlatformError
from ccci_tasks.naming import (
    Recipe,
    validate_ref,
    validate_version,
)
from ccci_tasks.proc import run
from ccci_tasks.versions import is_version, parse_version
from ccci_tasks.versions import latest as latest_version

__all__ = [
    "DEFAULT_GIT_TIMEOUT_S",
    "NOTES_LOCATIONS",
    "SHORT_SHA_LEN",
    "HttpToken",
    "RecipeRepo",
    "validate_fetch_url",
]

DEFAULT_GIT_TIMEOUT_S: Final = 60.0
MAX_URL_LENGTH: Final = 2000
SHORT_SHA_LEN: Final = 8  # abra labels chaos deploys with formatter.SmallSHA: 8 hex digits
NEXT: Final = "next"
# Where release notes of version ``v`` live, first match wins.
NOTES_LOCATIONS: Final = ("release/{v}", "release/{v}.md", "releaseNotes/{v}.md")

_SHA_OUT_RE: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_PATH_PART_RE: Final = re.compile(r"[A-Za-z0-9._+@=,][A-Za-z0-9._+@=,-]*")
_REGULAR_FILE_MODES: Final = ("100644", "100755")
_MAX_PATH_LENGTH: Final = 4096
_FULL_SHA_RE: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_URL_CHARS_RE: Final = re.compile(r"[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+")
# Only http(s) remotes: no ssh (host keys, agents), file, ext:: or other transports.
_FETCH_PROTOCOLS: Final = (
    "-c", "protocol.allow=never",
    "-c", "protocol.http.allow=always",
    "-c", "protocol.https.allow=always",
    "-c", "credential.helper=",
)


def validate_fetch_url(url: str) -> str:
    """An http(s) URL of a git remote without credentials, else ``InvalidInput``."""
    ok = isinstance(url, str) and 0 < len(url) <= MAX_URL_LENGTH
    ok = ok and bool(_URL_CHARS_RE.fullmatch(url))
    if ok:
        parts = urlsplit(url)
        ok = (parts.scheme in ("http", "https") and bool(parts.hostname)
              and parts.username is None and parts.password is None)
    if not ok:
        raise InvalidInput(
            f"git remote URL {url!r} is invalid: expected an http:// or https:// URL "
            "without credentials, such as 'https://git.example.org/owner/recipe.git'"
        )
    return url


@dataclass(frozen=True)
class HttpToken:
    """A forge token git sends to the URLs under ``url_prefix``, and to nothing else.

    git gets it through its environment (``GIT_CONFIG_COUNT``/``_KEY_0``/``_VALUE_0``, git
    2.31+) as ``http.<url_prefix>.extraHeader``, never on its command line, which any local
    user can read in ``/proc/<pid>/cmdline``. The header is HTTP Basic with the token as the
    user name and an empty password, which every Gitea and Forgejo version takes as a token
    for git over HTTP. The url-scoped key keeps the token away from any other host, a
    redirect's included.
    """

    url_prefix: str
    token: SecretStr

    def __post_init__(self) -> None:
        validate_fetch_url(self.url_prefix)
        if not self.url_prefix.endswith("/"):
            object.__setattr__(self, "url_prefix", self.url_prefix + "/")

    def env(self) -> dict[str, str]:
        pair = f"{self.token.get_secret_value()}:".encode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{self.url_prefix}.extraHeader",
            "GIT_CONFIG_VALUE_0": "Authorization: Basic " + base64.b64encode(pair).decode(),
        }


def _validate_path(path: str) -> str:
    """A repository-relative file path: ``/``-separated, no ``.``/``..``, no option-like start."""
    ok = isinstance(path, str) and 0 < len(path) <= _MAX_PATH_LENGTH
    if ok:
        parts = path.split("/")
        ok = all(_PATH_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts)
    if not ok:
        raise InvalidInput(
            f"repository path {path!r} is invalid: it must be a relative '/'-separated path "
            "of letters, digits and '._+@=,-', without '.' or '..' components or a leading "
            "'-' or '/'; give a path such as 'release/1.0.0+1.2' or 'compose.yml'"
        )
    return path


class RecipeRepo:
    """One recipe git repository at ``path`` (e.g. ``<CCCI_RECIPES_DIR>/<recipe>``)."""

    def __init__(
        self, path: Path, recipe: Recipe, *, timeout_s: float = DEFAULT_GIT_TIMEOUT_S
    ) -> None:
        self.recipe = recipe
        self.path = Path(path)
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"RecipeRepo({str(self.path)!r}, {self.recipe!r})"

    # --- running git ------------------------------------------------------------------

    def _missing(self) -> AppNotFound:
        return AppNotFound(
            f"recipe {self.recipe!r}: no git repository at {str(self.path)!r}; clone the "
            "recipe there or check CCCI_RECIPES_DIR"
        )

    def _run(
        self, *args: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``git -C <path> <args>``; returns whatever exit code git gave."""
        if not self.path.is_dir():
            raise self._missing()
        argv = ["git", "-C", str(self.path), *args]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0",
               **(extra_env or {})}
        proc = run(argv, timeout_s=self.timeout_s, env=env, check=False,
                   hint="install git on the worker")
        if proc.returncode != 0 and b"not a git repository" in proc.stderr:
            raise self._missing()
        return proc

    def _git(self, *args: str, extra_env: Mapping[str, str] | None = None) -> bytes:
        """Run git and return its stdout; a non-zero exit is ``CommandFailed``."""
        proc = self._run(*args, extra_env=extra_env)
        if proc.returncode != 0:
            argv = [str(a) for a in proc.args]
            raise CommandFailed(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        return proc.stdout

    @staticmethod
    def _rev(ref: str) -> str:
        """The git revision for ``ref``: ``refs/tags/<v>`` for a version, else a checked ref."""
        if isinstance(ref, str) and is_version(ref):
            return f"refs/tags/{ref}"
        return validate_ref(ref)

    # --- versions ---------------------------------------------------------------------

    def versions(self) -> list[str]:
        """The version tags, oldest first; tags that are no version are left out."""
        out = self._git("tag", "--list").decode("utf-8", "replace")
        return sorted((t for t in out.split() if is_version(t)), key=parse_version)

    def latest(self) -> str | None:
        """The newest version tag, or ``None`` when the recipe has none."""
        return latest_version(self.versions())

    # --- commits ----------------------------------------------------------------------

    def commit(self, ref: str) -> str:
        """The full sha of the commit ``ref`` (a version, sha or ref name) points at."""
        rev = self._rev(ref)
        proc = self._run("rev-parse", "--verify", "--quiet", "--end-of-options", rev + "^{commit}")
        sha = proc.stdout.decode("ascii", "replace").strip()
        if proc.returncode != 0 or not _SHA_OUT_RE.fullmatch(sha):
            raise AppNotFound(
                f"ref {ref!r} names no commit in recipe {self.recipe!r} at {str(self.path)!r}; "
                "fetch the recipe or check the ref/version"
            )
        return sha

    def fetch(self, url: str, source_ref: str, dest_ref: str, expect_sha: str, *,
              auth: HttpToken | None = None) -> str:
        """Fetch ``source_ref`` of the http(s) remote ``url`` into ``dest_ref`` and return its sha.

        For a pull request: ``url`` is the base repository, ``source_ref`` and ``dest_ref``
        are ``refs/pull/<n>/head`` (Gitea and Forgejo keep every PR's head there). The fetched
        commit must be ``expect_sha`` (the head the forge reported); if the head has moved
        since, ``PlatformError`` says so and ``dest_ref`` keeps whatever it pointed at before.
        ``auth`` (a private repository) is sent only to URLs under its prefix. Tags are not
        fetched; nothing but ``dest_ref`` changes.
        """
        validate_fetch_url(url)
        validate_ref(source_ref)
        validate_ref(dest_ref)
        if not dest_ref.startswith("refs/pull/"):
            raise InvalidInput(
                f"fetch destination {dest_ref!r} is invalid: only refs under refs/pull/ are "
                "written, e.g. 'refs/pull/7/head'"
            )
        if not isinstance(expect_sha, str) or not _FULL_SHA_RE.fullmatch(expect_sha):
            raise InvalidInput(
                f"expected head {expect_sha!r} is invalid: give the full lowercase sha "
                "(40 or 64 hex digits) the forge reported"
            )
        staging = f"refs/ccci-fetch/{os.getpid()}/{dest_ref.removeprefix('refs/')}"
        self._git(*_FETCH_PROTOCOLS, "fetch", "--quiet", "--no-tags", "--no-recurse-submodules",
                  "--no-write-fetch-head", "--force", "--", url, f"+{source_ref}:{staging}",
                  extra_env=auth.env() if auth is not None else None)
        try:
            got = self.commit(staging)
            if got != expect_sha:
                raise PlatformError(
                    f"{source_ref} of {url} is at {got[:SHORT_SHA_LEN]}, expected "
                    f"{expect_sha[:SHORT_SHA_LEN]} (the head the forge reported): the branch "
                    "moved; the next attempt reads the new head"
                )
            self._git("update-ref", "-m", f"ccci: fetch {source_ref} from {url}", "--",
                      dest_ref, got)
        finally:
            self._run("update-ref", "-d", "--", staging)
        return got

    def short_sha(self, ref: str) -> str:
        """The 7-character short sha of ``ref``'s commit (what chaos-version labels carry)."""
        return self.commit(ref)[:SHORT_SHA_LEN]

    # --- files ------------------------------------------------------------------------

    def _blob(self, commit: str, path: str) -> str | None:
        """The text of regular file ``path`` in ``commit``, or ``None`` if there is none."""
        listing = self._git("ls-tree", "-z", "--full-tree", commit, "--", path)
        for entry in listing.split(b"\0"):
            meta, _, name = entry.partition(b"\t")
            fields = meta.decode("ascii", "replace").split()
            if name.decode("utf-8", "replace") != path or len(fields) != 3:
                continue
            mode, kind, sha = fields
            if kind != "blob" or mode not in _REGULAR_FILE_MODES:
                return None
            return self._git("cat-file", "blob", sha).decode("utf-8", "replace")
        return None

    def file_at(self, ref: str, path: str) -> str | None:
        """The text of ``path`` as of ``ref``, or ``None`` if that commit has no such file."""
        _validate_path(path)
        return self._blob(self.commit(ref), path)

    def release_notes(self, version: str) -> str | None:
        """Release notes of ``version`` as of its tag, or of ``"next"`` as of HEAD.

        Looks in ``release/<v>``, ``release/<v>.md`` and ``releaseNotes/<v>.md``, in that
        order. ``None`` when there are none; an unknown version is ``AppNotFound``.
        """
        rev = "HEAD" if version == NEXT else validate_version(version)
        commit = self.commit(rev)
        for template in NOTES_LOCATIONS:
            text = self._blob(commit, template.format(v=version))
            if text is not None:
                return text
        return None

    # --- trees ------------------------------------------------------------------------

    def checkout(self, ref: str, dest: Path) -> Path:
        """Export the tree of ``ref`` into ``dest`` (absent or empty) and return ``dest``.

        Uses ``git archive`` and Python's tarfile with the ``data`` filter (no absolute paths,
        no escaping links, no device files). The shared repository, its HEAD, index and
        working tree are left alone. The tree lands in a temporary directory beside ``dest``
        and is moved into place whole, so a failure leaves no partial tree. The archive is
        held in memory: recipes are small. ``export-ignore`` attributes are honoured.
        """
        commit = self.commit(ref)
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise PlatformError(
                f"cannot check out {ref!r} of {self.recipe!r} into {str(dest)!r}: it exists "
                "and is not an empty directory; give a fresh directory"
            )
        archive = self._git("archive", "--format=tar", commit)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
                tar.extractall(tmp, filter="data")
            tmp.chmod(0o755)
            os.replace(tmp, dest)
        except (tarfile.TarError, OSError) as exc:
            raise PlatformError(
                f"cannot export {ref!r} ({commit[:SHORT_SHA_LEN]}) of {self.recipe!r} "
                f"into {str(dest)!r}: {exc}"
            ) from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return dest
