#!/usr/bin/env bash
# Set up, write the demo versions, materialize every asset for them, then serve the Dagster UI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
export DAGSTER_HOME="$PWD/.qm/dagster_home"
export QM_DATASETS="${QM_DATASETS:-$PWD/.qm/datasets}"
export QM_STORAGE="${QM_STORAGE:-$PWD/.qm/storage}"
PORT="${QM_PORT:-3000}"
qm demo
for version in train validation production; do
  qm materialize "$version"
done
cat <<MSG

Demo ready.
  datasets : $QM_DATASETS   (train, validation, production)
  outputs  : $QM_STORAGE    (one Parquet file per asset per version)
  try      : .venv/bin/qm show production --asset data/brightness --sort asc --limit 5
  explore  : QM_STORAGE=$QM_STORAGE .venv/bin/qm explore production   (http://127.0.0.1:8765)
  report   : QM_STORAGE=$QM_STORAGE .venv/bin/qm report production
  UI       : http://127.0.0.1:$PORT  (Assets -> data/brightness -> Partitions); Ctrl-C stops it
MSG
exec dg dev --host 127.0.0.1 --port "$PORT"
