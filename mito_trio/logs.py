"""Console logging; file logging joins in later (PROTOCOL.md §11)."""

from __future__ import annotations

import logging
import os
import sys

#: Environment variable with the console log level (DEBUG, INFO, WARNING, ERROR).
LOG_LEVEL_ENV = "MITO_LOG_LEVEL"

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_console_logging(default_level: str = "INFO") -> None:
    """Log to stderr at `MITO_LOG_LEVEL` (default `default_level`)."""
    level = os.environ.get(LOG_LEVEL_ENV, default_level).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger("mito_trio")
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    root.propagate = False
    # httpx logs every request at INFO; our own lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
