#!/usr/bin/env bash
# Make sure the browser test has a browser: Debian's `chromium` and the CJK
# fonts it needs to draw the glossary (`fonts-noto-cjk`).
#
# Playwright's own browser download needs the internet, so the test drives the
# system Chromium instead. When both packages are present this does nothing.
# When they are missing and we are root with apt-get (a fresh CI machine), it
# installs them. Otherwise it only warns: tests/test_browser.py then skips
# loudly, or fails under CI=true.
set -euo pipefail

packages=(chromium fonts-noto-cjk)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "Installing ${missing[*]} for the browser test ..."
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    echo "Installed ${missing[*]}."
  else
    echo "WARNING: apt-get could not install ${missing[*]}; the browser test will be skipped (or fail under CI=true)." >&2
  fi
else
  echo "WARNING: ${missing[*]} missing and cannot be installed here (not root, or no apt-get);" >&2
  echo "WARNING: the browser test will be skipped (or fail under CI=true)." >&2
fi
