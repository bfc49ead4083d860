"""``qm explore``: a local page to sort, filter and open a version's images, objects and
predictions by any metric (DuckDB over the stored Parquet outputs)."""
