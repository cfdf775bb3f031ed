"""Structured logging: one JSON line per event on stdout, bound context via contextvars."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(*, level: str = "info", stream: TextIO | None = None) -> None:
    """Send every structlog event to `stream` (stdout) as one JSON line.

    aiosmtpd logs each command line, AUTH credentials included, at INFO on `mail.log`, so that
    logger is held at WARNING: secrets must never reach the log.
    """
    out = stream if stream is not None else sys.stdout
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, force=True)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return the structlog logger for module `name`."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
