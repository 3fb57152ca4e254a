#!/usr/bin/env bash
# Installs what the tests need, builds fastmesh in place, and runs the whole test suite on the release build and on a
# debug build with the leak check (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real clients (curl, h2load from nghttp2-client), and the discovery servers
# they start (etcd, dnsmasq).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for pkg in curl netcat-openbsd chromium etcd-server dnsmasq nghttp2-client; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# Editable install: compiles every fastmesh/_core extension into the source tree and installs the test extras.
python -m pip install -q -e ".[test]"
python -m pytest "$@"

# Again on a debug build: it counts the data path's connection objects, and every test then also checks that it
# left none alive (tests/conftest.py). Skipped with FASTMESH_SKIP_DEBUG_RUN=1. The release build is restored after.
if [ -z "${FASTMESH_SKIP_DEBUG_RUN:-}" ]; then
  build_log=$(mktemp)
  python setup.py -q build_ext --inplace --debug-core >"$build_log" 2>&1 || { cat "$build_log"; exit 1; }
  status=0
  python -m pytest -p no:cacheprovider --deselect tests/test_packaging.py "$@" || status=$?
  # Quietly, so that pytest's summary stays the last line of the output.
  python setup.py -q build_ext --inplace >"$build_log" 2>&1 || { cat "$build_log"; exit 1; }
  rm -f "$build_log"
  exit "$status"
fi
