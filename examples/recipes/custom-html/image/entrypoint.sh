#!/bin/sh
# custom-html: serve /data/www with busybox httpd on 127.0.0.1:$CCCI_HTTP_PORT (host network).
#
# - The first boot on an empty volume (no /data/.initialised marker) sleeps $INIT_DELAY
#   seconds before serving, so a cold boot and a warm boot (kept volume) differ visibly.
# - Every boot rewrites /data/www/index.html with the version and $GREETING, and appends a
#   line to /data/www/boots.txt; everything else on the volume is left alone.
# - FAIL_AFTER_WRITE=1 writes /data/www/broken.txt and exits 1 (a crash-looping build).
# - IGNORE_SIGTERM=1 ignores SIGTERM and SIGINT, like an app that does not handle signals: a
#   stop then takes the whole stop grace period and ends with SIGKILL.
# - STOP_DELAY=<s>: on SIGTERM or SIGINT the app takes that long to finish, then exits 0 (a
#   slow but clean stop, within its grace period when the period is longer).
set -eu

VERSION="$(cat /etc/ccci-version)"
NAME="${VERSION%% *}"  # the recipe: custom-html, or a variant built from this script
PORT="${CCCI_HTTP_PORT:?CCCI_HTTP_PORT is not set: the platform must give the app a port}"
GREETING="${GREETING:-Hello from custom-html}"
INIT_DELAY="${INIT_DELAY:-3}"
WWW=/data/www
MARKER=/data/.initialised
child=""

stop() {
    trap '' TERM INT  # a second stop signal (swarm's after ours) must not start it again
    echo "$NAME: stopping"
    if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi
    sleep "${STOP_DELAY:-0}"
    exit 0
}
if [ "${IGNORE_SIGTERM:-0}" = "1" ]; then
    trap '' TERM INT
else
    trap stop TERM INT
fi

mkdir -p "$WWW"
if [ ! -f "$MARKER" ]; then
    echo "$NAME: first boot on an empty volume, initialising for ${INIT_DELAY} s"
    sleep "$INIT_DELAY" &
    child=$!
    wait "$child"
    child=""
    echo "$VERSION" > "$MARKER"
fi

if [ "${FAIL_AFTER_WRITE:-0}" = "1" ]; then
    echo "broken by FAIL_AFTER_WRITE=1 in $VERSION" > "$WWW/broken.txt"
    echo "$NAME: FAIL_AFTER_WRITE=1: wrote $WWW/broken.txt, exiting 1" >&2
    exit 1
fi

escaped="$(printf '%s' "$GREETING" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g')"
echo "$(date -u '+%Y-%m-%dT%H:%M:%SZ') $VERSION" >> "$WWW/boots.txt"
printf '%s\n' "$VERSION" > "$WWW/version.txt"
cat > "$WWW/index.html.tmp" <<HTML
<!doctype html>
<html>
<head><title>$VERSION</title></head>
<body>
<h1>$VERSION</h1>
<p id="greeting">$escaped</p>
</body>
</html>
HTML
mv "$WWW/index.html.tmp" "$WWW/index.html"

echo "$NAME: $VERSION serving $WWW on 127.0.0.1:$PORT"
httpd -f -v -p "127.0.0.1:$PORT" -h "$WWW" &
child=$!
status=0
wait "$child" || status=$?
echo "$NAME: httpd exited $status" >&2
exit "$status"
