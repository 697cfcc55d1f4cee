#!/usr/bin/env bash
# Installs the Debian packages the tests need, only those missing (apt-get update runs once, if needed).
set -euo pipefail

packages=(make prometheus lua5.4 lua-cjson)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { echo "Go is required (the control plane is built from Go modules)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "Python 3.11+ is required" >&2; exit 1; }
