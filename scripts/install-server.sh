#!/usr/bin/env bash
# Installs the model server (the `serving` extra, no dev tools) into a virtualenv and checks that it
# starts. The server image's build stage runs exactly this; tests/serving runs it into a fresh
# virtualenv so the image's install steps are exercised without Docker.
#
# Usage: scripts/install-server.sh VENV [SOURCE_DIR]
#   VENV        the virtualenv to create or update (the image uses /opt/modeldeploy)
#   SOURCE_DIR  the repository checkout to install from (default: this script's repository)
#   PYTHON      environment variable: the interpreter that creates the virtualenv (default python3)
set -euo pipefail

venv=${1:?usage: install-server.sh VENV [SOURCE_DIR]}
source_dir=${2:-$(cd "$(dirname "$0")/.." && pwd)}
python=${PYTHON:-python3}

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# Every dependency ships wheels for Linux, so the image needs no compiler.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    --no-binary=modeldeploy "${source_dir}[serving]"

"$venv/bin/modeldeploy-server" --help >/dev/null
"$venv/bin/python" -c "import modeldeploy_serving.server, modeldeploy_serving.fetch"
echo "modeldeploy-server installed in $venv"
