"""The public API, pinned: a change here is a change for every user of the library, so it
must be made on purpose (update this file in the same change)."""

from __future__ import annotations

import inspect
import re
from importlib import resources

import pytest

import pydbms_shard
from pydbms_shard import DataBase, FileManager, PydbmsError, User, errors, generate_users
from pydbms_shard.shards import ShardFailure

ALL = [
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

PATH = "'str | os.PathLike[str]'"
OPT_PATH = "'str | os.PathLike[str] | None' = None"
IDS = "'list[uuid.UUID | str | User]'"
QUERIES = "'list[User | uuid.UUID | str]'"
ONE_ID = "'uuid.UUID | str | User'"
FILTERS = "*, name: 'str | None' = None, name_prefix: 'str | None' = None, age_min: 'int | None' = None, age_max: 'int | None' = None"

SIGNATURES = {
    DataBase: {
        "__init__": "(self, config: 'Config | str | os.PathLike[str] | None' = None, **overrides: 'Any') -> 'None'",
        "__contains__": "(self, id: 'object') -> 'bool'",
        "__enter__": "(self) -> 'DataBase'",
        "__exit__": "(self, *exc: 'object') -> 'None'",
        "__iter__": "(self) -> 'Iterator[User]'",
        "__len__": "(self) -> 'int'",
        "__repr__": "(self) -> 'str'",
        "add": "(self, user: 'User') -> 'bool'",
        "add_users": "(self, users: 'list[User]') -> 'int'",
        "backup": f"(self, path: {PATH}, source: {OPT_PATH}) -> 'snapshot.Manifest'",
        "clear_database": "(self) -> 'None'",
        "close": "(self) -> 'None'",
        "contains_many": f"(self, ids: {IDS}) -> 'list[bool]'",
        "count": f"(self, {FILTERS}) -> 'int'",
        "convert_file": f"(src: {PATH}, dst: {PATH}, format: 'str' = 'jsonl') -> 'int'",
        "find_by_name": "(self, name: 'str') -> 'list[User]'",
        "get": f"(self, id: {ONE_ID}) -> 'User | None'",
        "get_many": f"(self, ids: {IDS}) -> 'list[User | None]'",
        "has_user": f"(self, items: {QUERIES}) -> 'bool'",
        "import_file": f"(self, src: {PATH}, progress: 'Any' = None) -> 'int'",
        "load": f"(self, path: {OPT_PATH}, *, progress: 'Progress | None' = None) -> 'snapshot.Manifest'",
        "query": f"(self, {FILTERS}, order_by: 'str | None' = None, limit: 'int | None' = None) -> 'list[User]'",
        "remove": f"(self, id: {ONE_ID}) -> 'bool'",
        "remove_users": f"(self, items: {QUERIES}) -> 'int'",
        "save": f"(self, path: {OPT_PATH}, *, progress: 'Progress | None' = None) -> 'snapshot.Manifest'",
        "search_users": f"(self, queries: {QUERIES}) -> 'list[User]'",
        "start_autosave": f"(self, interval: 'float | None' = None, path: {OPT_PATH}) -> 'None'",
        "stats": "(self) -> 'dict[str, Any]'",
        "stop_autosave": "(self) -> 'None'",
        "upsert_users": "(self, users: 'list[User]') -> 'int'",
    },
    FileManager: {
        "__init__": "(self, database: 'DataBase', output_file: 'str | os.PathLike[str]' = 'users_db.json', "
        "autosave_interval: 'float' = 5) -> 'None'",
        "__repr__": "(self) -> 'str'",
        "backup": f"(self, path: {PATH}) -> 'snapshot.Manifest'",
        "convert_file": f"(self, src: {PATH}, dst: {PATH}, format: \"Literal['jsonl', 'text']\" = 'jsonl') -> 'int'",
        "import_file": f"(self, src: {PATH}) -> 'int'",
        "load": "(self) -> 'snapshot.Manifest'",
        "save": "(self) -> 'snapshot.Manifest'",
        "start_autosave": "(self) -> 'None'",
        "stop_autosave": "(self) -> 'None'",
    },
    User: {
        "__repr__": "(self) -> 'str'",
        "from_dict": "(data: 'Mapping[str, Any]') -> 'User'",
        "from_json": "(data: 'bytes | str') -> 'User'",
        "to_dict": "(self) -> 'dict[str, Any]'",
        "to_json": "(self) -> 'bytes'",
    },
}

PROPERTIES = {
    DataBase: {"autosave_running", "closed", "shard_count", "size"},
    FileManager: set(),
    User: {"extras"},
}

FIELDS = {DataBase: set(), FileManager: set(), User: {"name", "age", "ID"}}

USER_SIGNATURE = (
    "(name: str, age: int, ID: uuid.UUID | str | bytes | None = None, extras: collections.abc.Mapping[str, typing.Any] | None = None)"
)


def test_all_is_pinned():
    assert pydbms_shard.__all__ == ALL
    for name in ALL:
        assert getattr(pydbms_shard, name) is not None


def _public(cls: type) -> dict[str, object]:
    """Every name a user may call: public names plus the dunders the class defines itself."""
    dunders = {"__init__", "__contains__", "__enter__", "__exit__", "__iter__", "__len__", "__repr__"}
    return {name: obj for name, obj in vars(cls).items() if not name.startswith("_") or name in dunders}


@pytest.mark.parametrize("cls", list(SIGNATURES), ids=lambda c: c.__name__)
def test_public_methods_are_pinned(cls):
    public = _public(cls)
    properties = {name for name, obj in public.items() if isinstance(obj, property)}
    fields = {name for name, obj in public.items() if inspect.ismemberdescriptor(obj)}
    methods = {name for name in public if name not in properties | fields}
    assert properties == PROPERTIES[cls]
    assert fields == FIELDS[cls]
    assert methods == set(SIGNATURES[cls])
    for name, expected in SIGNATURES[cls].items():
        assert str(inspect.signature(getattr(cls, name))) == expected, name


def test_locked_methods_keep_name_doc_and_signature():
    method = DataBase.add_users
    assert method.__name__ == "add_users" and method.__qualname__ == "DataBase.add_users"
    assert "added" in (method.__doc__ or "")
    assert "users" in inspect.signature(method).parameters
    assert inspect.signature(DataBase.__len__).return_annotation == "int"


def test_user_signature_shows_extras_not_the_stored_field():
    assert str(inspect.signature(User)) == USER_SIGNATURE
    assert User.__struct_fields__ == ("name", "age", "ID", "_extras")  # the stored layout is unchanged
    text = inspect.getdoc(User) or ""
    assert "extras" in text and "_extras" not in text


def test_error_hierarchy():
    classes = [obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, BaseException)]
    assert len(classes) >= 12
    for cls in [*classes, ShardFailure]:
        assert issubclass(cls, PydbmsError), cls.__name__


