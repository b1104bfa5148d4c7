#!/usr/bin/env bash
# Install what ccci-tasks needs on a fresh Debian machine: system packages (as root, only
# the missing ones) and a virtualenv with the package and its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v git >/dev/null || need_pkgs+=(git)
command -v tar >/dev/null || need_pkgs+=(tar)
if ! command -v busybox >/dev/null || ! file -L "$(command -v busybox)" 2>/dev/null | grep -q static; then
  [ -x /bin/busybox ] && file /bin/busybox 2>/dev/null | grep -q static || need_pkgs+=(busybox-static)
fi
command -v file >/dev/null || need_pkgs+=(file)
# The several-hosts rig (ccci_rig, scripts/node.sh): network namespaces and nsenter.
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
# The run pages are tested in a real browser (headless Chromium driven by selenium).
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
# The PostgreSQL example recipes: their image is made from Debian packages with mmdebstrap, and
# the tests check its data offline with PostgreSQL's own tools (pg_controldata, pg_checksums,
# pg_dump on a throwaway server); no cluster of the host's own is wanted.
command -v mmdebstrap >/dev/null || need_pkgs+=(mmdebstrap)
[ -x /usr/lib/postgresql/15/bin/pg_dump ] || need_pkgs+=(postgresql-15)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "bootstrap: missing system packages: ${need_pkgs[*]}; install them as root (apt-get install -y ${need_pkgs[*]})" >&2
    exit 2
  fi
  echo "bootstrap: installing ${need_pkgs[*]}"
  if [[ " ${need_pkgs[*]} " == *" postgresql-15 "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    mkdir -p /etc/postgresql-common  # the tools only: no "main" cluster started on this host
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ccci-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
