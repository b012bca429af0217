"""Errors that `eic` reports as one line on stderr and a non-zero exit code.

    EicError
     ├── ConfigError      a setting, flag or config file is wrong
     ├── ApiError         the Europeana Search API refused or could not be reached
     ├── DatasetError     a table, vocabulary or image folder is unreadable or incomplete
     ├── ModelError       a model, checkpoint or weights file cannot be built or loaded
     └── CalibrationError a run cannot be calibrated, or a calibration cannot be used

Every message says what went wrong and, where there is one, what to do about it.
"""

from __future__ import annotations


class EicError(Exception):
    """Base of every error the library raises on purpose. Its message is one line, whatever a value quoted in it
    holds: a line end or a control character (a newline, U+0085, U+2028, ESC) is kept, escaped."""

    exit_code = 1

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message).strip()
        super().__init__("".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text), *args)


class ConfigError(EicError):
    exit_code = 2


class ApiError(EicError):
    pass


class DatasetError(EicError):
    pass


class ModelError(EicError):
    pass


class CalibrationError(EicError):
    pass
