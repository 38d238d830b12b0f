"""DataBase: every call, against real worker processes, on 1, 2 and 3 shards.

Starting workers costs ~0.3 s, so each layout's DataBase is started once per module and
cleared before every test (the ``db`` fixture below overrides the conftest one for this file).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from pydbms_shard import ClosedError, Config, ConfigError, DataBase, PydbmsError, User
from pydbms_shard.routing import shards_of

CHUNK = 7


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda n: f"{n}shards")
def shared_db(request):
    with DataBase(shards=request.param, iter_chunk_size=CHUNK) as database:
        yield database


@pytest.fixture
def db(shared_db):
    shared_db.clear_database()
    assert len(shared_db) == 0
    return shared_db


def fields(user: User | None):
    """Every field, hashable (extras as canonical JSON)."""
    if user is None:
        return None
    return (user.ID, user.name, user.age, json.dumps(user.to_dict()["extras"], sort_keys=True))


def contents(db: DataBase) -> list:
    """Everything stored, order-free (through iteration and len, which must agree)."""
    users = list(db)
    assert len(users) == len(db) == db.size
    return sorted(map(fields, users), key=lambda f: f[0])


def make_users(n: int, prefix: str = "user", start: int = 0) -> list[User]:
    return [User(f"{prefix}{k}", k % 100, extras={"k": k} if k % 3 == 0 else None) for k in range(start, start + n)]


def multiset(users) -> Counter:
    return Counter(map(fields, users))


# ------------------------------------------------------------------ add_users / size / len


def test_add_users_counts_and_stores(db):
    users = make_users(150)
    assert db.add_users(users) == 150
    assert len(db) == 150 and db.size == 150
    assert contents(db) == sorted(map(fields, users), key=lambda f: f[0])


def test_add_users_skips_stored_ids_and_keeps_the_original(db):
    users = make_users(20)
    db.add_users(users)
    clash = User("impostor", 99, users[3].ID, {"x": 1})
    fresh = make_users(5, "fresh")
    assert db.add_users([clash, *fresh]) == 5
    assert len(db) == 25
    assert fields(db.get(users[3].ID)) == fields(users[3])
    assert db.find_by_name("impostor") == []


def test_add_users_same_id_twice_in_one_batch(db):
    a = User("first", 1)
    b = User("second", 2, a.ID)
    assert db.add_users([a, b]) == 1
    assert len(db) == 1
    assert fields(db.get(a.ID)) == fields(a)


def test_add_and_get_keep_every_field(db):
    user = User(
        "Zoë 🙂 李",
        150,
        extras={
            "nested": {"l": [1, 2.5, None, True, "ü"]},
            "empty": {},
            "types": [1, 1.0, True, 0, 0.0, -0.0, False, None, "", 2**64 - 1, -(2**63)],
        },
    )
    assert db.add(user) is True
    assert db.add(user) is False
    got = db.get(user.ID)
    assert type(got) is User and fields(got) == fields(user)
    assert dict(got.extras)["nested"]["l"] == (1, 2.5, None, True, "ü")
    types = got.extras["types"]
    assert [type(v) for v in types] == [int, float, bool, int, float, float, bool, type(None), str, int, int]
    assert str(types[5]) == "-0.0"


# ------------------------------------------------------------------ get, get_many, contains_many, in


def test_get_by_uuid_string_and_user(db):
    users = make_users(30)
    db.add_users(users)
    for user in users[:10]:
        assert fields(db.get(user.ID)) == fields(user)
        assert fields(db.get(str(user.ID))) == fields(user)
        assert fields(db.get(User("whoever", 1, user.ID))) == fields(user)
    assert db.get(uuid.uuid4()) is None
    assert db.get(str(uuid.uuid4())) is None


def test_get_many_in_order_with_none(db):
    users = make_users(40)
    db.add_users(users[:30])
    ask = [users[35].ID, users[0].ID, str(users[29].ID), users[31], users[0].ID, uuid.uuid4(), users[12]]
    got = db.get_many(ask)
    assert [fields(u) for u in got] == [None, fields(users[0]), fields(users[29]), None, fields(users[0]), None, fields(users[12])]


def test_contains_many_and_in(db):
    users = make_users(40)
    db.add_users(users[:20])
    ask = [u.ID for u in users[15:25]] + [str(users[0].ID), users[39]]
    assert db.contains_many(ask) == [True] * 5 + [False] * 5 + [True, False]
    assert users[0].ID in db
    assert str(users[1].ID) in db
    assert users[2] in db
    assert users[25].ID not in db
    assert uuid.uuid4() not in db


# ------------------------------------------------------------------ search_users, find_by_name


def _grouped_db(db):
    groups = {
        "g1": [User("g1", k) for k in range(5)],
        "g2": [User("g2", k) for k in range(2)],
    }
    singles = make_users(30, "single")
    db.add_users([*groups["g1"], *singles[:15], *groups["g2"], *singles[15:]])
    return groups, singles


def test_search_by_id_and_user_in_query_order(db):
    _, singles = _grouped_db(db)
    queries = [singles[20].ID, singles[3], singles[29].ID, uuid.uuid4(), singles[3].ID, singles[0]]
    result = db.search_users(queries)
    assert [fields(u) for u in result] == [fields(singles[k]) for k in (20, 3, 29, 3, 0)]


def test_search_by_user_matches_on_id_not_on_name(db):
    stored = User("stored", 5)
    db.add(stored)
    assert [fields(u) for u in db.search_users([User("other name", 9, stored.ID)])] == [fields(stored)]
    assert db.search_users([User("stored", 5)]) == []


def test_search_by_name_returns_every_match(db):
    groups, singles = _grouped_db(db)
    assert multiset(db.search_users(["g1"])) == multiset(groups["g1"])
    assert multiset(db.find_by_name("g2")) == multiset(groups["g2"])
    assert db.find_by_name("nobody") == []
    assert [fields(u) for u in db.find_by_name("single7")] == [fields(singles[7])]


def test_mixed_queries_grouped_in_query_order(db):
    groups, singles = _grouped_db(db)
    queries = ["g2", singles[10], "missing", singles[2].ID, "g1", uuid.uuid4(), "single5", "g2", singles[10].ID]
    expected_groups = [groups["g2"], [singles[10]], [], [singles[2]], groups["g1"], [], [singles[5]], groups["g2"], [singles[10]]]
    result = db.search_users(queries)
    assert len(result) == sum(map(len, expected_groups))
    at = 0
    for query, expected in zip(queries, expected_groups):
        got = result[at : at + len(expected)]
        assert multiset(got) == multiset(expected), f"group of query {query!r}"
        at += len(expected)


def test_search_returns_users_with_extras(db):
    user = User("with extras", 3, extras={"tags": ["a", "b"], "n": {"x": 1.25}})
    db.add(user)
    (found,) = db.search_users(["with extras"])
    assert fields(found) == fields(user)


# ------------------------------------------------------------------ has_user


def test_has_user(db):
    groups, singles = _grouped_db(db)
    assert db.has_user([singles[0], singles[1].ID, "g1", "single29"]) is True
    assert db.has_user([singles[0], uuid.uuid4()]) is False
    assert db.has_user([singles[0], "nobody"]) is False
    assert db.has_user(["g2"]) is True
    assert db.has_user([User("g1", 1)]) is False  # by ID, not by name
    assert db.has_user([s.ID for s in singles]) is True
    assert db.has_user([s.ID for s in singles] + [make_users(1, "x")[0]]) is False


# ------------------------------------------------------------------ remove_users, remove


def test_remove_users_by_id_user_and_name(db):
    groups, singles = _grouped_db(db)
    before = len(db)
    removed = db.remove_users([singles[0].ID, singles[1], "g1", "nobody", uuid.uuid4()])
    assert removed == 2 + len(groups["g1"])
    assert len(db) == before - removed
    assert db.get(singles[0].ID) is None and db.get(singles[1].ID) is None
    assert db.find_by_name("g1") == []
    assert multiset(db.find_by_name("g2")) == multiset(groups["g2"])
    assert db.has_user(singles[2:]) is True


def test_remove_users_counts_each_user_once(db):
    groups, singles = _grouped_db(db)
    g1 = groups["g1"]
    assert db.remove_users([g1[0], g1[0].ID, "g1", "g1", singles[3], singles[3]]) == len(g1) + 1
    assert db.remove_users([g1[0], "g1"]) == 0


def test_remove_by_user_uses_the_id_only(db):
    a = User("keep", 1)
    db.add(a)
    assert db.remove_users([User("keep", 1)]) == 0
    assert db.remove_users([User("other", 2, a.ID)]) == 1
    assert len(db) == 0


def test_remove_single(db):
    users = make_users(10)
    db.add_users(users)
    assert db.remove(users[0].ID) is True
    assert db.remove(users[0].ID) is False
    assert db.remove(str(users[1].ID)) is True
    assert db.remove(users[2]) is True
    assert db.remove(uuid.uuid4()) is False
    assert len(db) == 7
    assert db.contains_many(users[:4]) == [False, False, False, True]


# ------------------------------------------------------------------ upsert_users


def test_upsert_inserts_and_replaces(db):
    users = make_users(20)
    db.add_users(users)
    replaced = User("renamed", 42, users[5].ID, {"v": 2})
    new = User("brand new", 1)
    assert db.upsert_users([replaced, new]) == 1
    assert len(db) == 21
    assert fields(db.get(users[5].ID)) == fields(replaced)
    assert fields(db.get(new.ID)) == fields(new)


def test_upsert_leaves_no_trace_in_the_name_index(db):
    a, b = User("shared", 1), User("shared", 2)
    db.add_users([a, b])
    db.upsert_users([User("moved", 3, a.ID)])
    assert [fields(u) for u in db.find_by_name("shared")] == [fields(b)]
    db.upsert_users([User("moved too", 3, b.ID)])
    assert db.find_by_name("shared") == []
    assert db.has_user(["shared"]) is False
    assert db.remove_users(["shared"]) == 0
    assert len(db) == 2


def test_upsert_same_id_twice_in_one_batch_keeps_the_last(db):
    a = User("a", 1)
    assert db.upsert_users([a, User("b", 2, a.ID), User("c", 3, a.ID)]) == 1
    assert fields(db.get(a.ID))[1:3] == ("c", 3)
    assert db.find_by_name("a") == [] and db.find_by_name("b") == []


# ------------------------------------------------------------------ clear_database


def test_clear_database(db):
    users = make_users(50)
    db.add_users(users)
    assert db.clear_database() is None
    assert len(db) == 0 and db.size == 0 and list(db) == []
    assert db.get(users[0].ID) is None
    assert db.find_by_name("user1") == []
    assert db.add_users(users) == 50  # usable again


# ------------------------------------------------------------------ empty lists


def test_empty_lists_are_no_ops(db):
    db.add_users(make_users(10))
    before = contents(db)
    assert db.add_users([]) == 0
    assert db.upsert_users([]) == 0
    assert db.remove_users([]) == 0
    assert db.search_users([]) == []
    assert db.has_user([]) is True
    assert db.get_many([]) == []
    assert db.contains_many([]) == []
    assert contents(db) == before


# ------------------------------------------------------------------ iteration


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 101])
def test_iteration_yields_every_user_once(db, n):
    users = make_users(n)
    db.add_users(users)
    seen = list(db)
    assert len(seen) == n
    assert all(type(u) is User for u in seen)
    assert sorted(map(fields, seen), key=lambda f: f[0]) == sorted(map(fields, users), key=lambda f: f[0])


def test_iteration_is_a_cut_taken_when_it_starts(db):
    users = make_users(60)
    db.add_users(users)
    it = iter(db)
    first = [next(it) for _ in range(3)]
    db.remove_users(users[30:])
    db.add_users(make_users(20, "later"))
    rest = list(it)
    assert multiset(first + rest) == multiset(users)
    assert len(db) == 50


def test_two_iterations_at_once(db):
    users = make_users(40)
    db.add_users(users)
    a, b = iter(db), iter(db)
    got_a, got_b = [], []
    for x, y in zip(a, b):
        got_a.append(x)
        got_b.append(y)
    got_a.extend(a)
    got_b.extend(b)
    assert multiset(got_a) == multiset(got_b) == multiset(users)


def _open_scans(db) -> int:
    return sum(s.get("open_scans", 0) for s in db.stats()["shards"])


def test_finished_or_dropped_iterations_release_worker_state(db):
    db.add_users(make_users(50))
    before = _open_scans(db)
    list(db)
    assert _open_scans(db) == before
    it = iter(db)
    next(it)
    assert _open_scans(db) > before  # the cut is held while the iteration is open
    del it
    assert _open_scans(db) == before


def test_iterator_never_started_releases_worker_state(db):
    db.add_users(make_users(50))
    before = _open_scans(db)
    it = iter(db)
    del it
    assert _open_scans(db) == before


# ------------------------------------------------------------------ stats


def test_stats(db):
    users = make_users(300)
    db.add_users(users)
    stats = db.stats()
    assert stats["users"] == 300
    shards = stats["shards"]
    assert len(shards) == db.shard_count == db.config.shard_count
    assert sum(s["users"] for s in shards) == 300
    pids = [s["pid"] for s in shards]
    assert len(set(pids)) == len(pids)
    for pid in pids:
        assert pid != os.getpid() and psutil.pid_exists(pid)
    # each user sits on the shard the routing hash picks
    ids = np.frombuffer(b"".join(u.ID.bytes for u in users), dtype=np.uint8).reshape(-1, 16)
    expected = np.bincount(shards_of(ids, len(shards)), minlength=len(shards)).tolist()
    assert [s["users"] for s in shards] == expected


# ------------------------------------------------------------------ bad input: specific errors, nothing applied


def _setup_bad(db):
    stored = make_users(200, "stored")
    db.add_users(stored)
    new = make_users(100, "new")
    return SimpleNamespace(stored=stored, new=new, s=stored[0], replacement=User("replaced", 1, stored[1].ID))


BAD_CALLS = [
    ("add_users", lambda db, d: db.add_users([*d.new, "not a user"]), TypeError),
    ("add_users", lambda db, d: db.add_users([*d.new, None]), TypeError),
    ("add_users", lambda db, d: db.add_users([*d.new, d.new[0].ID]), TypeError),
    ("add_users", lambda db, d: db.add_users([*d.new, d.new[0].to_dict()]), TypeError),
    ("add_users", lambda db, d: db.add_users(d.new[0]), TypeError),
    ("add_users", lambda db, d: db.add_users("abc"), TypeError),
    ("add_users", lambda db, d: db.add_users(None), TypeError),
    ("add_users", lambda db, d: db.add_users(5), TypeError),
    ("upsert_users", lambda db, d: db.upsert_users([d.replacement, *d.new, 5]), TypeError),
    ("upsert_users", lambda db, d: db.upsert_users(d.replacement), TypeError),
    ("remove_users", lambda db, d: db.remove_users([*d.stored[:50], d.s.name, 3.5]), TypeError),
    ("remove_users", lambda db, d: db.remove_users([d.s.ID, None]), TypeError),
    ("remove_users", lambda db, d: db.remove_users([d.s, b"bytes"]), ValueError),  # bytes are an ID only when 16 long,
    ("remove_users", lambda db, d: db.remove_users([d.s, ["nested"]]), TypeError),
    ("remove_users", lambda db, d: db.remove_users(d.s.name), TypeError),
    ("remove_users", lambda db, d: db.remove_users(d.s), TypeError),
    ("remove_users", lambda db, d: db.remove_users(d.s.ID), TypeError),
    ("search_users", lambda db, d: db.search_users([d.s, 5]), TypeError),
    ("search_users", lambda db, d: db.search_users(d.s.name), TypeError),
    ("has_user", lambda db, d: db.has_user([d.s, 5.0]), TypeError),
    ("has_user", lambda db, d: db.has_user(d.s), TypeError),
    ("get_many", lambda db, d: db.get_many([d.s.ID, "not-a-uuid"]), ValueError),
    ("get_many", lambda db, d: db.get_many([d.s.ID, 7]), TypeError),
    ("get_many", lambda db, d: db.get_many(d.s.ID), TypeError),
    ("contains_many", lambda db, d: db.contains_many([d.s.ID, d.s.name]), ValueError),
    ("contains_many", lambda db, d: db.contains_many([None]), TypeError),
    ("get", lambda db, d: db.get(5), TypeError),
    ("get", lambda db, d: db.get(None), TypeError),
    ("get", lambda db, d: db.get("nope"), ValueError),
    ("remove", lambda db, d: db.remove(5), TypeError),
    ("remove", lambda db, d: db.remove(d.s.name), ValueError),
    ("add", lambda db, d: db.add("x"), TypeError),
    ("add", lambda db, d: db.add(None), TypeError),
    ("add", lambda db, d: db.add([d.new[0]]), TypeError),
    ("find_by_name", lambda db, d: db.find_by_name(5), TypeError),
    ("find_by_name", lambda db, d: db.find_by_name([d.s.name]), TypeError),
]


@pytest.mark.parametrize("call, action, error", BAD_CALLS, ids=[f"{c[0]}-{k}" for k, c in enumerate(BAD_CALLS)])
def test_bad_input_raises_and_applies_nothing(db, call, action, error):
    data = _setup_bad(db)
    before = contents(db)
    with pytest.raises(error) as info:
        action(db, data)
    assert isinstance(info.value, PydbmsError)
    assert call in str(info.value), f"the message should name the call: {info.value}"
    assert contents(db) == before


def test_unencodable_user_in_a_batch_raises_a_pydbms_error_and_applies_nothing(db):
    good = make_users(50)
    try:
        bad = User("big", 1, extras={"n": 2**70})
    except PydbmsError:
        return  # rejected at construction: also correct
    with pytest.raises(PydbmsError):
        db.add_users([*good, bad])
    assert len(db) == 0


# ------------------------------------------------------------------ read cache


def test_get_of_a_cached_user_hits(db):
    user = User("cached", 3)
    db.add(user)
    db.get(user.ID)
    hits = db.stats()["cache"]["hits"]
    for k in range(3):
        assert fields(db.get(user.ID)) == fields(user)
        assert db.stats()["cache"]["hits"] == hits + k + 1


def _cached(db, user):
    assert fields(db.get(user.ID)) == fields(user)
    assert fields(db.get(user.ID)) == fields(user)  # now served from the cache


@pytest.mark.parametrize(
    "how",
    ["remove", "remove_users_id", "remove_users_user", "remove_users_name", "clear", "upsert_replace", "upsert_then_remove"],
)
def test_cache_is_never_stale(db, how):
    user, other = User("victim", 7, extras={"v": 1}), User("bystander", 8)
    db.add_users([user, other])
    _cached(db, user)
    _cached(db, other)
    if how == "remove":
        assert db.remove(user.ID) is True
    elif how == "remove_users_id":
        assert db.remove_users([user.ID]) == 1
    elif how == "remove_users_user":
        assert db.remove_users([User("x", 1, user.ID)]) == 1
    elif how == "remove_users_name":
        assert db.remove_users(["victim"]) == 1
    elif how == "clear":
        db.clear_database()
    elif how == "upsert_replace":
        replacement = User("replaced", 99, user.ID, {"v": 2})
        db.upsert_users([replacement])
        assert fields(db.get(user.ID)) == fields(replacement)
        assert fields(db.get_many([user.ID])[0]) == fields(replacement)
        assert user.ID in db
        return
    elif how == "upsert_then_remove":
        db.upsert_users([User("replaced", 99, user.ID)])
        db.get(user.ID)
        db.remove_users(["replaced"])
    assert db.get(user.ID) is None
    assert user.ID not in db
    assert db.get_many([user.ID]) == [None]
    if how != "clear":
        assert fields(db.get(other.ID)) == fields(other)
    # re-adding with new fields shows the new fields
    again = User("again", 1, user.ID)
    assert db.add(again) is True
    assert fields(db.get(user.ID)) == fields(again)


# ------------------------------------------------------------------ config overrides


def test_overrides_apply(shared_db):
    assert shared_db.config.iter_chunk_size == CHUNK
    assert shared_db.shard_count == len(shared_db.stats()["shards"]) == shared_db.config.shards


def test_two_shards_by_override(db2):
    assert db2.shard_count == 2
    assert len(db2.stats()["shards"]) == 2
    users = make_users(100)
    assert db2.add_users(users) == 100
    assert all(s["users"] > 0 for s in db2.stats()["shards"])


def test_config_object_with_overrides():
    with DataBase(Config(shards=3, cache_size=5), shards=1) as database:
        assert database.shard_count == 1
        assert database.config.cache_size == 5
        users = make_users(20)
        database.add_users(users)
        for user in users:
            database.get(user.ID)
        assert database.stats()["cache"]["size"] <= 5


def test_cache_can_be_turned_off():
    with DataBase(shards=2, cache_size=0, start_method="fork") as database:
        user = User("a", 1)
        database.add(user)
        for _ in range(3):
            assert fields(database.get(user.ID)) == fields(user)
        assert database.stats()["cache"]["size"] == 0
        assert database.stats()["cache"]["hits"] == 0
        database.upsert_users([User("b", 2, user.ID)])
        assert database.get(user.ID).name == "b"


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"bogus": 1}, "bogus"),
        ({"shards": 0}, "shards"),
        ({"shards": "2"}, "shards"),
        ({"shards": True}, "shards"),
        ({"start_method": "thread"}, "start_method"),
        ({"iter_chunk_size": 0}, "iter_chunk_size"),
        ({"cache_size": -1}, "cache_size"),
        pytest.param(
            {"source": "x", "shards": 1, "start_method": "fork"},
            "source",
        ),
    ],
)
def test_bad_override_raises_config_error(overrides, key):
    with pytest.raises(ConfigError) as info:
        DataBase(**overrides)
    assert isinstance(info.value, PydbmsError)
    assert key in str(info.value)


def test_bad_config_argument():
    with pytest.raises(ConfigError):
        DataBase(config=5)


# ------------------------------------------------------------------ closed


def test_calls_after_close_raise_closed_error():
    database = DataBase(shards=1, start_method="fork")
    database.add(User("a", 1))
    database.close()
    database.close()  # twice is fine
    assert database.closed
    for call in (
        lambda: database.add_users([User("b", 2)]),
        lambda: database.get(uuid.uuid4()),
        lambda: len(database),
        lambda: database.search_users(["a"]),
        lambda: list(database),
        lambda: database.stats(),
    ):
        with pytest.raises(ClosedError):
            call()


# ------------------------------------------------------------------ batch sizes around the encoding's boundaries


@pytest.mark.parametrize("n", [15, 16, 65_536])
def test_batches_of_every_header_size(db, n):
    from pydbms_shard import generate_users

    users = generate_users(n, seed=n)
    assert db.add_users(users) == n
    assert len(db) == n
    probe = [u.ID for u in users[::2]] + [uuid.uuid4() for _ in range(n // 2)]
    assert db.contains_many(probe) == [True] * len(users[::2]) + [False] * (n // 2)
    got = db.get_many(probe[-3:] + [users[-1].ID])
    assert got[:3] == [None] * 3 and fields(got[3]) == fields(users[-1])
    assert [fields(u) for u in db.search_users([u.ID for u in users[-20:]])] == [fields(u) for u in users[-20:]]
    assert db.remove_users([u.ID for u in users]) == n
    assert len(db) == 0


@pytest.mark.parametrize(
    "item",
    [None, "Alice", "", 42, 4.5, True, b"short", b"\x00" * 17, ["a"], {"ID": 1}, object()],
    ids=repr,
)
def test_in_is_false_for_anything_that_cannot_be_an_id(db2, item):
    db2.add_users([User("Alice", 30)])
    assert (item in db2) is False


def test_in_still_takes_every_id_form(db2):
    user = User("Alice", 30)
    db2.add(user)
    assert user in db2 and user.ID in db2 and str(user.ID) in db2 and user.ID.bytes in db2
    assert uuid.uuid4() not in db2 and str(uuid.uuid4()) not in db2 and uuid.uuid4().bytes not in db2
    with pytest.raises(PydbmsError):
        db2.get("Alice")  # get() still says why; only `in` answers False


def test_in_on_a_closed_database_raises():
    db = DataBase(shards=1)
    db.close()
    with pytest.raises(ClosedError):
        uuid.uuid4() in db  # noqa: B015


def test_repr_says_what_it_is_without_asking_the_shards(tmp_path):
    db = DataBase(shards=2)
    try:
        for handle in db._shards:  # a stuck worker must not hang repr()
            os.kill(handle.process.pid, 19)  # SIGSTOP
        assert repr(db) == "<DataBase shards=2 open users=0>"
    finally:
        for handle in db._shards:
            os.kill(handle.process.pid, 18)  # SIGCONT
        db.close()
    assert repr(db) == "<DataBase shards=2 closed>"
    with DataBase(shards=1, snapshot_path=str(tmp_path / "db.json")) as db:
        assert repr(db) == f"<DataBase shards=1 open users=0 path={str(db._path)!r} log=always>"
    assert repr(db) == f"<DataBase shards=1 closed path={str(db._path)!r} log=always>"
