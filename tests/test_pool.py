"""The process pools of the manifest and the image pass: one fork server per process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIRST_POOL_THEN_MAPS = """
import json, os, sys
from qm_dagster.passes.pool import process_pool, start_fork_server
if sys.argv[1] == "early":
    start_fork_server()  # as `qm materialize` does first
with process_pool(1) as pool:  # as the manifest's pool: the first of the process
    pid = pool.submit(os.getpid).result()
    maps = open(f"/proc/{pid}/maps").read()
print(json.dumps({"opencv": "cv2" in maps, "numba": "llvmlite" in maps,
                  "matplotlib": "matplotlib" in maps}))
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
@pytest.mark.parametrize("server", ["by the pool", "early"])
def test_the_first_pool_of_a_process_preloads_what_every_pool_needs(server):
    """The standard library starts one fork server per process and reads its preload list only
    then: whichever pool comes first (the manifest's, in a run) must preload the image pass's
    OpenCV and compiled kernels too, or each pass worker imports them itself (regression: the
    manifest's pool started the server with its own module only), and the report's matplotlib.
    A worker that has run nothing but ``os.getpid`` already has the three mapped, whether the
    pool started the server or ``start_fork_server`` did before."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_POOL_THEN_MAPS, server],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"opencv": True, "numba": True, "matplotlib": True}
