"""A small app on PostgreSQL, shaped like the apps Co-op Cloud recipes run.

On boot it connects to its database with the password from its Docker secret, trying for
``$DB_WAIT_S`` seconds, and exits (1) when the database does not accept the connection by
then, as many real apps do: the platform restarts it. Then it applies the migrations of
``$MIGRATIONS_FILE`` it has not applied yet, in order, each recorded in ``schema_migrations``;
a migration that fails makes it exit (1), so it keeps failing until the migration is fixed.
``APP_MODE=worker`` does not migrate: it waits for every migration to be applied (exiting 1
while one is pending), then records a heartbeat every few seconds.

The app records each boot in ``boots`` and serves on ``127.0.0.1:$CCCI_HTTP_PORT`` (host
network): ``GET /`` answers JSON with its version, the migrations applied and pending, and the
row count of every table; ``GET /healthz`` answers ``ok``. SIGTERM or SIGINT: it exits (0).

Migrations file: sections that start with a line ``-- migration <n>: <name>``. A section runs
in one transaction, unless its next line is ``-- no-transaction``: then each statement (ending
with ``;`` at the end of a line) is committed on its own, as migration tools do for statements
that cannot run in a transaction.
"""

import http.server
import json
import os
import re
import signal
import sys
import threading
import time

import psycopg2

HEADER = re.compile(r"^-- migration (\d+): (.+)$", re.MULTILINE)
WORKER_PERIOD_S = 3
WORKER_WAIT_S = 60  # how long the worker waits for the app to apply the migrations


def log(message):
    print(f"{os.environ.get('APP_MODE', 'app')}: {message}", file=sys.stderr, flush=True)


def connect():
    """A connection to the database; tries for $DB_WAIT_S seconds (default: once), then exits."""
    with open(os.environ["DB_PASSWORD_FILE"], encoding="utf-8") as handle:
        password = handle.readline().strip()
    deadline = time.monotonic() + float(os.environ.get("DB_WAIT_S", "0"))
    while True:
        try:
            return psycopg2.connect(
                host=os.environ.get("DB_HOST", "127.0.0.1"), port=int(os.environ["DB_PORT"]),
                dbname=os.environ["DB_NAME"], user=os.environ["DB_USER"], password=password,
                connect_timeout=3, application_name=os.environ.get("APP_MODE", "app"))
        except psycopg2.OperationalError as exc:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            log(f"the database is not ready ({' '.join(str(exc).split())}); exiting")
            sys.exit(1)


def read_migrations():
    with open(os.environ.get("MIGRATIONS_FILE", "/migrations.sql"), encoding="utf-8") as handle:
        text = handle.read()
    found = []
    marks = list(HEADER.finditer(text))
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(text)
        body = text[mark.end():end].strip("\n")
        atomic = not body.startswith("-- no-transaction")
        found.append((int(mark.group(1)), mark.group(2).strip(), body, atomic))
    return sorted(found)


def statements(body):
    """The statements of a section: each ends with ';' at the end of a line."""
    current, out = [], []
    for line in body.splitlines():
        if line.startswith("--") and not current:
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current))
            current = []
    return out


def applied(conn):
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return set()
        cur.execute("SELECT version FROM schema_migrations")
        return {row[0] for row in cur.fetchall()}


def migrate(conn):
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                    " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
    done = applied(conn)
    for version, name, body, atomic in read_migrations():
        if version in done:
            continue
        log(f"applying migration {version}: {name}")
        try:
            if atomic:
                with conn, conn.cursor() as cur:
                    cur.execute(body)
                    cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                (version, name))
            else:
                conn.autocommit = True
                with conn.cursor() as cur:
                    for statement in statements(body):
                        cur.execute(statement)
                    cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                (version, name))
                conn.autocommit = False
        except psycopg2.Error as exc:
            log(f"migration {version} ({name}) failed: {' '.join(str(exc).split())}; exiting")
            sys.exit(1)


def pending(conn):
    done = applied(conn)
    return [v for v, _, _, _ in read_migrations() if v not in done]


def summary(conn):
    with conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        tables = [row[0] for row in cur.fetchall()]
        counts = {}
        for table in tables:
            cur.execute(f'SELECT count(*) FROM "{table}"')
            counts[table] = cur.fetchone()[0]
        cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        migrations = [{"version": v, "name": n} for v, n in cur.fetchall()]
    return {"app": os.environ.get("APP_NAME", "app"), "version": os.environ.get("APP_VERSION"),
            "migrations": migrations, "pending": pending(conn), "tables": counts}


def serve(conn):
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/healthz":
                self.answer(200, "text/plain", b"ok\n")
                return
            if self.path != "/":
                self.answer(404, "text/plain", b"not found\n")
                return
            try:
                with lock:
                    body = json.dumps(summary(conn), indent=1).encode()
            except psycopg2.Error as exc:
                log(f"lost the database ({' '.join(str(exc).split())}); exiting")
                self.answer(503, "text/plain", b"database gone\n")
                os._exit(1)
            self.answer(200, "application/json", body + b"\n")

        def answer(self, status, kind, body):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            return

    port = int(os.environ["CCCI_HTTP_PORT"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    log(f"{os.environ.get('APP_VERSION')} serving on 127.0.0.1:{port}")
    server.serve_forever()


def work(conn):
    while True:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS worker_heartbeat (id integer PRIMARY KEY,"
                        " beats bigint NOT NULL)")
            cur.execute("INSERT INTO worker_heartbeat VALUES (1, 1) ON CONFLICT (id) DO UPDATE"
                        " SET beats = worker_heartbeat.beats + 1")
        time.sleep(WORKER_PERIOD_S)


def stop(signum, frame):
    log(f"stopping on signal {signum}")
    sys.exit(0)


def main():
    # PID 1 of a container gets no signal it does not handle: without this, every stop would
    # end with SIGKILL after the grace period.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    conn = connect()
    if os.environ.get("APP_MODE") == "worker":
        # The app applies the migrations when it boots; the worker waits for that (the two
        # start together), and gives up, to be restarted, only when it takes far too long.
        deadline = time.monotonic() + WORKER_WAIT_S
        while waiting := pending(conn):
            if time.monotonic() > deadline:
                log(f"migrations {waiting} are still not applied after {WORKER_WAIT_S} s; "
                    "exiting")
                sys.exit(1)
            time.sleep(0.5)
        log("every migration is applied; working")
        work(conn)
        return
    migrate(conn)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO boots (version) VALUES (%s)", (os.environ.get("APP_VERSION"),))
    serve(conn)


if __name__ == "__main__":
    main()
