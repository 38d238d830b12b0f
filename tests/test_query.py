"""Queries beyond ID and name: ``DataBase.query`` and ``count`` (filters by exact name, name
prefix and age range; order by age or name, ties by ID; limit), checked against a list
comprehension over the same users, against SQLite, and through ``pydbms query`` and the shell."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydbms_shard import DataBase, PydbmsTypeError, PydbmsValueError, User, generate_users
from pydbms_shard.cli import EXIT_OK, EXIT_USAGE
from pydbms_shard.codec import Record
from pydbms_shard.workers.columns import ColumnPartition

ORDERS = [None, "age", "-age", "name", "-name"]

# names that are prefixes of each other (also past 8 and 16 bytes, the words names are sorted by),
# multi-byte ones, emoji and ZWJ sequences whose code points are prefixes of each other
NAMES = [
    "A",
    "Ab",
    "Abc",
    "Abcdefgh",
    "Abcdefghi",
    "Abcdefghijklmnop",
    "Abcdefghijklmnopq",
    "Abcdefghijklmnopr",
    "Abd",
    "a",
    "ab",
    "Z",
    "é",
    "éa",
    "e\u0301",
    "Ω",
    "中文",
    "中",
    "😀",
    "😀😀",
    "👩",
    "👩\u200d",
    "👩\u200d👩\u200d👧",
    "👩\u200d👩\u200d👧\u200d👦",
    "\U0010ffff",
    "x\x00",
    "x",
]
PREFIXES = sorted({name[:k] for name in NAMES for k in range(len(name) + 1)})


def model_query(
    users: dict[uuid.UUID, User],
    name: str | None = None,
    name_prefix: str | None = None,
    age_min: int | None = None,
    age_max: int | None = None,
    order_by: str | None = None,
    limit: int | None = None,
) -> list[User]:
    """The answer by list comprehension (and Python's sorted for the order)."""
    lo = -(10**9) if age_min is None else age_min
    hi = 10**9 if age_max is None else age_max
    found = [
        u
        for u in users.values()
        if (name is None or u.name == name) and (name_prefix is None or u.name.startswith(name_prefix)) and lo <= u.age <= hi
    ]
    if order_by == "age":
        found.sort(key=lambda u: (u.age, u.ID))
    elif order_by == "-age":
        found.sort(key=lambda u: (-u.age, u.ID))
    elif order_by == "name":
        found.sort(key=lambda u: (u.name, u.ID))
    elif order_by == "-name":
        found.sort(key=lambda u: u.ID)
        found.sort(key=lambda u: u.name, reverse=True)  # stable: equal names keep ascending IDs
    return found if limit is None else found[:limit]


def facts(users: list[User]) -> list[tuple[Any, ...]]:
    return [(u.ID, u.name, u.age, dict(u.extras)) for u in users]


def check(db: DataBase, users: dict[uuid.UUID, User], **query: Any) -> None:
    got = db.query(**query)
    want = model_query(users, **query)
    if query.get("order_by") is None:
        everything = model_query(users, **{**query, "limit": None})
        assert len(got) == len(want)
        assert len({u.ID for u in got}) == len(got)
        assert {u.ID for u in got} <= {u.ID for u in everything}
        if query.get("limit") is None:
            assert sorted(facts(got), key=str) == sorted(facts(want), key=str)
    else:
        assert facts(got) == facts(want), query
    counting = {k: v for k, v in query.items() if k not in ("order_by", "limit")}
    assert db.count(**counting) == len(model_query(users, **counting))


# ---------------------------------------------------------------- strategies

names = st.one_of(st.sampled_from(NAMES), st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20))
ages = st.integers(0, 150)
extras = st.one_of(st.none(), st.just({"k": 1}), st.just({}))
new_users = st.lists(st.builds(lambda n, a, e: User(n, a, extras=e), names, ages, extras), max_size=40)

queries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.none(), st.sampled_from(NAMES), names),
        "name_prefix": st.one_of(st.none(), st.sampled_from(PREFIXES)),
        "age_min": st.one_of(st.none(), st.integers(-3, 160)),
        "age_max": st.one_of(st.none(), st.integers(-3, 160)),
        "order_by": st.sampled_from(ORDERS),
        "limit": st.one_of(st.none(), st.integers(0, 30)),
    },
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[User], list[int], list[str], list[tuple[int, str, int]]]:
    """Users added, then some removed by ID (positions) and by name, then some upserted with a
    new name and age (position, name, age): the columns' tombstones and moved rows."""
    users = draw(new_users)
    removed = draw(st.lists(st.integers(0, max(len(users) - 1, 0)), max_size=10)) if users else []
    removed_names = draw(st.lists(st.sampled_from(NAMES), max_size=2))
    upserts = draw(st.lists(st.tuples(st.integers(0, max(len(users) - 1, 0)), names, ages), max_size=10)) if users else []
    return users, removed, removed_names, upserts


