"""The terminal logger of `civicband` commands: the sync's own lines, and a failure as one line.

Dagster's console logger prints every event and, for a failed step, its whole traceback (~70 lines,
twice: step and run). The run's event log keeps both either way; this logger is for a person at a
terminal. Runs launched from the UI or by sensors don't use it (they keep Dagster's default loggers).
"""

import logging
import sys

import dagster as dg

# Dagster's wrappers around the error a step raised: the reason is the first error they wrap.
_WRAPPERS = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError", "DagsterResourceFunctionError")


@dg.logger(
    {"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="Terse terminal output for `civicband` commands: the sync's messages, failures in one line.",
)
def terminal_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("civicband", level=init_context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_for_people)
    handler.setFormatter(_Terse())
    logger.addHandler(handler)
    return logger


def _for_people(record: logging.LogRecord) -> bool:
    """Messages the run's code logged, and Dagster's events at WARNING and above (a failed step, a
    step not run because of it), except a run failure that repeats an earlier line."""
    event = _meta(record).get("dagster_event")
    if event is None:
        return True
    return record.levelno >= logging.WARNING and not _repeats_an_earlier_line(event)


def _repeats_an_earlier_line(event) -> bool:
    """A run failure repeats the line of its failed step, or of its resources' failed initialization.
    (Loggers are set up several times a run, so this can't remember what it printed.)"""
    if event.event_type != dg.DagsterEventType.RUN_FAILURE:
        return False
    data = event.event_specific_data
    reason = getattr(getattr(data, "failure_reason", None), "value", None)  # RunFailureReason isn't public
    error = getattr(data, "error", None)
    return reason == "STEP_FAILURE" or (error is not None and error.cls_name == "DagsterResourceFunctionError")


class _Terse(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = _meta(record)
        message = meta.get("orig_message", record.getMessage())
        reason = _reason(meta.get("dagster_event"))
        if reason:
            first_line = (message.splitlines() or [""])[0].rstrip(".")
            message = f"{first_line}: {reason} (traceback in the logs of run {meta.get('run_id')})"
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"{self.formatTime(record, '%H:%M:%S')} {level}{message}"


def _meta(record: logging.LogRecord) -> dict:
    return getattr(record, "dagster_meta", None) or {}


def _reason(event) -> str | None:
    """'module.Error: message' of the error the failed code raised, beneath Dagster's wrappers (for a
    dg.Failure, its description)."""
    error = getattr(getattr(event, "event_specific_data", None), "error", None)
    while error is not None and error.cls_name in _WRAPPERS and error.cause is not None:
        error = error.cause
    if error is None:
        return None
    text = error.message.strip()
    if error.cls_name == "Failure":
        description = text.split(": ", 1)[-1]
        return description if description not in ("", "None") else "Failure"
    return text
