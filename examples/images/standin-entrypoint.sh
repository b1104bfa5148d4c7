#!/bin/sh
# A stand-in for a live-warm app (keycloak, traefik): busybox httpd on
# 127.0.0.1:$CCCI_HTTP_PORT (host network). What a version does is data, not code: the
# key=value lines of /etc/ccci-behaviour, baked into each version's image by
# examples/make_recipes.py from the recipe's recipe.json:
#
#   health_path   the path served 200 once booted (default /health)
#   health        ok (default) | missing: the health path is not served (answers 404)
#   health_body   the health answer's body (default OK)
#   data_dir      the data volume's mount point; empty (default): stateless
#   schema        the data schema this version migrates its volume to (an integer). A
#                 volume holding a newer schema is refused (exit 3), as a real app refuses a
#                 database migrated forward: only a restored snapshot lets an older version
#                 boot again on it.
#   boot_delay_s  seconds of booting before anything is served (default 0)
#   write         a file this version writes into data_dir at boot (e.g. broken.txt)
#   exit_code     non-zero: exit with it right after writing (a crash-looping version)
#
# Every boot with a data_dir appends to <data_dir>/boots.txt and records the schema in
# <data_dir>/schema. GET /version answers "<recipe> <version>".
set -eu

VERSION="$(cat /etc/ccci-version)"
PORT="${CCCI_HTTP_PORT:?CCCI_HTTP_PORT is not set: the platform must give the app a port}"
HEALTH_PATH=/health
HEALTH=ok
HEALTH_BODY=OK
DATA_DIR=""
SCHEMA=1
BOOT_DELAY_S=0
WRITE=""
EXIT_CODE=0
WWW=/var/www
child=""

if [ -f /etc/ccci-behaviour ]; then
    while IFS='=' read -r key value; do
        case "$key" in
            health_path) HEALTH_PATH="$value" ;;
            health) HEALTH="$value" ;;
            health_body) HEALTH_BODY="$value" ;;
            data_dir) DATA_DIR="$value" ;;
            schema) SCHEMA="$value" ;;
            boot_delay_s) BOOT_DELAY_S="$value" ;;
            write) WRITE="$value" ;;
            exit_code) EXIT_CODE="$value" ;;
            "") ;;
            *) echo "$VERSION: unknown behaviour key '$key'" >&2; exit 2 ;;
        esac
    done < /etc/ccci-behaviour
fi

stop() {
    echo "$VERSION: stopping"
    if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi
    exit 0
}
trap stop TERM INT

if [ -n "$DATA_DIR" ]; then
    mkdir -p "$DATA_DIR"
    found=0
    if [ -f "$DATA_DIR/schema" ]; then found="$(cat "$DATA_DIR/schema")"; fi
    if [ "$found" -gt "$SCHEMA" ]; then
        echo "$VERSION: the data in $DATA_DIR has schema $found, newer than mine ($SCHEMA);" \
             "refusing to start (restore a snapshot taken before the upgrade)" >&2
        exit 3
    fi
    echo "$(date -u '+%Y-%m-%dT%H:%M:%SZ') $VERSION" >> "$DATA_DIR/boots.txt"
    if [ "$found" -lt "$SCHEMA" ]; then
        echo "$VERSION: migrating the data in $DATA_DIR from schema $found to $SCHEMA"
        printf '%s\n' "$SCHEMA" > "$DATA_DIR/schema"
    fi
    if [ -n "$WRITE" ]; then
        printf 'written by %s\n' "$VERSION" > "$DATA_DIR/$WRITE"
        echo "$VERSION: wrote $DATA_DIR/$WRITE"
    fi
fi

if [ "$EXIT_CODE" != 0 ]; then
    echo "$VERSION: exiting $EXIT_CODE after boot (this version is broken)" >&2
    exit "$EXIT_CODE"
fi

if [ "$BOOT_DELAY_S" != 0 ]; then
    echo "$VERSION: booting for $BOOT_DELAY_S s"
    sleep "$BOOT_DELAY_S" &
    child=$!
    wait "$child"
    child=""
fi

mkdir -p "$WWW"
printf '%s\n' "$VERSION" > "$WWW/version"
printf '<!doctype html>\n<title>%s</title>\n<h1>%s</h1>\n' "$VERSION" "$VERSION" \
    > "$WWW/index.html"
if [ "$HEALTH" = ok ]; then
    mkdir -p "$WWW$(dirname "$HEALTH_PATH")"
    printf '%s\n' "$HEALTH_BODY" > "$WWW$HEALTH_PATH"
else
    echo "$VERSION: serving without $HEALTH_PATH (this version is unhealthy)" >&2
fi

echo "$VERSION: serving on 127.0.0.1:$PORT"
httpd -f -v -p "127.0.0.1:$PORT" -h "$WWW" &
child=$!
status=0
wait "$child" || status=$?
echo "$VERSION: httpd exited $status" >&2
exit "$status"
