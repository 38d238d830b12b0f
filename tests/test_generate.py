"""Generators: random_name, random_age, generate_users (shape, determinism, bad arguments)."""

from __future__ import annotations

import random
import string
import time
import uuid

import pytest

from pydbms_shard import PydbmsError, User, generate_users, random_age, random_name

LETTERS = set(string.ascii_letters)


def fields(user: User) -> tuple:
    return (user.ID, user.name, user.age, dict(user.extras))


# ------------------------------------------------------------------ generate_users


def test_same_seed_same_users():
    a, b = generate_users(500, seed=42), generate_users(500, seed=42)
    assert [fields(u) for u in a] == [fields(u) for u in b]


def test_prefix_of_a_seeded_run_is_stable():
    assert [fields(u) for u in generate_users(50, seed=7)] == [fields(u) for u in generate_users(50, seed=7)]
    assert len(generate_users(1, seed=7)) == 1


def test_different_seeds_differ():
    a, b = generate_users(200, seed=1), generate_users(200, seed=2)
    assert not {u.ID for u in a} & {u.ID for u in b}
    assert [u.name for u in a] != [u.name for u in b]


def test_no_seed_differs_between_calls():
    a, b = generate_users(100), generate_users(100)
    assert not {u.ID for u in a} & {u.ID for u in b}


def test_zero_users():
    assert generate_users(0) == []
    assert generate_users(0, seed=3) == []


def test_shape_of_generated_users():
    users = generate_users(5000, seed=123)
    assert len(users) == 5000
    assert all(type(u) is User for u in users)
    for user in users:
        assert len(user.name) == 15 and set(user.name) <= LETTERS and user.name.isascii()
        assert type(user.age) is int and 1 <= user.age <= 100
        assert type(user.ID) is uuid.UUID
        assert user.ID.version == 4 and user.ID.variant == uuid.RFC_4122
        assert dict(user.extras) == {}
    assert len({u.ID for u in users}) == 5000
    ages = {u.age for u in users}
    assert 1 in ages and 100 in ages and len(ages) == 100
    used = set("".join(u.name for u in users))
    assert used == LETTERS  # every ASCII letter, both cases, appears


def test_generated_users_are_valid_and_round_trip():
    for user in generate_users(50, seed=9):
        assert fields(User(user.name, user.age, user.ID)) == fields(user)
        assert fields(User.from_json(user.to_json())) == fields(user)
        assert str(user) == f'User "{user.name}" is {user.age} years old'


def test_generation_is_fast():
    started = time.perf_counter()
    users = generate_users(100_000, seed=5)
    elapsed = time.perf_counter() - started
    assert len(users) == 100_000
    assert elapsed < 3.0, f"100k users took {elapsed:.2f}s (1M must take only a few seconds)"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"n": -1}, ValueError),
        ({"n": 1.5}, TypeError),
        ({"n": "10"}, TypeError),
        ({"n": None}, TypeError),
        ({"n": True}, TypeError),
        ({"n": 3, "seed": "x"}, TypeError),
        ({"n": 3, "seed": 1.5}, TypeError),
        ({"n": 3, "seed": True}, TypeError),
    ],
)
def test_generate_users_bad_arguments(kwargs, error):
    with pytest.raises(error) as info:
        generate_users(**kwargs)
    assert isinstance(info.value, PydbmsError)
    name = next(iter(kwargs)) if len(kwargs) == 1 else "seed"
    assert name in str(info.value)


def test_generate_users_negative_seed():
    try:
        a, b = generate_users(5, seed=-1), generate_users(5, seed=-1)
    except ValueError as exc:
        assert isinstance(exc, PydbmsError) and "seed" in str(exc)
    else:
        assert [fields(u) for u in a] == [fields(u) for u in b]


# ------------------------------------------------------------------ random_name, random_age


def test_random_name_default_is_15_letters():
    for _ in range(200):
        name = random_name()
        assert type(name) is str and len(name) == 15 and set(name) <= LETTERS


@pytest.mark.parametrize("length", [1, 2, 40, 1000])
def test_random_name_length(length):
    name = random_name(length)
    assert len(name) == length and set(name) <= LETTERS
    User(name, 1)  # a valid user name


def test_random_name_varies():
    assert len({random_name() for _ in range(50)}) == 50


@pytest.mark.parametrize(
    "length, error",
    [(0, ValueError), (-3, ValueError), (1001, ValueError), ("5", TypeError), (2.0, TypeError), (True, TypeError), (None, TypeError)],
)
def test_random_name_bad_length(length, error):
    with pytest.raises(error) as info:
        random_name(length)
    assert isinstance(info.value, PydbmsError)
    assert "length" in str(info.value)


def test_random_age_range():
    state = random.getstate()
    try:
        random.seed(11)
        ages = [random_age() for _ in range(3000)]
    finally:
        random.setstate(state)
    assert all(type(a) is int and 1 <= a <= 100 for a in ages)
    assert min(ages) == 1 and max(ages) == 100
    assert len(set(ages)) == 100
