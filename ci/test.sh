#!/usr/bin/env bash
# Installs what the tests need, builds fastmesh in place, and runs the whole test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real clients.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for pkg in curl netcat-openbsd chromium; do
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
