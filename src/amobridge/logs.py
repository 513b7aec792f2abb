"""Logging for the service and the CLI: stdlib logging, one line per record, tokens masked.

Every handler gets the SDK's :class:`TokenMaskingFilter`, so even a careless log call cannot
write a JWT, a ``def502…`` refresh token or a ``client_secret=…`` value in full.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from amobridge.amo._logging import TokenMaskingFilter, mask_text


class JsonFormatter(logging.Formatter):
    """Structured JSON lines: time, level, logger, message, plus any ``extra`` ids."""

    _EXTRA = ("request_id", "connection_id", "job_id", "owner")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self._EXTRA:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            # The masking filter leaves the masked traceback in exc_text; a fresh
            # formatException() would bring the exception's message back unmasked.
            entry["exception"] = mask_text(record.exc_text or self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TokenMaskingFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
