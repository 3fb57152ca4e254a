"""Logging setup: one line per record on stderr with timestamp, level, process role (main/w0/w1...), logger, message."""
from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error")

# The role is constant for a process, but a filter (not a literal in the format string) also tags records from
# loggers created before setup, such as asyncio's.
_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(worker)s %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%dT%H:%M:%S"


class _WorkerTag(logging.Filter):
    """Stamps every record with the role of the process that wrote it."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def setup_logging(level: str = "info", worker: str = "main") -> None:
    """Send all logging to stderr in the fastmesh line format; replaces handlers from any earlier call."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    handler.addFilter(_WorkerTag(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