def test_py_typed_is_shipped():
    assert resources.files("pydbms_shard").joinpath("py.typed").is_file()


def test_database_repr(tmp_path):
    with DataBase(shards=2) as db:
        assert re.fullmatch(r"<DataBase shards=2 open users=0>", repr(db))
        users = generate_users(50, seed=1)
        db.add_users(users + users[:5])
        db.upsert_users([User("new", 1), users[0]])
        db.remove_users([users[1].ID, users[2].name, "nobody"])
        assert repr(db) == f"<DataBase shards=2 open users={len(db)}>"
        db.clear_database()
        assert repr(db) == "<DataBase shards=2 open users=0>"
    assert re.fullmatch(r"<DataBase shards=2 closed>", repr(db))
    path = tmp_path / "users.json"
    with DataBase(shards=1, snapshot_path=str(path), log_fsync="everysec") as db:
        db.add_users(generate_users(7, seed=2))
        assert re.fullmatch(r"<DataBase shards=1 open users=7 path='[^']*users\.json' log=everysec>", repr(db))
    with DataBase(shards=1, snapshot_path=str(path), log=False) as db:  # opening loads the 7
        assert re.fullmatch(r"<DataBase shards=1 open users=7 path='[^']*users\.json' log=off>", repr(db))


def test_filemanager_repr(tmp_path):
    with DataBase(shards=1) as db:
        manager = FileManager(db, tmp_path / "out.json")
        assert re.fullmatch(r"<FileManager output_file='[^']*out\.json' database=<DataBase shards=1 open users=0>>", repr(manager))


def test_old_module_name_is_gone():
    with pytest.raises(ImportError):
        __import__("pydbms_shard.persistence")
