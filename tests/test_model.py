"""Random sequences of every DataBase call against a plain-dict model, on 1, 2 and 3 shards.

One DataBase per shard count serves every example (cleared when each example starts):
starting worker processes per example would be far too slow. Small pools of IDs and names
make adds collide and names repeat; a small read cache and small iteration chunks make the
eviction and chunking paths run too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import uuid
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from pydbms_shard import DataBase, User
from pydbms_shard.routing import shards_of

_rng = random.Random(20240601)
ID_POOL = [uuid.UUID(int=_rng.getrandbits(128), version=4) for _ in range(12)]
NAMES = ["ann", "bob", "cy", "Zoë"]

ids = st.sampled_from(ID_POOL)
extras = st.none() | st.dictionaries(st.sampled_from(["a", "b"]), st.integers(-5, 5) | st.text(max_size=3), max_size=2)
users = st.builds(User, st.sampled_from(NAMES), st.integers(0, 150), ids, extras)
queries = st.one_of(users, ids, st.sampled_from(NAMES + ["nobody"]))
id_items = st.one_of(ids, ids.map(str), users)


def fields(user: User | None):
    if user is None:
        return None
    return (user.ID, user.name, user.age, json.dumps(user.to_dict()["extras"], sort_keys=True))


def as_id(item) -> uuid.UUID:
    if isinstance(item, User):
        return item.ID
    return item if isinstance(item, uuid.UUID) else uuid.UUID(item)


class DataBaseMachine(RuleBasedStateMachine):
    def __init__(self, db: DataBase, snapshot_path=None) -> None:
        super().__init__()
        self.db = db
        db.clear_database()
        self.model: dict[uuid.UUID, User] = {}
        self.snapshot_path = snapshot_path
        self.saved: dict[uuid.UUID, User] | None = None

    # ---------------------------------------------------------- snapshots

    @rule()
    def save(self):
        self.db.save(self.snapshot_path)
        self.saved = dict(self.model)

    @precondition(lambda self: self.saved is not None)
    @rule()
    def load(self):
        """Writes since the save vanish: a cached user from after it must not come back."""
        self.db.load(self.snapshot_path)
        self.model = dict(self.saved)

    # ---------------------------------------------------------- writes

    @rule(batch=st.lists(users, max_size=8))
    def add_users(self, batch):
        new = {u.ID for u in batch if u.ID not in self.model}
        assert self.db.add_users(batch) == len(new)
        for user in batch:
            self.model.setdefault(user.ID, user)

    @rule(user=users)
    def add(self, user):
        assert self.db.add(user) is (user.ID not in self.model)
        self.model.setdefault(user.ID, user)

    @rule(batch=st.lists(users, max_size=8))
    def upsert_users(self, batch):
        new = {u.ID for u in batch if u.ID not in self.model}
        assert self.db.upsert_users(batch) == len(new)
        for user in batch:
            self.model[user.ID] = user

    @rule(items=st.lists(queries, max_size=5))
    def remove_users(self, items):
        by_id = {as_id(q) for q in items if not isinstance(q, str)}
        names = {q for q in items if isinstance(q, str)}
        gone = {i for i in by_id if i in self.model} | {i for i, u in self.model.items() if u.name in names}
        assert self.db.remove_users(items) == len(gone)
        for i in gone:
            del self.model[i]

    @rule(item=id_items)
    def remove(self, item):
        key = as_id(item)
        assert self.db.remove(item) is (key in self.model)
        self.model.pop(key, None)

    @rule()
    def clear_database(self):
        self.db.clear_database()
        self.model.clear()

    # ---------------------------------------------------------- reads

    def _expected_group(self, query) -> list[User]:
        if isinstance(query, str):
            return [u for u in self.model.values() if u.name == query]
        key = as_id(query)
        return [self.model[key]] if key in self.model else []

    @rule(batch=st.lists(queries, max_size=6))
    def search_users(self, batch):
        result = self.db.search_users(batch)
        groups = [self._expected_group(q) for q in batch]
        assert len(result) == sum(map(len, groups))
        at = 0
        for query, group in zip(batch, groups):
            got = result[at : at + len(group)]
            assert Counter(map(fields, got)) == Counter(map(fields, group)), f"query {query!r}"
            at += len(group)

    @rule(name=st.sampled_from(NAMES + ["nobody"]))
    def find_by_name(self, name):
        assert Counter(map(fields, self.db.find_by_name(name))) == Counter(map(fields, self._expected_group(name)))

    @rule(items=st.lists(queries, max_size=5))
    def has_user(self, items):
        expected = all(self._expected_group(q) for q in items)
        assert self.db.has_user(items) is expected

    @rule(item=id_items)
    def get(self, item):
        assert fields(self.db.get(item)) == fields(self.model.get(as_id(item)))

    @rule(item=id_items)
    def contains(self, item):
        assert (item in self.db) is (as_id(item) in self.model)

    @rule(batch=st.lists(id_items, max_size=6))
    def get_many(self, batch):
        assert [fields(u) for u in self.db.get_many(batch)] == [fields(self.model.get(as_id(i))) for i in batch]

    @rule(batch=st.lists(id_items, max_size=6))
    def contains_many(self, batch):
        assert self.db.contains_many(batch) == [as_id(i) in self.model for i in batch]

    @rule()
    def iterate(self):
        got = list(self.db)
        assert len(got) == len(self.model)
        assert sorted(map(fields, got)) == sorted(map(fields, self.model.values()))

    @precondition(lambda self: len(self.model) > 2)
    @rule(data=st.data())
    def iterate_while_writing(self, data):
        """An iteration sees the users stored when it started, whatever happens meanwhile."""
        expected = sorted(map(fields, self.model.values()))
        it = iter(self.db)
        got = [next(it)]
        batch = data.draw(st.lists(users, min_size=1, max_size=4), label="upserted meanwhile")
        self.upsert_users(batch)
        got.extend(it)
        assert sorted(map(fields, got)) == expected

    @invariant()
    def sizes_agree(self):
        assert len(self.db) == self.db.size == len(self.model)


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda n: f"{n}shards")
def model_db(request, tmp_path_factory):
    with DataBase(shards=request.param, iter_chunk_size=3, cache_size=5) as database:
        yield database, tmp_path_factory.mktemp("model") / "snap.json"


def test_id_pool_reaches_every_shard():
    raw = np.frombuffer(b"".join(i.bytes for i in ID_POOL), dtype=np.uint8).reshape(-1, 16)
    for shards in (2, 3):
        assert set(shards_of(raw, shards).tolist()) == set(range(shards))


def _machine_settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.mark.crash
def test_random_call_sequences_match_a_dict_model(model_db):
    run_state_machine_as_test(lambda: DataBaseMachine(*model_db), settings=_machine_settings(40, 30))


class DurableMachine(DataBaseMachine):
    """The same calls on a DataBase that keeps a write-ahead log, plus reopening it with any
    shard count (recovery must give back exactly the model) and killing a worker (the shard
    must heal with nothing lost). ``save``/``load`` here are checkpoints of its own path."""

    def __init__(self, holder: list, path) -> None:
        self.holder = holder
        super().__init__(holder[0], path)

    @rule(shards=st.integers(1, 3))
    def reopen(self, shards):
        resharded = shards != self.db.shard_count
        self.db.close()
        self.db = self.holder[0] = DataBase(shards=shards, snapshot_path=self.snapshot_path, **DURABLE)
        if resharded:  # the new layout is checkpointed at once: load() returns to it
            self.saved = dict(self.model)

    @rule(data=st.data())
    def kill_a_worker(self, data):
        shard = data.draw(st.integers(0, 2), label="shard") % self.db.shard_count  # the count varies by example
        os.kill(self.db.stats()["shards"][shard]["pid"], signal.SIGKILL)


DURABLE = {"iter_chunk_size": 3, "cache_size": 5, "max_restarts": 1000, "log_fsync": "no"}


@pytest.fixture
def durable_db(tmp_path):
    path = tmp_path / "durable.json"
    holder = [DataBase(shards=2, snapshot_path=path, **DURABLE)]
    yield holder, path
    holder[0].close()


@pytest.mark.slow
def test_logged_database_with_reopens_and_dead_workers_matches_a_dict_model(durable_db):
    run_state_machine_as_test(lambda: DurableMachine(*durable_db), settings=_machine_settings(15, 25))
