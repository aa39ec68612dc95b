"""Log output: readable text (the default) or one JSON object per line for log shippers.

The access record (logger `limner.access`, one per request) carries its fields in `record.fields`:
request id, key id, method, route, model, n, size, status, queue ms, run ms and total ms. The text
format writes them as `name=value` after the message (the request id first, so a line can be found by
the `x-request-id` a client saw); the JSON format as keys of the object.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Literal

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


def configure(level: str, fmt: LogFormat) -> None:
    """Root logging for `limner serve` (uvicorn's own loggers included: it is started without a
    log config of its own)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
