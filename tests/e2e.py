"""A real Dagster deployment for end-to-end tests: ``dagster-webserver`` and ``dagster-daemon``
on 127.0.0.1, each in its own process group (killed at the end), spoken to through GraphQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import PROJECT
from tests.s3server import free_port

BIN = Path(sys.executable).parent


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left in it (run workers included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            _stop(proc)


@dataclass
class Deployment:
    """A running webserver (+ daemon) and how to reach it."""

    port: int
    logs: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise AssertionError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]


_INIT_INSTANCE = (
    "import dagster as dg; i = dg.DagsterInstance.get(); i.get_runs(limit=1); "
    "i.get_asset_keys(); i.all_instigator_state(); i.dispose()"
)


@contextmanager
def deployment(env: dict[str, str], home: Path, daemon: bool = True) -> Iterator[Deployment]:
    """Start the webserver (and the daemon) for ``workspace.yaml`` with ``DAGSTER_HOME=home``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    env = {**env, "DAGSTER_HOME": str(home)}
    # Create the SQLite storages once, before two processes race to create them (seen under
    # load: "alembic_version has more than one head" and a code location that never loads).
    subprocess.run(
        [sys.executable, "-c", _INIT_INSTANCE], env=env, cwd=PROJECT, check=True, timeout=120
    )
    port = free_port()
    with ExitStack() as stack:
        web = stack.enter_context(
            _process(
                [
                    str(BIN / "dagster-webserver"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-w",
                    "workspace.yaml",
                ],
                env,
                home / "webserver.log",
            )
        )
        if daemon:
            stack.enter_context(
                _process(
                    [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                    env,
                    home / "daemon.log",
                )
            )
        deployed = Deployment(port, home)
        wait_for(
            lambda: _answers(deployed.url + "/server_info"),
            120,
            "the webserver to answer",
            alive=lambda: web.poll() is None,
        )
        yield deployed


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    alive: Callable[[], bool] = lambda: True,
    every: float = 2.0,
) -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if not alive():
            raise AssertionError(f"a process died while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
