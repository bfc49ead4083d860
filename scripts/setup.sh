#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install qm-dagster with its dev extras; a no-op when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.qm-installed
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  echo "$want" > "$stamp"
fi
# DAGSTER_HOME for the demo and `qm materialize`; its dagster.yaml is the project's, linked.
mkdir -p .qm/dagster_home
ln -sfn ../../dagster.yaml .qm/dagster_home/dagster.yaml
