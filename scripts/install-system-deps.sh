#!/usr/bin/env bash
# Installs the Debian packages the tests need, only those missing (apt-get update runs once, if needed).
set -euo pipefail

packages=(make prometheus lua5.4 lua-cjson wrk)

bash "$(dirname "$0")/install-debian-packages.sh" "${packages[@]}"
command -v go >/dev/null || { echo "Go is required (the control plane is built from Go modules)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "Python 3.11+ is required" >&2; exit 1; }
