#!/usr/bin/env bash
# Create (or reuse) .venv and install labkit, its test extra, and every first-party
# plugin package under plugins/ in editable mode. Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
packages=(-e ".[test]")
for plugin in plugins/*/; do
  if [ -f "$plugin/pyproject.toml" ] || [ -f "$plugin/setup.cfg" ]; then
    packages+=(-e "$plugin")
  fi
done
.venv/bin/python -m pip install --quiet "${packages[@]}"
echo "labkit installed in .venv ($(.venv/bin/python -c 'import labkit; print(labkit.__version__)'))"
