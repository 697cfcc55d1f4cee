#!/usr/bin/env bash
# Installs the operator (the `operator` extra: no ML libraries, no dev tools) into a virtualenv and
# checks that it starts. The operator image's build stage runs exactly this; tests/unit runs it
# into a fresh virtualenv so the image's install steps are exercised without Docker.
#
# Usage: scripts/install-operator.sh VENV [SOURCE_DIR]
#   VENV        the virtualenv to create or update (the image uses /opt/modeldeploy)
#   SOURCE_DIR  the repository checkout to install from (default: this script's repository)
#   PYTHON      environment variable: the interpreter that creates the virtualenv (default python3)
set -euo pipefail

venv=${1:?usage: install-operator.sh VENV [SOURCE_DIR]}
source_dir=${2:-$(cd "$(dirname "$0")/.." && pwd)}
python=${PYTHON:-python3}

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    --no-binary=modeldeploy "${source_dir}[operator]"

"$venv/bin/modeldeploy-operator" --help >/dev/null
"$venv/bin/python" -c "import modeldeploy_operator.handlers"
echo "modeldeploy-operator installed in $venv"
