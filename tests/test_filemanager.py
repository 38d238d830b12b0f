"""The original's FileManager API, readable conversion and import of JSON-lines files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from pydbms_shard import DataBase, FileManager, ImportFileError, PydbmsTypeError, PydbmsValueError, SnapshotError, User, generate_users
from pydbms_shard.bench.original import OriginalDataBase, OriginalUser
from pydbms_shard.filemanager import convert_file, import_file
from pydbms_shard.snapshot import read_manifest

TEXT_LINE = re.compile(r'^User "(.*)" is (\d+) years old \(ID: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\)$')

EXAMPLE = """
from pydbms_shard import *

db = DataBase(shards=2)
db.add_users([User("Alice", 25, extras={"email": "alice@example.org", "tags": ["a", "b"]}), User("Bob 🎉", 30)])
db.add_users(generate_users(500, seed=3))

# ---- the original README's example, exactly as written ----

database = DataBase()
file_manager = FileManager(database=db, output_file="users_db.json", autosave_interval=5)
file_manager.save()                     # Save database to file
file_manager.backup("users_backup.json") # Backup
file_manager.load()                     # Load back into database
file_manager.start_autosave()           # Start autosave in background
file_manager.stop_autosave()            # Stop autosave
file_manager.convert_file("users_db.json", "readable_db.json")

