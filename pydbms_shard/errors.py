"""One exception hierarchy: catch ``PydbmsError`` to catch everything this library raises."""

from __future__ import annotations


class PydbmsError(Exception):
    """Base class of every error raised by pydbms-shard."""


class ValidationError(PydbmsError):
    """Base of the input errors; never raised directly."""


class PydbmsTypeError(ValidationError, TypeError):
    """A value of the wrong type (also a built-in ``TypeError``)."""


class PydbmsValueError(ValidationError, ValueError):
    """A value of the right type but out of range (also a built-in ``ValueError``)."""


class ConfigError(PydbmsError, ValueError):
    """A setting is unknown, of the wrong type or out of range."""


class ShardError(PydbmsError):
    """A shard worker process died or failed; the message names the shard."""

    def __init__(self, shard: int, message: str) -> None:
        super().__init__(f"shard {shard}: {message}")
        self.shard = shard


class SnapshotError(PydbmsError):
    """Saving, loading or verifying a snapshot failed; the message names the file."""


class ImportFileError(PydbmsError, ValueError):
    """A line of a file being imported is not a valid user; the message names the line."""


class ClosedError(PydbmsError):
    """The DataBase was closed."""


class LogError(PydbmsError):
    """The write-ahead log failed or is damaged; the message names the file."""


class LogDamagedError(LogError):
    """A log segment holds a bad record followed by valid ones: damage, not a torn write.
    Nothing was changed; ``pydbms repair PATH`` truncates at the last good record."""

    def __init__(self, path: str, offset: int, detail: str) -> None:
        super().__init__(f"{path}: damaged log at byte {offset} ({detail}); run `pydbms repair` on the snapshot path")
        self.path, self.offset = path, offset


class LogWriteError(LogError):
    """Appending to or fsyncing the log failed (disk full, I/O error, read-only file system)."""


class ReadOnlyError(PydbmsError):
    """The database refuses writes after a log failure; reads still work. Fix the cause, then
    ``save()`` (a checkpoint onto fresh log files) makes it writable again."""