# ---------------------------------------------------------------- the model, on real workers


@pytest.fixture(scope="module", params=[1, 3], ids=lambda n: f"{n}shards")
def shared_db(request):
    with DataBase(shards=request.param) as database:
        yield database


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=histories(), asked=st.lists(queries, min_size=1, max_size=6))
def test_queries_match_the_model(shared_db: DataBase, history, asked) -> None:
    db = shared_db
    users, removed, removed_names, upserts = history
    db.clear_database()
    db.add_users(users)
    model = {u.ID: u for u in users}
    gone = [users[i].ID for i in removed]
    db.remove_users([*gone, *removed_names])
    for i in gone:
        model.pop(i, None)
    model = {k: u for k, u in model.items() if u.name not in removed_names}
    changed = [User(name, age, ID=users[i].ID) for i, name, age in upserts]
    db.upsert_users(changed)
    for user in changed:
        model[user.ID] = user
    for query in asked:
        check(db, model, **query)
    for order_by in ORDERS:
        check(db, model, order_by=order_by)
        check(db, model, order_by=order_by, limit=3)


# ---------------------------------------------------------------- one partition, many rounds


class _Compacting(ColumnPartition):
    _COMPACT_MIN = 4  # compaction (row renumbering) inside small examples


@settings(max_examples=150, deadline=None)
@given(
    history=histories(),
    asked=st.lists(queries, min_size=1, max_size=8),
)
def test_partition_queries_match_the_model(history, asked) -> None:
    users, removed, removed_names, upserts = history
    part = _Compacting()
    part.add([Record(u.name, u.age, u.ID.bytes, dict(u.extras) if u.extras else None) for u in users])
    model = {u.ID: u for u in users}
    gone = [users[i].ID for i in removed]
    part.remove([i.bytes for i in gone], removed_names)
    for i in gone:
        model.pop(i, None)
    model = {k: u for k, u in model.items() if u.name not in removed_names}
    changed = [User(name, age, ID=users[i].ID) for i, name, age in upserts]
    part.upsert([Record(u.name, u.age, u.ID.bytes, None) for u in changed])
    for user in changed:
        model[user.ID] = user
    for query in asked:
        lo = query.get("age_min")
        hi = query.get("age_max")
        lo = 0 if lo is None else max(lo, 0)
        hi = 255 if hi is None else hi
        order_by, limit = query.get("order_by"), query.get("limit")
        rows = part.query_rows(query.get("name"), query.get("name_prefix"), lo, hi, order_by, limit)
        got = [(uuid.UUID(bytes=r.id), r.name, r.age) for r in part._records(rows)]
        want = [(u.ID, u.name, u.age) for u in model_query(model, **query)]
        if order_by is None:
            assert len(set(got)) == len(got) and set(got) <= {(u.ID, u.name, u.age) for u in model_query(model, **{**query, "limit": None})}
            assert len(got) == len(want)
        else:
            assert got == want
        assert part.query_count(query.get("name"), query.get("name_prefix"), lo, hi) == len(model_query(model, **{**query, "limit": None}))


def test_names_sharing_long_prefixes_sort_as_python_sorts() -> None:
    """Names equal over their first 8 or 16 bytes, NUL bytes and prefixes of each other: the
    8-byte words and lengths the shards sort by give Python's order."""
    base = "abcdefgh" * 3
    names = [base[:k] + tail for k in range(0, 25, 4) for tail in ["", "\x00", "\x00\x00", "a", "\U0010ffff", "é"] if base[:k] + tail]
    part = ColumnPartition([Record(n, 1, uuid.uuid4().bytes, None) for n in names * 3])
    stored = [(r.name, r.id) for r in part.values()]
    ascending = sorted(stored)
    descending = sorted(sorted(stored, key=lambda t: t[1]), key=lambda t: t[0], reverse=True)  # IDs still ascending
    for order_by, want in (("name", ascending), ("-name", descending)):
        assert [(r.name, r.id) for r in part._records(part.query_rows(order_by=order_by))] == want
        for limit in (1, 5, 17):
            assert [(r.name, r.id) for r in part._records(part.query_rows(order_by=order_by, limit=limit))] == want[:limit]


# ---------------------------------------------------------------- SQLite's answers


