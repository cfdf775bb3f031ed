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
    # What libraries log through the standard library (aiohttp, asyncio, Python warnings) comes
    # out as JSON lines too, under one event name, so the stream stays machine-readable.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _library_event,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
        )
    )
    handler.addFilter(_client_errors_are_warnings)
    logging.basicConfig(handlers=[handler], level=logging.WARNING, force=True)
    logging.captureWarnings(capture=False)  # configure may run again: hook warnings afresh
    logging.captureWarnings(capture=True)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _client_errors_are_warnings(record: logging.LogRecord) -> bool:
    """A malformed HTTP request (aiohttp answered 400, logged at ERROR) is the client's fault.

    A warning, so alerts on errors fire for the relay's own failures and not for scanners.
    """
    error = record.exc_info[1] if record.exc_info else None
    # Looked up, not imported: a process that never loaded aiohttp (the CLI) starts faster.
    http_errors = sys.modules.get("aiohttp.http_exceptions")
    bad_request = getattr(http_errors, "BadHttpMessage", None)
    if (
        bad_request is not None
        and isinstance(error, bad_request)
        and record.levelno > logging.WARNING
    ):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def _library_event(
    logger: object, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A library's log record: its text becomes `message`, the event is `library_log`."""
    del logger, method
    event_dict["message"] = str(event_dict.pop("event", ""))
    event_dict["event"] = "library_log"
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return the structlog logger for module `name`."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
