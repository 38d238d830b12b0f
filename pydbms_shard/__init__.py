"""pydbms-shard: an in-memory user database sharded over worker processes."""

from .config import Config
from .coordinator import DataBase
from .errors import (
    ClosedError,
    ConfigError,
    ImportFileError,
    PydbmsError,
    PydbmsTypeError,
    PydbmsValueError,
    ShardError,
    SnapshotError,
)
from .filemanager import FileManager
from .generate import generate_users, random_age, random_name
from .user import User

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "Config",
    "ConfigError",
    "DataBase",
    "FileManager",
    "ImportFileError",
    "PydbmsError",
    "PydbmsTypeError",
    "PydbmsValueError",
    "ShardError",
    "SnapshotError",
    "User",
    "generate_users",
    "random_age",
    "random_name",
]