@pytest.fixture(scope="module")
def sqlite_pair():
    """The same users in a DataBase (2 shards) and in SQLite, IDs as 16-byte blobs."""
    users = generate_users(3000, seed=11)
    users += [User(name, age) for name in NAMES if "\x00" not in name for age in (0, 7, 150)]  # SQLite text stops at NUL
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE users (id BLOB PRIMARY KEY, name TEXT NOT NULL, age INTEGER NOT NULL)")
    con.executemany("INSERT INTO users VALUES (?, ?, ?)", [(u.ID.bytes, u.name, u.age) for u in users])
    con.execute("CREATE INDEX by_age ON users(age)")
    con.execute("CREATE INDEX by_name ON users(name)")
    with DataBase(shards=2) as db:
        db.add_users(users)
        yield db, con, users
    con.close()


def _sql(
    con: sqlite3.Connection,
    name: str | None,
    prefix: str | None,
    lo: int | None,
    hi: int | None,
    order: str | None,
    limit: int | None,
    count: bool = False,
) -> Any:
    where, params = ["1"], []
    if name is not None:
        where.append("name = ?")
        params.append(name)
    if prefix is not None:
        where.append("substr(name, 1, length(?)) = ?")  # characters, not bytes, for TEXT
        params += [prefix, prefix]
    if lo is not None:
        where.append("age >= ?")
        params.append(lo)
    if hi is not None:
        where.append("age <= ?")
        params.append(hi)
    sql = f"SELECT {'count(*)' if count else 'id'} FROM users WHERE {' AND '.join(where)}"
    if count:
        return con.execute(sql, params).fetchone()[0]
    if order is not None:
        column = order.lstrip("-")
        sql += f" ORDER BY {column} {'DESC' if order.startswith('-') else 'ASC'}, id ASC"
    if limit is not None:
        sql += f" LIMIT {limit}"
    return [uuid.UUID(bytes=row[0]) for row in con.execute(sql, params)]


def test_sqlite_binary_collation_is_pythons_order(sqlite_pair) -> None:
    """SQLite's default BINARY collation compares the UTF-8 bytes: code point order, as
    Python's sorted, also for emoji, ZWJ sequences and names that are prefixes of others."""
    _, con, users = sqlite_pair
    by_sqlite = [row[0] for row in con.execute("SELECT name FROM users ORDER BY name, id")]
    assert by_sqlite == sorted(u.name for u in users)


def test_every_query_agrees_with_sqlite(sqlite_pair) -> None:
    db, con, users = sqlite_pair
    some_name = users[5].name
    cases = 0
    for name in (None, some_name, "😀", "nobody"):
        for prefix in (None, "", "A", "Ab", "👩\u200d", "中", "zz"):
            for lo, hi in ((None, None), (18, 30), (50, 50), (None, 0), (150, None), (40, 20)):
                assert db.count(name=name, name_prefix=prefix, age_min=lo, age_max=hi) == _sql(con, name, prefix, lo, hi, None, None, True)
                for order in ("age", "-age", "name", "-name"):
                    for limit in (None, 0, 1, 100):
                        got = [u.ID for u in db.query(name=name, name_prefix=prefix, age_min=lo, age_max=hi, order_by=order, limit=limit)]
                        assert got == _sql(con, name, prefix, lo, hi, order, limit), (name, prefix, lo, hi, order, limit)
                        cases += 1
                unordered = {u.ID for u in db.query(name=name, name_prefix=prefix, age_min=lo, age_max=hi)}
                assert unordered == set(_sql(con, name, prefix, lo, hi, None, None))
    assert cases == 4 * 7 * 6 * 16


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("call", "kwargs", "error", "needle"),
    [
        ("query", {"age_min": True}, PydbmsTypeError, "age_min"),
        ("query", {"age_max": 3.0}, PydbmsTypeError, "age_max"),
        ("count", {"age_min": "18"}, PydbmsTypeError, "age_min"),
        ("query", {"name": 5}, PydbmsTypeError, "name"),
        ("count", {"name": b"Ada"}, PydbmsTypeError, "name"),
        ("query", {"name_prefix": ["A"]}, PydbmsTypeError, "name_prefix"),
        ("query", {"name_prefix": "\ud800"}, PydbmsValueError, "name_prefix"),
        ("query", {"order_by": "height"}, PydbmsValueError, "order_by"),
        ("query", {"order_by": 1}, PydbmsTypeError, "order_by"),
        ("query", {"limit": -1}, PydbmsValueError, "limit"),
        ("query", {"limit": 1.5}, PydbmsTypeError, "limit"),
        ("query", {"limit": False}, PydbmsTypeError, "limit"),
    ],
)
def test_bad_arguments_name_the_argument(shared_db: DataBase, call, kwargs, error, needle) -> None:
    with pytest.raises(error, match=needle):
        getattr(shared_db, call)(**kwargs)


