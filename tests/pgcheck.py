"""PostgreSQL's own checks of a data directory, offline (nothing of the app runs).

``check(root)`` finds the cluster under ``root`` (a volume's mountpoint or an extracted
snapshot tar; PGDATA may be a subdirectory) and reports:

* ``state``: ``Database cluster state`` from ``pg_controldata`` (``shut down`` after a clean
  stop; ``in production`` after a kill);
* ``checksums``: ``pg_checksums --check`` (needs a cleanly stopped cluster and data checksums);
* ``dump``: ``pg_dump`` of every database, made by a throwaway server started on a *copy* of
  the directory (never on the directory itself: a start would change it), as the host's
  ``postgres`` user with a socket in a temp dir and no TCP listener. ``pg_dump`` 15.14+ writes
  a random ``\\restrict`` key into every dump, so those lines are dropped.

The tools are the host's (``postgresql-15``, ``/usr/lib/postgresql/15/bin``), the same major
version as the example image's server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
TIMEOUT_S = 120
_STATE = re.compile(r"^Database cluster state:\s+(.+)$", re.MULTILINE)
_ROLNAME = re.compile(r'rolname = "([^"]+)"')


@dataclass(frozen=True)
class ClusterCheck:
    pgdata: Path
    state: str
    checksums_ok: bool
    checksums: str
    dump: str

    def problems(self, known_good_dump: str | None = None) -> list[str]:
        """What is wrong with it: not shut down cleanly, bad checksums, another dump."""
        found = []
        if self.state != "shut down":
            found.append(f"cluster state is {self.state!r}, not 'shut down'")
        if not self.checksums_ok:
            found.append(f"pg_checksums --check failed: {self.checksums}")
        if known_good_dump is not None and self.dump != known_good_dump:
            found.append("its dump differs from the known-good's: " + diff(known_good_dump,
                                                                            self.dump))
        return found


def available() -> bool:
    return all((BIN / tool).is_file() for tool in ("pg_controldata", "pg_checksums", "pg_dump",
                                                    "postgres", "pg_ctl", "psql"))


def _run(argv: list[str], *, env: dict[str, str] | None = None, input: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                          env=env, input=input)


def find_pgdata(root: Path) -> Path:
    """The cluster directory under ``root`` (itself or a subdirectory, two levels at most)."""
    for candidate in (root, *sorted(root.glob("*")), *sorted(root.glob("*/*"))):
        if (candidate / "PG_VERSION").is_file() and (candidate / "global" / "pg_control").is_file():
            return candidate
    raise AssertionError(f"no PostgreSQL cluster (PG_VERSION, global/pg_control) under {root}")


def controldata_state(pgdata: Path) -> str:
    done = _run([str(BIN / "pg_controldata"), "-D", str(pgdata)], env={"LC_ALL": "C"})
    found = _STATE.search(done.stdout)
    assert done.returncode == 0 and found, f"pg_controldata failed: {done.stderr}"
    return found.group(1).strip()


def checksums(pgdata: Path) -> tuple[bool, str]:
    done = _run([str(BIN / "pg_checksums"), "--check", "-D", str(pgdata)])
    text = " | ".join((done.stdout + done.stderr).strip().splitlines())
    return done.returncode == 0, text


def _as_postgres(*argv: str) -> list[str]:
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def dump(pgdata: Path) -> str:
    """Every connectable database of a copy of ``pgdata``, dumped by a throwaway server."""
    with tempfile.TemporaryDirectory(prefix="ccci-pgcheck-") as tmp:
        copy, sockets = Path(tmp) / "data", Path(tmp) / "sockets"
        shutil.copytree(pgdata, copy, symlinks=True)
        sockets.mkdir()
        (copy / "pg_hba.conf").write_text("local all all trust\n")
        (copy / "postmaster.pid").unlink(missing_ok=True)
        subprocess.run(["chown", "-R", "postgres:postgres", tmp], check=True)
        copy.chmod(0o700)
        single = _run(_as_postgres(str(BIN / "postgres"), "--single", "-D", str(copy),
                                   "template1"),
                      input="SELECT rolname FROM pg_authid WHERE oid = 10;\n")
        owner = _ROLNAME.search(single.stdout)
        assert owner, f"no bootstrap superuser found: {single.stdout[-500:]} {single.stderr}"
        user = owner.group(1)
        log = Path(tmp) / "server.log"
        started = _run(_as_postgres(
            str(BIN / "pg_ctl"), "start", "-w", "-D", str(copy), "-l", str(log), "-o",
            f"-c listen_addresses='' -c unix_socket_directories={sockets} -c port=5432 "
            "-c fsync=off"))
        assert started.returncode == 0, f"throwaway server: {started.stderr} {log.read_text()}"
        try:
            listing = _run(_as_postgres(
                str(BIN / "psql"), "-h", str(sockets), "-p", "5432", "-U", user, "-At",
                "-d", "template1", "-c", "SELECT datname FROM pg_database WHERE datallowconn "
                "AND NOT datistemplate ORDER BY 1"))
            assert listing.returncode == 0, listing.stderr
            parts = []
            for database in listing.stdout.split():
                dumped = _run(_as_postgres(str(BIN / "pg_dump"), "-h", str(sockets), "-p",
                                           "5432", "-U", user, "--no-password", database))
                assert dumped.returncode == 0, dumped.stderr
                lines = [line for line in dumped.stdout.splitlines()
                         if not line.startswith(("\\restrict", "\\unrestrict"))]
                parts.append(f"-- database {database}\n" + "\n".join(lines))
            return "\n".join(parts)
        finally:
            _run(_as_postgres(str(BIN / "pg_ctl"), "stop", "-m", "fast", "-D", str(copy)))


def check(root: Path) -> ClusterCheck:
    """The three checks of the cluster under ``root``, offline."""
    pgdata = find_pgdata(root)
    ok, text = checksums(pgdata)
    return ClusterCheck(pgdata, controldata_state(pgdata), ok, text, dump(pgdata))


def check_tar(tar: Path) -> ClusterCheck:
    """The checks of a snapshot tar, extracted into a temp dir."""
    with tempfile.TemporaryDirectory(prefix="ccci-pgsnap-") as tmp:
        subprocess.run(["tar", "--extract", "--file", str(tar), "--directory", tmp,
                        "--numeric-owner", "--same-permissions"], check=True, timeout=TIMEOUT_S)
        return check(Path(tmp))


def rows(dumped: str, table: str) -> int:
    """The rows of ``table``'s COPY block in a dump."""
    found = re.search(rf"^COPY public\.{table} \(.*?\) FROM stdin;\n(.*?)^\\\.$", dumped,
                      re.MULTILINE | re.DOTALL)
    assert found, f"no COPY block of {table} in the dump"
    return len(found.group(1).splitlines())


def diff(old: str, new: str, lines: int = 12) -> str:
    import difflib

    changed = [line for line in difflib.unified_diff(old.splitlines(), new.splitlines(),
                                                     "known-good", "now", lineterm="", n=0)
               if not line.startswith("@@")]
    return " | ".join(changed[:lines]) + (" ..." if len(changed) > lines else "")