# ---- end of the example ----
print("size", db.size, flush=True)
"""


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    """The original's example run as a script (no main guard, relative paths) in a fresh dir."""
    directory = tmp_path_factory.mktemp("example")
    (directory / "example.py").write_text(EXAMPLE)
    marker = uuid.uuid4().hex
    env = dict(os.environ, PYDBMS_EXAMPLE_MARKER=marker)
    try:
        result = subprocess.run([sys.executable, "example.py"], cwd=directory, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        assert "size 502" in result.stdout, result.stdout + result.stderr
        # neither DataBase was closed by the example: their workers still end with the script
        deadline = time.monotonic() + 10
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _marked(marker), "worker processes outlived the example script"
    finally:
        for proc in _marked(marker):
            proc.kill()
    return directory


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PYDBMS_EXAMPLE_MARKER") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def test_original_example_runs_as_written(example_dir):
    manifest = json.loads((example_dir / "users_db.json").read_bytes())
    assert manifest["users"] == 502
    assert read_manifest(example_dir / "users_backup.json").users == 502
    assert (example_dir / "readable_db.json").exists()
    with DataBase(shards=2) as db:
        assert FileManager(database=db, output_file=example_dir / "users_backup.json").load().users == 502
        assert db.size == 502


def test_readable_file_is_json_lines_of_every_user(example_dir):
    lines = (example_dir / "readable_db.json").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 502
    rows = [json.loads(line) for line in lines]
    for row in rows:
        assert set(row) == {"name", "age", "ID", "extras"}
        uuid.UUID(row["ID"])
        assert isinstance(row["age"], int) and isinstance(row["extras"], dict)
    by_name = {row["name"]: row for row in rows}
    assert by_name["Alice"]["age"] == 25
    assert by_name["Alice"]["extras"] == {"email": "alice@example.org", "tags": ["a", "b"]}
    assert by_name["Bob 🎉"]["extras"] == {}
    expected = {(u.name, u.age, str(u.ID)) for u in generate_users(500, seed=3)}
    got = {(r["name"], r["age"], r["ID"]) for r in rows}
    assert expected <= got and len(got) == 502


def test_convert_to_the_originals_text_lines(example_dir, tmp_path):
    dst = tmp_path / "readable.txt"
    with DataBase(shards=1) as db:
        fm = FileManager(database=db, output_file=example_dir / "users_db.json")
        assert fm.convert_file(example_dir / "users_db.json", dst, format="text") == 502
    lines = dst.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 502
    parsed = []
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match, f"not the original's text line: {line!r}"
        parsed.append(match.groups())
    alice = [p for p in parsed if p[0] == "Alice"]
    assert len(alice) == 1 and alice[0][1] == "25"
    expected = {(u.name, str(u.age), str(u.ID)) for u in generate_users(500, seed=3)}
    assert expected <= set(parsed)


def test_convert_reports_progress_and_handles_awkward_names(tmp_path):
    path = tmp_path / "db.json"
    odd = [User("line\nbreak", 1), User('say "hi"', 2), User("tab\there", 3), User("Zoë 🎉", 4, extras={"k": [1, {"x": None}]})]
    with DataBase(shards=3) as db:
        db.add_users(odd + generate_users(1000, seed=1))
        db.save(path)
    seen = []
    assert convert_file(path, tmp_path / "out.jsonl", progress=seen.append) == 1004
    assert sum(seen) == 1004
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1004
    by_id = {r["ID"]: r for r in rows}
    for user in odd:
        assert by_id[str(user.ID)] == user.to_dict()


def test_convert_rejects_unknown_format(example_dir, tmp_path):
    with pytest.raises(PydbmsValueError):
        convert_file(example_dir / "users_db.json", tmp_path / "x", format="xml")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- damaged sources


def _damaged_snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "db.json"
    with DataBase(shards=2) as db:
        db.add_users(generate_users(300, seed=2))
        db.save(path)
    files = sorted(json.loads(path.read_bytes())["files"], key=lambda f: f["shard"])
    victim = tmp_path / files[1]["name"]  # shard 0 converts fine, then shard 1 is found damaged
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_convert_of_damaged_snapshot_leaves_no_destination(tmp_path, fmt):
    path = _damaged_snapshot(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    before = set(os.listdir(tmp_path))
    with pytest.raises(SnapshotError) as exc:
        convert_file(path, out / "readable.json", format=fmt)
    assert ".s001.pdbs" in str(exc.value)
    assert os.listdir(out) == [], "a destination or temp file was left behind"
    assert set(os.listdir(tmp_path)) == before

    # an existing destination is not clobbered by a failed conversion
    keep = out / "keep.json"
    keep.write_text("previous conversion\n")
    with pytest.raises(SnapshotError):
        convert_file(path, keep, format=fmt)
    assert keep.read_text() == "previous conversion\n"
    assert os.listdir(out) == ["keep.json"]


def test_convert_of_missing_snapshot(tmp_path):
    with pytest.raises(SnapshotError):
        convert_file(tmp_path / "nothing.json", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


# ---------------------------------------------------------------- import


@pytest.fixture
def db():
    with DataBase(shards=2) as database:
        yield database


def test_import_our_own_json_lines(example_dir, db):
    assert import_file(db, example_dir / "readable_db.json") == 502
    assert len(db) == 502
    alice = db.find_by_name("Alice")
    assert len(alice) == 1 and alice[0].age == 25
    assert alice[0].extras["email"] == "alice@example.org"
    for user in generate_users(500, seed=3)[:50]:
        got = db.get(user.ID)
        assert got is not None and (got.name, got.age) == (user.name, user.age)
    assert import_file(db, example_dir / "readable_db.json") == 0  # all already stored


def test_import_an_original_pydbms_save_file(tmp_path, db):
    original = OriginalDataBase()
    people = [
        OriginalUser("Alice", 25, uuid.uuid4(), {"email": "alice@example.org"}),
        OriginalUser("Zoë 🎉", 31, uuid.uuid4(), {"nested": {"list": [1, 2.5, None, True]}}),
        OriginalUser("李小龙", 32, uuid.uuid4()),
    ] + [OriginalUser(f"user{i}", i % 100, uuid.uuid4()) for i in range(200)]
    original.add_users(people)
    save_file = tmp_path / "users_db.json"
    original.save(str(save_file))  # one JSON object per line, as pyDBMS writes it
    assert save_file.read_text().count("\n") == len(people)

    fm = FileManager(database=db, output_file=tmp_path / "ours.json")
    assert fm.import_file(save_file) == len(people)
    assert len(db) == len(people)
    for person in people:
        got = db.get(person.ID)
        assert got is not None
        assert got.to_dict() == {"name": person.name, "age": person.age, "ID": str(person.ID), "extras": dict(person.extras)}
    # and they can be saved in the new format straight away
    assert fm.save().users == len(people)


def test_load_of_an_original_save_file_is_refused_cleanly(tmp_path, db):
    """An original pyDBMS users_db.json is JSON lines, not a manifest: load() refuses it
    (import_file is the way in) and the database is unchanged."""
    original = OriginalDataBase()
    original.add_users([OriginalUser(f"o{i}", 20) for i in range(5)])
    original.save(str(tmp_path / "users_db.json"))
    db.add_users([User("mine", 1)])
    fm = FileManager(database=db, output_file=tmp_path / "users_db.json")
    with pytest.raises(SnapshotError) as exc:
        fm.load()
    assert "users_db.json" in str(exc.value)
    assert [u.name for u in db] == ["mine"]
    assert fm.import_file(tmp_path / "users_db.json") == 5


def test_import_accepts_crlf_and_blank_lines_and_missing_optional_keys(tmp_path, db):
    uid = uuid.uuid4()
    src = tmp_path / "win.jsonl"
    src.write_bytes(
        b'{"name": "Ann", "age": 3, "ID": "' + str(uid).encode() + b'", "extras": {}}\r\n'
        b"\r\n"
        b'{"name": "Ben", "age": 4}\r\n'
        b'{"name": "Cy", "age": 5, "ID": null, "extras": null}\n'
    )
    assert import_file(db, src) == 3
    assert db.get(uid).name == "Ann"
    assert {u.name for u in db} == {"Ann", "Ben", "Cy"}


BAD_LINES = {
    "not-json": b'{"name": "x", "age": ',
    "age-not-int": b'{"name": "x", "age": "old"}',
    "age-out-of-range": b'{"name": "x", "age": 200}',
    "age-bool": b'{"name": "x", "age": true}',
    "empty-name": b'{"name": "", "age": 3}',
    "no-name": b'{"age": 3}',
    "bad-uuid": b'{"name": "x", "age": 3, "ID": "not-a-uuid"}',
    "unknown-key": b'{"name": "x", "age": 3, "email": "x@y"}',
    "extras-not-mapping": b'{"name": "x", "age": 3, "extras": [1, 2]}',
    "a-list": b'["x", 3]',
    "binary": b"\x00\x01\x02",
}


@pytest.mark.parametrize("bad", list(BAD_LINES))
def test_bad_line_names_its_number_and_imports_nothing(tmp_path, db, bad):
    db.add_users([User("already", 1)])
    good = [json.dumps(User(f"g{i}", 20).to_dict()).encode() for i in range(9)]
    lines = good[:6] + [BAD_LINES[bad]] + good[6:]  # the bad one is line 7
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ImportFileError) as exc:
        import_file(db, src)
    message = str(exc.value)
    assert re.search(r"(?:line\s*|:)7\b", message), message
    assert str(src) in message
    assert len(db) == 1, "part of the file was imported"


def test_import_missing_file(tmp_path, db):
    with pytest.raises(ImportFileError):
        import_file(db, tmp_path / "absent.jsonl")
    assert len(db) == 0


def test_filemanager_requires_a_database(tmp_path):
    with pytest.raises(PydbmsTypeError):  # a wrong type: TypeError, as everywhere
        FileManager(database={}, output_file=tmp_path / "x.json")
