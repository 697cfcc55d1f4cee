#!/usr/bin/env bash
# Installs one component into a virtualenv and checks that it starts: `server` (the `serving` extra)
# or `operator` (the `operator` extra: no ML libraries). No dev tools in either. Each image's build
# stage runs exactly this, and the tests run it into fresh virtualenvs, so the images' install
# steps are exercised without Docker.
#
# Usage: scripts/install-component.sh server|operator VENV [SOURCE_DIR]
#   VENV        the virtualenv to create or update (the images use /opt/modeldeploy)
#   SOURCE_DIR  the repository checkout to install from (default: this script's repository)
#   PYTHON      environment variable: the interpreter that creates the virtualenv (default python3)
set -euo pipefail

usage="usage: install-component.sh server|operator VENV [SOURCE_DIR]"
component=${1:?$usage}
venv=${2:?$usage}
source_dir=${3:-$(cd "$(dirname "$0")/.." && pwd)}
python=${PYTHON:-python3}

case "$component" in
  server) extra=serving; command=modeldeploy-server; modules="modeldeploy_serving.server, modeldeploy_serving.fetch" ;;
  operator) extra=operator; command=modeldeploy-operator; modules="modeldeploy_operator.handlers" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# Every dependency ships wheels for Linux, so the images need no compiler.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    --no-binary=modeldeploy "${source_dir}[${extra}]"

"$venv/bin/$command" --help >/dev/null
"$venv/bin/python" -c "import $modules"
echo "$command installed in $venv"
