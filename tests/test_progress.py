"""Progress: a tqdm bar on a terminal, plain timestamped lines in logs, nothing when switched off."""
from __future__ import annotations

import io
import re

from galaxy_infer.progress import Progress, duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_carry_counts_rate_time_left_and_errors():
    log = io.StringIO()
    with Progress(10, stream=log, every=0) as progress:
        for rows, errors in ((4, 0), (4, 1), (2, 0)):
            progress.update(rows, errors)
    lines = log.getvalue().splitlines()
    assert len(lines) == 4  # the start, then one per chunk; no carriage returns in a log
    assert "\r" not in log.getvalue()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ classified 8 / 10 \(80\.0%\)  [\d,]+ rows/s  "
                        r"elapsed \d+:\d\d:\d\d  time left \d+:\d\d:\d\d  errors 1", lines[2]), lines[2]
    assert lines[-1].split(" classified ")[1].startswith("10 / 10 (100.0%)")


def test_log_lines_are_spaced_and_the_last_count_is_always_printed():
    log = io.StringIO()
    with Progress(100, stream=log, every=3600, what="ingested") as progress:
        for _ in range(10):
            progress.update(10)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert " ingested 0 / 100 " in lines[0] and " ingested 100 / 100 " in lines[1]


def test_terminal_gets_a_bar_and_off_means_silent():
    term = Terminal()
    with Progress(8, stream=term) as progress:
        progress.update(8, 2)
    assert progress.mode == "bar"
    assert "8/8" in term.getvalue() and "errors=2" in term.getvalue()
    quiet = Terminal()
    with Progress(8, enabled=False, stream=quiet) as progress:
        progress.update(8)
    assert quiet.getvalue() == ""


def test_duration():
    assert duration(3725) == "1:02:05"
    assert duration(59.6) == "0:01:00"
