"""Progress of a run: a bar on a terminal, a plain line every 30 s everywhere else.

``ray job logs``, cron mail and CI logs are not terminals: a bar redrawn with carriage returns
turns into one unreadable line there, so without a terminal the progress is a timestamped line
every :data:`LINE_SECONDS` (rows done / total, rate, time left, errors so far), enough to follow
a multi-hour run and to notice a stalled one. The bar is tqdm's; the plain line is our own
because tqdm's non-terminal output is the same carriage-return stream.
"""
from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from typing import TextIO


LINE_SECONDS = float(os.environ.get("GALAXY_INFER_PROGRESS_SECONDS", "30"))
"""Seconds between plain progress lines; ``GALAXY_INFER_PROGRESS_SECONDS`` changes it."""


def duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts the rows and error rows a run has written, and shows them.

    ``enabled=False`` shows nothing; otherwise a tqdm bar when ``stream`` is a terminal, else
    plain lines (the first at once, then every ``every`` seconds, and a last one at the end).
    """

    def __init__(self, total: int | None, enabled: bool | None = None, what: str = "classified",
                 stream: TextIO | None = None, every: float | None = None) -> None:
        self.total = total
        self.what = what
        self.stream = stream or sys.stderr
        self.every = LINE_SECONDS if every is None else every
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self._last_line = float("-inf")
        self._shown = -1
        self._bar = None
        self.mode = "off" if enabled is False else ("bar" if self.stream.isatty() else "lines")
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=" rows", desc=what, file=self.stream,
                             dynamic_ncols=True, smoothing=0.1)
            self._bar.set_postfix(errors=0)
        elif self.mode == "lines":
            self._line()

    def set_total(self, total: int) -> None:
        """The number of rows, once known (a run that starts while its inputs are still listed)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, rows: int, errors: int = 0) -> None:
        self.done += rows
        self.errors += errors
        if self._bar is not None:
            self._bar.update(rows)
            if errors:
                self._bar.set_postfix(errors=self.errors)
        elif self.mode == "lines" and time.monotonic() - self._last_line >= self.every:
            self._line()

    def line(self) -> str:
        """``<UTC time> classified 12,288 / 100,000 (12.3%)  2,758 rows/s  time left 0:00:32  errors 3``."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({self.done / self.total:.1%})" if self.total else ""
        left = duration((self.total - self.done) / rate) if rate > 0 and self.total is not None else "?"
        total = "?" if self.total is None else f"{self.total:,}"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"{stamp} {self.what} {self.done:,} / {total}{share}  {rate:,.0f} rows/s  "
                f"elapsed {duration(elapsed)}  time left {left}  errors {self.errors:,}")

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last_line = time.monotonic()
        self._shown = self.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.done != self._shown:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
