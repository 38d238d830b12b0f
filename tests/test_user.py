"""User: validation, immutability, identity, text forms and exact round trips (no processes)."""

from __future__ import annotations

import copy
import json
import math
import pickle
import uuid
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydbms_shard import PydbmsError, User
from pydbms_shard.errors import PydbmsTypeError, PydbmsValueError

UID = uuid.UUID("12345678-1234-5678-1234-567812345678")

# ------------------------------------------------------------------ strategies

names = st.text(min_size=1, max_size=60) | st.sampled_from(["Alice", "Zoë", "李小龙", "🙂🐍 emoji", "a" * 1000, " "])
ages = st.integers(min_value=0, max_value=150)
uuids = st.uuids()
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
extras_maps = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
users = st.builds(User, names, ages, uuids, st.none() | extras_maps)


def fields(user: User) -> tuple:
    """Every field; extras as canonical JSON, so 1, 1.0, True and -0.0 stay distinct."""
    return (user.name, user.age, user.ID, json.dumps(user.to_dict()["extras"], sort_keys=True))


# ------------------------------------------------------------------ construction


def test_fields_are_kept_exactly():
    extras = {"city": "Zürich", "n": 3, "f": 1.5, "ok": True, "none": None, "tags": ["a", 1], "nested": {"x": {"y": [1, 2]}}}
    user = User("Alice", 25, UID, extras)
    assert user.name == "Alice"
    assert user.age == 25
    assert user.ID == UID and type(user.ID) is uuid.UUID
    assert user.to_dict()["extras"] == extras


def test_keyword_construction():
    user = User(name="Bob", age=0, ID=UID, extras={"a": 1})
    assert (user.name, user.age, user.ID, dict(user.extras)) == ("Bob", 0, UID, {"a": 1})


def test_missing_id_is_a_fresh_uuid4():
    a, b = User("Alice", 25), User("Alice", 25)
    assert isinstance(a.ID, uuid.UUID) and a.ID.version == 4 and a.ID.variant == uuid.RFC_4122
    assert a.ID != b.ID
    assert a != b


@pytest.mark.parametrize(
    "form",
    [
        str(UID),
        str(UID).upper(),
        UID.hex,
        "{" + str(UID) + "}",
        "urn:uuid:" + str(UID),
    ],
)
def test_id_given_as_its_string_form(form):
    user = User("Alice", 25, form)
    assert type(user.ID) is uuid.UUID
    assert user.ID == UID
    assert user == User("Other", 1, UID)


def test_uuid_subclass_id_is_normalised():
    class MyUUID(uuid.UUID):
        pass

    user = User("Alice", 25, MyUUID(str(UID)))
    assert type(user.ID) is uuid.UUID and user.ID == UID


@pytest.mark.parametrize("age", [0, 1, 149, 150])
def test_age_bounds_accepted(age):
    assert User("a", age).age == age


def test_name_bounds_accepted():
    assert User("x", 1).name == "x"
    assert User("x" * 1000, 1).name == "x" * 1000


def test_str_subclass_name_and_int_subclass_age_become_plain():
    class Name(str):
        pass

    import enum

    class Age(enum.IntEnum):
        TEN = 10

    user = User(Name("Alice"), Age.TEN)
    assert type(user.name) is str and user.name == "Alice"
    assert type(user.age) is int and user.age == 10


def test_extras_of_another_user_can_be_passed_on():
    first = User("a", 1, extras={"d": {"l": [1, {"x": True}]}})
    second = User("b", 2, extras=first.extras)
    assert second.to_dict()["extras"] == first.to_dict()["extras"] == {"d": {"l": [1, {"x": True}]}}


def test_empty_extras_read_as_empty_mapping():
    assert dict(User("a", 1).extras) == {}
    assert dict(User("a", 1, extras={}).extras) == {}
    assert User("a", 1).to_dict()["extras"] == {}


def test_tuples_in_extras_are_stored_as_lists():
    user = User("a", 1, extras={"t": (1, (2, 3))})
    assert user.to_dict()["extras"] == {"t": [1, [2, 3]]}


# ------------------------------------------------------------------ validation

_DEEP: dict = {}
_node = _DEEP
for _ in range(100):
    _node["d"] = {}
    _node = _node["d"]


class _Obj:
    def __repr__(self) -> str:
        return "<Obj>"


