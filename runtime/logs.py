"""Log lines: plain text for a terminal (``make run``), or one JSON object per line for a
log pipeline (``FLUXGATE_LOG_FORMAT=json``), each carrying the request id of the API
request or the job id of the worker job it was written for.

The ids live in context variables: the API's request middleware sets the request id in
the task that serves the request (uvicorn runs each request in a task of its own), an arq
``on_job_start`` hook sets the job id in the task that runs the job, and whatever those
tasks log, uvicorn's access line included, carries them.
"""

from __future__ import annotations

import json
import logging
import logging.config
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from runtime.queue import job_id as arq_job_id

request_id: ContextVar[str | None] = ContextVar("fluxgate_request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("fluxgate_job_id", default=None)

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_GENERATION_PREFIX = arq_job_id("")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", "job_id"}``, plus
    ``exception`` (the formatted traceback) when there is one, and the request line's
    parts on uvicorn's access lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
            "job_id": job_id.get(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _, status = args  # uvicorn's request line
            entry |= {"client": client, "method": method, "path": path, "status": status}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def _formatter(log_format: LogFormat) -> dict[str, Any]:
    if log_format == "json":
        return {"()": f"{__name__}.JsonFormatter"}
    return {"format": TEXT_FORMAT}


def config(log_format: LogFormat, level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` where every logger, uvicorn's included, writes to
    stderr in ``log_format``. Also what ``fluxgate serve`` hands uvicorn, which applies
    it in each of its processes."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"fluxgate": _formatter(log_format)},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "fluxgate",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn's own handlers are replaced by the root's (propagation).
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure(log_format: LogFormat, level: str = "info") -> None:
    logging.config.dictConfig(config(log_format, level))


async def bind_job(ctx: dict[str, Any]) -> None:
    """arq's ``on_job_start``: the job id on every line logged while the job runs (the
    generation id for a generation, as the API names it; arq's job id otherwise). It
    runs in the task arq made for the job, so the id ends with it."""
    name = str(ctx.get("job_id") or "")
    job_id.set(name.removeprefix(_GENERATION_PREFIX) if name else None)
