#!/usr/bin/env bash
# Create (or reuse) .venv and install labkit with its test and docs extras, and every
# first-party plugin package under plugins/, in editable mode. Used by the README and by
# .ci/run.
#
# TORCH_INDEX_URL: install torch and torchvision from this package index first, e.g.
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu    (CPU only, far smaller)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126  (a specific CUDA build)
# Unset: pip's default index (on Linux, PyPI's CUDA build). pip keeps a torch that is
# already installed, so change builds in a fresh .venv (rm -rf .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  # the version bounds of setup.cfg's install_requires, so one place states them
  mapfile -t torch_requirements < <(sed -nE 's/^[[:space:]]+(torch(vision)?[<>=!~].*)$/\1/p' setup.cfg)
  .venv/bin/python -m pip install --quiet --index-url "$TORCH_INDEX_URL" "${torch_requirements[@]}"
fi
packages=(-e ".[test,docs]")
for plugin in plugins/*/; do
  if [ -f "$plugin/pyproject.toml" ] || [ -f "$plugin/setup.cfg" ]; then
    packages+=(-e "$plugin")
  fi
done
.venv/bin/python -m pip install --quiet "${packages[@]}"
echo "labkit installed in .venv ($(.venv/bin/python -c 'import labkit, torch; print(labkit.__version__, "with torch", torch.__version__)'))"