# (kwargs, field named in the message, text of the value that the message must show)
BAD_TYPES = [
    pytest.param({"name": None}, "name", "None", id="name-None"),
    pytest.param({"name": 5}, "name", "5", id="name-int"),
    pytest.param({"name": b"Alice"}, "name", "b'Alice'", id="name-bytes"),
    pytest.param({"name": ["Alice"]}, "name", "['Alice']", id="name-list"),
    pytest.param({"age": "25"}, "age", "'25'", id="age-str"),
    pytest.param({"age": 25.0}, "age", "25.0", id="age-float"),
    pytest.param({"age": True}, "age", "True", id="age-bool"),
    pytest.param({"age": False}, "age", "False", id="age-bool-false"),
    pytest.param({"age": None}, "age", "None", id="age-None"),
    pytest.param({"ID": 12345}, "ID", "12345", id="id-int"),
    pytest.param({"ID": 1.5}, "ID", "1.5", id="id-float"),
    pytest.param({"ID": [str(UID)]}, "ID", str(UID), id="id-list"),
    pytest.param({"extras": [("a", 1)]}, "extras", "[('a', 1)]", id="extras-list"),
    pytest.param({"extras": "a=1"}, "extras", "'a=1'", id="extras-str"),
    pytest.param({"extras": 7}, "extras", "7", id="extras-int"),
    pytest.param({"extras": {1: "a"}}, "extras", "1", id="extras-int-key"),
    pytest.param({"extras": {"a": _Obj()}}, "extras", "<Obj>", id="extras-object"),
    pytest.param({"extras": {"a": {1, 2}}}, "extras", "{1, 2}", id="extras-set"),
    pytest.param({"extras": {"a": b"raw"}}, "extras", "b'raw'", id="extras-bytes"),
    pytest.param({"extras": {"a": {"b": [1, _Obj()]}}}, "extras", "<Obj>", id="extras-nested-object"),
    pytest.param({"extras": {"a": {"b": {2: 1}}}}, "extras", "2", id="extras-nested-int-key"),
]

BAD_VALUES = [
    pytest.param(
        {"name": ""},
        "name",
        "''",
        id="name-empty",
    ),
    pytest.param({"name": "x" * 1001}, "name", "xxxx", id="name-too-long"),
    pytest.param({"age": -1}, "age", "-1", id="age-negative"),
    pytest.param({"age": 151}, "age", "151", id="age-too-big"),
    pytest.param({"age": 10**30}, "age", str(10**30), id="age-huge"),
    pytest.param({"ID": "not-a-uuid"}, "ID", "'not-a-uuid'", id="id-bad-str"),
    pytest.param({"ID": ""}, "ID", "''", id="id-empty-str"),
    pytest.param({"ID": str(UID)[:-1]}, "ID", str(UID)[:-1], id="id-short-str"),
    pytest.param({"extras": {"a": math.nan}}, "extras", "nan", id="extras-nan"),
    pytest.param({"extras": {"a": [math.inf]}}, "extras", "inf", id="extras-inf"),
    pytest.param({"extras": {"a": -math.inf}}, "extras", "-inf", id="extras-minus-inf"),
    pytest.param({"extras": _DEEP}, "extras", "", id="extras-too-deep"),
]


def _build(**changes):
    kwargs = {"name": "Alice", "age": 25, "ID": UID, "extras": None}
    kwargs.update(changes)
    return User(**kwargs)


@pytest.mark.parametrize("change, field, shown", BAD_TYPES)
def test_bad_type_raises_type_error_naming_field_and_value(change, field, shown):
    with pytest.raises(TypeError) as info:
        _build(**change)
    assert isinstance(info.value, PydbmsError)
    assert isinstance(info.value, PydbmsTypeError)
    message = str(info.value)
    assert field in message
    assert shown in message


@pytest.mark.parametrize("change, field, shown", BAD_VALUES)
def test_bad_value_raises_value_error_naming_field_and_value(change, field, shown):
    with pytest.raises(ValueError) as info:
        _build(**change)
    assert isinstance(info.value, PydbmsError)
    assert isinstance(info.value, PydbmsValueError)
    assert not isinstance(info.value, TypeError)
    message = str(info.value)
    assert field in message
    assert shown in message


def test_cyclic_extras_rejected():
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError) as info:
        User("a", 1, extras=loop)
    assert isinstance(info.value, PydbmsError)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [2**70]])
def test_extras_int_out_of_64_bit_range_rejected(value):
    with pytest.raises(PydbmsValueError) as info:
        User("a", 1, extras={"big": value})
    assert "extras" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "bad\ud800"}, {"extras": {"k\udfff": 1}}, {"extras": {"k": ["\ud83d"]}}],
    ids=["name", "extras-key", "extras-value"],
)
def test_strings_that_are_not_valid_unicode_rejected(kwargs):
    with pytest.raises(PydbmsValueError):
        _build(**kwargs)


def test_extreme_but_valid_ints_in_extras_round_trip():
    user = User("a", 1, extras={"lo": -(2**63), "hi": 2**64 - 1})
    assert User.from_json(user.to_json()).to_dict() == user.to_dict()


