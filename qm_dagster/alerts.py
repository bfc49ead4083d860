"""Alerts for production monitoring: a JSON POST to a webhook (Slack-compatible ``text`` field)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FailedCheck:
    asset: str
    check: str
    severity: str
    partition: str | None
    description: str | None
    measured: Any = None


def alert_payload(
    run_id: str,
    job: str,
    status: str,
    partition: str | None,
    checks: list[FailedCheck],
    error: str = "",
) -> dict[str, Any]:
    """The body posted for one run: a human line in ``text`` and the details as fields."""
    where = f" on version {partition}" if partition else ""
    if checks:
        names = ", ".join(f"{c.asset}:{c.check} ({c.severity})" for c in checks)
        text = f"qm-dagster: {len(checks)} check(s) failed{where}: {names}"
    else:
        text = f"qm-dagster: run {run_id} of {job} {status.lower()}{where}"
    if error:
        text += f": {error}"
    return {
        "text": text,
        "run_id": run_id,
        "job": job,
        "status": status,
        "partition": partition,
        "failed_checks": [asdict(c) for c in checks],
        "error": error,
    }


def post_json(url: str, payload: dict[str, Any], timeout: float = 10.0) -> int:
    """POST ``payload`` as JSON to ``url``; returns the HTTP status (raises on network errors)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload, default=str).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status
