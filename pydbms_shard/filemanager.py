"""FileManager: the original pyDBMS API over a DataBase's snapshots, conversion and import."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from . import snapshot
from .coordinator import DataBase
from .errors import PydbmsTypeError
from .readable import Progress, convert_file, read_user_lines

__all__ = ["FileManager", "convert_file", "import_file", "read_user_lines"]


def import_file(database: DataBase, src: str | os.PathLike[str], progress: Progress | None = None) -> int:
    """Add the users of a JSON-lines file (ours or the original pyDBMS's); returns how many were added."""
    return database.import_file(src, progress)


class FileManager:
    """The original pyDBMS API, over the DataBase's own snapshot machinery.

    ``output_file`` names the manifest; the shard files sit beside it.
    """

    def __init__(self, database: DataBase, output_file: str | os.PathLike[str] = "users_db.json", autosave_interval: float = 5) -> None:
        if not isinstance(database, DataBase):
            raise PydbmsTypeError(f"database must be a DataBase, got {type(database).__name__}")
        self.database = database
        self.output_file = Path(output_file)
        self.autosave_interval = autosave_interval

    def __repr__(self) -> str:
        return f"<FileManager output_file={str(self.output_file)!r} database={self.database!r}>"

    def save(self) -> snapshot.Manifest:
        return self.database.save(self.output_file)

    def backup(self, path: str | os.PathLike[str]) -> snapshot.Manifest:
        """An independent copy of the last save (hard links where possible)."""
        return self.database.backup(path, source=self.output_file)

    def load(self) -> snapshot.Manifest:
        return self.database.load(self.output_file)

    def start_autosave(self) -> None:
        self.database.start_autosave(self.autosave_interval, self.output_file)

    def stop_autosave(self) -> None:
        self.database.stop_autosave()

    def convert_file(self, src: str | os.PathLike[str], dst: str | os.PathLike[str], format: Literal["jsonl", "text"] = "jsonl") -> int:
        return convert_file(src, dst, format)

    def import_file(self, src: str | os.PathLike[str]) -> int:
        return self.database.import_file(src)