# ------------------------------------------------------------------ immutability


@pytest.mark.parametrize("attr, value", [("name", "Eve"), ("age", 30), ("ID", uuid.uuid4()), ("extras", {}), ("new_attr", 1)])
def test_attribute_assignment_raises(attr, value):
    user = User("Alice", 25, UID, {"a": 1})
    with pytest.raises(AttributeError):
        setattr(user, attr, value)
    assert (user.name, user.age, user.ID, dict(user.extras)) == ("Alice", 25, UID, {"a": 1})


@pytest.mark.parametrize("attr", ["name", "age", "ID", "extras"])
def test_attribute_deletion_raises(attr):
    user = User("Alice", 25, UID)
    with pytest.raises(AttributeError):
        delattr(user, attr)
    assert user.name == "Alice"


def test_extras_are_read_only_all_the_way_down():
    user = User("a", 1, UID, {"top": 1, "d": {"x": 1, "inner": {"y": 2}}, "l": [1, {"z": 3}]})
    extras = user.extras
    with pytest.raises(TypeError):
        extras["top"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        extras["new"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        del extras["top"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        extras["d"]["x"] = 2
    with pytest.raises(TypeError):
        extras["d"]["inner"]["y"] = 3
    with pytest.raises((TypeError, AttributeError)):
        extras["l"].append(4)
    with pytest.raises(TypeError):
        extras["l"][1]["z"] = 4
    assert isinstance(extras, MappingProxyType) or not hasattr(extras, "__setitem__")
    assert user.to_dict()["extras"] == {"top": 1, "d": {"x": 1, "inner": {"y": 2}}, "l": [1, {"z": 3}]}


def test_mutating_the_input_afterwards_does_not_change_the_user():
    nested = {"x": [1, 2]}
    given_extras = {"a": 1, "nested": nested}
    user = User("a", 1, UID, given_extras)
    given_extras["a"] = 99
    given_extras["added"] = True
    nested["x"].append(3)
    nested["y"] = "new"
    assert user.to_dict()["extras"] == {"a": 1, "nested": {"x": [1, 2]}}


def test_mutating_to_dict_output_does_not_change_the_user():
    user = User("a", 1, UID, {"l": [1], "d": {"k": "v"}})
    out = user.to_dict()
    out["name"] = "changed"
    out["extras"]["l"].append(2)
    out["extras"]["d"]["k"] = "changed"
    assert user.to_dict() == {"name": "a", "age": 1, "ID": str(UID), "extras": {"l": [1], "d": {"k": "v"}}}


# ------------------------------------------------------------------ identity, text forms


def test_equality_and_hash_by_id_only():
    a = User("Alice", 25, UID, {"x": 1})
    b = User("Bob", 99, UID)
    c = User("Alice", 25)
    assert a == b and not (a != b)
    assert hash(a) == hash(b)
    assert a != c and not (a == c)
    assert len({a, b, c}) == 2
    assert {a: 1}[b] == 1


def test_not_equal_to_other_types():
    user = User("Alice", 25, UID)
    assert user != UID
    assert user != str(UID)
    assert user != "Alice"
    assert not (user == UID)


def test_str_is_the_originals():
    assert str(User("Alice", 25)) == 'User "Alice" is 25 years old'
    assert str(User("Zoë 🙂", 0)) == 'User "Zoë 🙂" is 0 years old'


@pytest.mark.parametrize("extras", [None, {"a": [1, "x"], "b": {"c": None}}])
def test_repr_is_useful_and_evaluates_back(extras):
    user = User("Al'ice", 25, UID, extras)
    text = repr(user)
    assert "Al'ice" in text or repr("Al'ice") in text
    assert "25" in text and str(UID) in text
    if extras:
        assert "'a'" in text
    again = eval(text, {"User": User, "UUID": uuid.UUID})
    assert fields(again) == fields(user)


def test_to_dict_has_the_originals_keys_and_plain_types():
    user = User("Alice", 25, UID, {"k": (1, {"n": None})})
    assert user.to_dict() == {"name": "Alice", "age": 25, "ID": str(UID), "extras": {"k": [1, {"n": None}]}}
    assert type(user.to_dict()["extras"]["k"]) is list
    assert type(user.to_dict()["extras"]["k"][1]) is dict


def test_to_json_is_json_of_to_dict():
    import json

    user = User("Zoë 🙂", 7, UID, {"x": [1.5, True, None]})
    assert json.loads(user.to_json()) == user.to_dict()


# ------------------------------------------------------------------ round trips


@settings(max_examples=150, deadline=None)
@given(users)
def test_dict_round_trip_is_exact(user):
    again = User.from_dict(user.to_dict())
    assert fields(again) == fields(user)
    assert again.to_dict() == user.to_dict()
    assert again.extras == user.extras


@settings(max_examples=150, deadline=None)
@given(users)
def test_json_round_trip_is_exact(user):
    data = user.to_json()
    assert isinstance(data, bytes)
    for form in (data, data.decode("utf-8")):
        again = User.from_json(form)
        assert fields(again) == fields(user)
        assert again.to_json() == data


@settings(max_examples=100, deadline=None)
@given(users)
def test_pickle_and_copy_round_trip(user):
    for again in (
        pickle.loads(pickle.dumps(user)),
        pickle.loads(pickle.dumps(user, protocol=0)),
        copy.copy(user),
        copy.deepcopy(user),
    ):
        assert type(again) is User
        assert fields(again) == fields(user)
        assert again == user and hash(again) == hash(user)


@settings(max_examples=100, deadline=None)
@given(st.builds(dict, name=names, age=ages, ID=uuids.map(str), extras=extras_maps))
def test_from_dict_of_plain_data_round_trips(data):
    assert User.from_dict(data).to_dict() == data


def test_floats_round_trip_bit_exact():
    values = [0.1, -0.0, 1e-310, 1.7976931348623157e308, 2.0**-1074, 1 / 3]
    user = User("a", 1, UID, {"f": values})
    again = User.from_json(user.to_json())
    got = again.to_dict()["extras"]["f"]
    assert [math.copysign(1, v) for v in got] == [math.copysign(1, v) for v in values]
    assert [v.hex() for v in got] == [v.hex() for v in values]


def test_from_dict_without_id_gets_a_new_one():
    user = User.from_dict({"name": "a", "age": 3})
    assert user.ID.version == 4


@pytest.mark.parametrize(
    "data, error",
    [
        (["a", 1], TypeError),
        ("a", TypeError),
        ({"age": 1}, ValueError),
        ({"name": "a"}, ValueError),
        ({"name": "a", "age": 1, "email": "x"}, ValueError),
        ({"name": "a", "age": "1"}, TypeError),
        ({"name": "a", "age": 1, "ID": "nope"}, ValueError),
        ({"name": "a", "age": 1, "extras": [1]}, TypeError),
    ],
)
def test_from_dict_rejects_bad_data(data, error):
    with pytest.raises(error) as info:
        User.from_dict(data)
    assert isinstance(info.value, PydbmsError)


@pytest.mark.parametrize(
    "data, error",
    [
        (b"{not json", ValueError),
        (b"", ValueError),
        (b"[1, 2]", TypeError),
        (b'{"name": "a"}', ValueError),
        (b'{"name": "", "age": 1}', ValueError),
        (b'{"name": "a", "age": 1.0}', TypeError),
    ],
)
def test_from_json_rejects_bad_data(data, error):
    with pytest.raises(error) as info:
        User.from_json(data)
    assert isinstance(info.value, PydbmsError)


def test_id_given_as_its_16_bytes():
    assert User("a", 1, UID.bytes).ID == UID
    with pytest.raises(ValueError, match="16 bytes"):
        User("a", 1, b"short")


def test_extras_size_is_capped_and_documented():
    from pydbms_shard.user import MAX_EXTRAS_BYTES

    assert MAX_EXTRAS_BYTES == 64 * 1024
    assert "64 KiB" in (User.__doc__ or "")
    fits = User("a", 1, extras={"blob": "x" * (MAX_EXTRAS_BYTES - 100)})
    assert len(fits.extras["blob"]) == MAX_EXTRAS_BYTES - 100
    with pytest.raises(PydbmsValueError) as info:
        User("a", 1, extras={"blob": "x" * MAX_EXTRAS_BYTES})
    assert "User.extras" in str(info.value) and str(MAX_EXTRAS_BYTES) in str(info.value)
    with pytest.raises(PydbmsValueError):
        User.from_dict({"name": "a", "age": 1, "extras": {"many": list(range(40_000))}})


def test_signature_and_help_show_extras():
    import inspect
    import pydoc

    assert list(inspect.signature(User).parameters) == ["name", "age", "ID", "extras"]
    text = pydoc.render_doc(User, renderer=pydoc.plaintext)
    # the signature line and the documented attributes; msgspec's own field tables
    # (``__struct_fields__``, ``__annotations__``) still list the stored ``_extras``
    documented = text.split("Data and other attributes")[0]
    assert "extras: " in documented and "_extras" not in documented


def test_wire_format_is_unchanged():
    import msgspec

    user = User("a", 1, uuid.UUID(int=7), extras={"k": [1]})
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(user)) == ["a", 1, str(uuid.UUID(int=7)), {"k": [1]}]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(user), type=User).extras == {"k": (1,)}
