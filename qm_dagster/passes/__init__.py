"""The image pass: one decode per image for every pixel metric, streamed to a content-keyed
cache, on a local process pool or a Dask cluster."""
