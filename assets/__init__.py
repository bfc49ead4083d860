"""The Dagster layer: asset, check, sensor and schedule definitions over the qm_dagster engine."""
