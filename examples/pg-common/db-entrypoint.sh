#!/bin/bash
# PostgreSQL 15 from Debian's packages, started the way the official postgres image does it.
#
# First boot on an empty data directory ($PGDATA): initdb with data checksums, the superuser
# $POSTGRES_USER whose password is the first line of $POSTGRES_PASSWORD_FILE (the Docker
# secret) and scram-sha-256 for every connection; the database $POSTGRES_DB is created in
# single-user mode (nothing listens yet), then $DB_INIT_DELAY more seconds stand for loading
# initial data. Every boot: postgres itself (PID 1, as user postgres) listening on
# 127.0.0.1:$CCCI_DB_PORT only (host network), so the stop signal reaches it: SIGINT is
# PostgreSQL's fast shutdown, which leaves the cluster "shut down" (clean).
#
# DB_IGNORE_STOP=1 (for tests) keeps a shell as PID 1 that ignores the stop signal: the stop
# then takes the whole stop grace period and ends with SIGKILL, the cluster left "in
# production" (a crash, as after a power cut).
set -euo pipefail

bin=/usr/lib/postgresql/15/bin
data=${PGDATA:?PGDATA is not set}
port=${CCCI_DB_PORT:?CCCI_DB_PORT is not set: the platform must give the database a port}
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
pwfile=${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE is not set (the Docker secret)}

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
}

mkdir -p "$data"
chown postgres:postgres "$data"
chmod 0700 "$data"

if [ ! -s "$data/PG_VERSION" ]; then
    echo "db: first boot: initdb into $data (data checksums, scram-sha-256, user $user)"
    as_postgres "$bin/initdb" --pgdata="$data" --username="$user" --pwfile="$pwfile" \
        --auth-host=scram-sha-256 --auth-local=scram-sha-256 --data-checksums \
        --encoding=UTF8 --locale=C >/dev/null
    printf 'CREATE DATABASE "%s";\n' "$db" \
        | as_postgres "$bin/postgres" --single -D "$data" -c listen_addresses='' template1 \
        >/dev/null
    echo "db: created database $db; loading for ${DB_INIT_DELAY:-0} s"
    sleep "${DB_INIT_DELAY:-0}"
fi

set -- "$bin/postgres" -D "$data" -c listen_addresses=127.0.0.1 -c port="$port" \
    -c unix_socket_directories=/tmp
if [ "${DB_IGNORE_STOP:-0}" = "1" ]; then
    echo "db: DB_IGNORE_STOP=1: this shell ignores the stop signal; a stop ends with SIGKILL"
    trap '' INT TERM
    as_postgres "$@" &
    wait "$!"
    exit $?
fi
echo "db: starting PostgreSQL on 127.0.0.1:$port"
exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"