def test_arguments_are_keyword_only(shared_db: DataBase) -> None:
    with pytest.raises(TypeError):
        shared_db.query("Ada")  # type: ignore[misc]
    with pytest.raises(TypeError):
        shared_db.count(18)  # type: ignore[misc]


def test_empty_answers(shared_db: DataBase) -> None:
    shared_db.clear_database()
    assert shared_db.query() == [] and shared_db.count() == 0
    shared_db.add_users([User("Ada", 36)])
    assert shared_db.query(age_min=40, age_max=30) == [] and shared_db.count(age_min=40, age_max=30) == 0
    assert shared_db.query(limit=0) == [] and shared_db.query(name="Ada", limit=0, order_by="name") == []
    assert shared_db.query(age_min=-5, age_max=10**30) != [] and shared_db.count(age_min=151) == 0
    assert shared_db.count(name_prefix="") == 1 and shared_db.count(name="") == 0


# ---------------------------------------------------------------- the command line and the shell


def _run(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "pydbms_shard", *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def snap(tmp_path_factory) -> tuple[Path, list[User]]:
    where = tmp_path_factory.mktemp("query")
    users = generate_users(500, seed=3) + [User("Ada", 36), User("Adam", 20), User("👩\u200d👩\u200d👧", 36)]
    with DataBase(shards=2, snapshot_path=str(where / "db.json")) as db:
        db.add_users(users)
        db.save()
    return where / "db.json", users


@pytest.mark.slow
def test_cli_query_and_count(snap) -> None:
    path, users = snap
    model = {u.ID: u for u in users}
    result = _run("query", str(path), "--age", "30:40", "--name-prefix", "Ad", "--order-by", "-age", "--limit", "5", cwd=path.parent)
    assert result.returncode == EXIT_OK, result.stderr
    got = [User.from_json(line) for line in result.stdout.splitlines()]
    assert facts(got) == facts(model_query(model, name_prefix="Ad", age_min=30, age_max=40, order_by="-age", limit=5))
    result = _run("query", str(path), "--age", "36", "--count", cwd=path.parent)
    assert result.stdout.strip() == str(len(model_query(model, age_min=36, age_max=36)))
    result = _run("query", str(path), "--age", ":20", "--count", "--json", cwd=path.parent)
    assert json.loads(result.stdout) == {"count": len(model_query(model, age_max=20))}
    result = _run("query", str(path), "--name", "👩\u200d👩\u200d👧", "--order-by=name", "--json", cwd=path.parent)
    answer = json.loads(result.stdout)
    assert answer["count"] == 1 and answer["users"][0]["age"] == 36
    result = _run("query", str(path), "--name", "nobody", cwd=path.parent)
    assert result.returncode == EXIT_OK and result.stdout == ""  # an empty answer is an answer


@pytest.mark.parametrize(
    "args",
    [["--age", "x"], ["--age", "30:2x"], ["--limit", "-1"], ["--order-by", "height"], ["--count", "--limit", "3"]],
)
def test_cli_query_bad_arguments_are_one_line(snap, args) -> None:
    path, _ = snap
    result = _run("query", str(path), *args, cwd=path.parent)
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr


def test_cli_query_opens_read_only(snap) -> None:
    path, _ = snap
    before = sorted(p.name for p in path.parent.iterdir())
    assert _run("query", str(path), "--count", cwd=path.parent).stdout.strip() == "503"
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_shell_query_and_filtered_count(snap) -> None:
    path, users = snap
    model = {u.ID: u for u in users}
    script = (
        "count\n"
        "count --age 30:40\n"
        "count --name-prefix Ad --age 36:\n"
        "query --name-prefix Ad --order-by -name --limit 3\n"
        "query --age 0:0\n"
        "count --limit 3\n"
        "query --order-by height\n"
    )
    result = _run("shell", str(path), "--shards", "2", cwd=path.parent, stdin=script)
    lines = result.stdout.splitlines()
    assert lines[0] == str(len(users))
    assert lines[1] == str(len(model_query(model, age_min=30, age_max=40)))
    assert lines[2] == str(len(model_query(model, name_prefix="Ad", age_min=36)))
    want = model_query(model, name_prefix="Ad", order_by="-name", limit=3)
    assert facts([User.from_json(line) for line in lines[3:]]) == facts(want)
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors), result.stderr
    assert "--limit" in errors[0] and "height" in errors[1]
    assert result.returncode == EXIT_USAGE
