#!/usr/bin/env bash
# Chromium and its WebDriver from Debian's packages, for the end-to-end tests (`make e2e`).
# No browser download: only Debian's chromium and chromium-driver.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
packages=(chromium chromium-driver)
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "e2e: Chromium is missing and cannot be installed here (not root, no password-less sudo)." >&2
  echo "e2e: install Debian's packages yourself: apt-get install chromium chromium-driver" >&2
  exit 1
fi
echo "e2e: installing ${packages[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
# An old package list may name versions the mirror no longer has: update once and try again.
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null 2>&1 || {
  "${as_root[@]}" apt-get update -q >/dev/null
  "${as_root[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null
}
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "e2e: apt-get finished but /usr/bin/chromium or /usr/bin/chromedriver is missing" >&2
  exit 1
fi
# Debian's launcher script prints a harmless shell warning on stderr; the version is on stdout.
/usr/bin/chromium --version 2>/dev/null
