"""qm-dagster engine."""
