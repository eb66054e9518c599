#!/usr/bin/env bash
# wrk, the load generator of `make bench`, from Debian's packages.
set -euo pipefail
command -v wrk >/dev/null && exit 0
if [ "$(id -u)" -eq 0 ]; then
  apt-get install -y -q wrk >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
elif command -v sudo >/dev/null; then
  sudo apt-get install -y -q wrk >/dev/null || { sudo apt-get update -q >/dev/null && sudo apt-get install -y -q wrk >/dev/null; }
else
  echo "bench: wrk is missing and cannot be installed (not root, no sudo); install Debian's wrk package" >&2
  exit 1
fi
