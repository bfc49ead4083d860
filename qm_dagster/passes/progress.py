"""Progress lines for long passes: images done / total, images/s and ETA every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

PREFIX = "image pass:"  # every line starts so; `qm materialize` shows these lines


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Counts images done and reports through ``log`` at most every ``every`` seconds."""

    def __init__(
        self,
        total: int,
        log: Callable[[str], None] | None,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.log, self.every, self.clock = total, log, every, clock
        self.done = 0
        self.start = self._last = clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def line(self) -> str:
        elapsed = max(self.elapsed, 1e-9)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 else "unknown"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{PREFIX} {self.done}/{self.total} images to compute ({pct:.0f}%), "
            f"{rate:.1f} images/s, ETA {eta}"
        )

    def advance(self, images: int) -> None:
        self.done += images
        now = self.clock()
        if self.log is not None and now - self._last >= self.every:
            self._last = now
            self.log(self.line())

    def finish(self) -> None:
        if self.log is not None:
            rate = self.done / max(self.elapsed, 1e-9)
            self.log(
                f"{PREFIX} {self.done} images computed in {_duration(self.elapsed)} "
                f"({rate:.1f} images/s)"
            )
