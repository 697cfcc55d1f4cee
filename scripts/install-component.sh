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
#   WHEELHOUSE  environment variable: a folder of wheels to install from instead of an index
#   SLIM        environment variable: 1 removes what a running image never uses (pip, setuptools,
#               the packages' own test suites)
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

pip_source=()
if [[ -n "${WHEELHOUSE:-}" ]]; then
  pip_source=(--no-index --find-links "$WHEELHOUSE")
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_source[@]}" --upgrade pip
# Every dependency ships wheels for Linux, so the images need no compiler.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_source[@]}" \
    --only-binary=:all: --no-binary=modeldeploy "${source_dir}[${extra}]"

if [[ "${SLIM:-0}" == 1 ]]; then
  "$venv/bin/python" -m pip uninstall --quiet --disable-pip-version-check --yes pip setuptools wheel
  site_packages=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Test suites shipped inside packages (numpy, pandas, scipy, sklearn: over 100 MB) never run here.
  find "$site_packages" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
fi

"$venv/bin/$command" --help >/dev/null
"$venv/bin/python" -c "import $modules"
echo "$command installed in $venv"
