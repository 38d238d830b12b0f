"""Config: config/default.yaml is the schema's defaults, and every bad setting names key and file."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
import yaml

from pydbms_shard import Config, ConfigError, DataBase, PydbmsError

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "config" / "default.yaml"


def write(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ default.yaml


def test_default_yaml_equals_the_defaults():
    assert Config.from_yaml(DEFAULT_YAML) == Config()
    assert Config.from_yaml(str(DEFAULT_YAML)) == Config()


def test_default_yaml_has_exactly_the_config_keys_with_their_defaults():
    data = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    assert set(data) == set(Config.__struct_fields__)
    defaults = msgspec.structs.asdict(Config())
    for key, value in data.items():
        assert value == defaults[key], key


def test_default_yaml_has_a_comment_on_every_key():
    keys = set(Config.__struct_fields__)
    seen = set()
    for line in DEFAULT_YAML.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z_]+):", line)
        if match:
            seen.add(match.group(1))
            assert "#" in line and line.split("#", 1)[1].strip(), f"no comment on: {line}"
    assert seen == keys


def test_empty_file_means_defaults(tmp_path):
    assert Config.from_yaml(write(tmp_path, "")) == Config()
    assert Config.from_yaml(write(tmp_path, "# only a comment\n")) == Config()


def test_file_values_are_read(tmp_path):
    path = write(
        tmp_path,
        "shards: 3\nstart_method: spawn\ncache_size: 0\niter_chunk_size: 5\nfile_mode: '0640'\nautosave_interval: 2.5\nsnapshot_path: db.json\n",
    )
    config = Config.from_yaml(path)
    assert (config.shards, config.start_method, config.cache_size, config.iter_chunk_size) == (3, "spawn", 0, 5)
    assert config.file_mode == "0640" and config.autosave_interval == 2.5
    assert config.shard_count == 3


def test_null_shards_means_cpu_count():
    import os

    assert Config().shards is None
    assert Config().shard_count == (os.cpu_count() or 1)


# ------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus: 1\n", "bogus"),
        ("shards: 2\nshard: 3\n", "shard"),
        ("shards: '2'\n", "shards"),
        ("shards: 2.0\n", "shards"),
        ("shards: true\n", "shards"),
        ("shards: 0\n", "shards"),
        ("shards: 257\n", "shards"),
        ("shards: -1\n", "shards"),
        ("start_method: thread\n", "start_method"),
        ("start_method: 1\n", "start_method"),
        ("cache_size: -1\n", "cache_size"),
        ("cache_size: lots\n", "cache_size"),
        ("iter_chunk_size: 0\n", "iter_chunk_size"),
        ("snapshot_path: 5\n", "snapshot_path"),
        ("autosave_interval: -1\n", "autosave_interval"),
        ("autosave_interval: soon\n", "autosave_interval"),
        ("compression_level: 0\n", "compression_level"),
        ("compression_level: 23\n", "compression_level"),
        ("keep_generations: 0\n", "keep_generations"),
        ("file_mode: 0600\n", "file_mode"),  # unquoted: YAML reads an int
        ("file_mode: '0999'\n", "file_mode"),
        ("save_on_close: 'yes please'\n", "save_on_close"),
        ("shards: [1, 2]\n", "shards"),
        pytest.param(
            "1: 2\n",
            "1",
        ),
    ],
)
def test_bad_setting_names_key_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert isinstance(info.value, PydbmsError)
    message = str(info.value)
    assert str(path) in message
    rest = message.replace(str(path), "")
    assert re.search(rf"\b{re.escape(key)}\b", rest), message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "shards: [\n", "a: b: c\n"])
def test_not_a_mapping_or_not_yaml_names_the_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert str(path) in str(info.value)


def test_from_mapping_and_replace_validate():
    assert Config.from_mapping({"shards": 2}).shards == 2
    with pytest.raises(ConfigError, match="bogus"):
        Config.from_mapping({"bogus": 1})
    with pytest.raises(ConfigError, match="shards"):
        Config().replace(shards=0)
    assert Config().replace(shards=4).shards == 4
    assert Config().shards is None  # replace returns a copy


def test_config_is_immutable():
    with pytest.raises(AttributeError):
        Config().shards = 3  # type: ignore[misc]


# ------------------------------------------------------------------ DataBase(config=path)


def test_database_from_a_yaml_path(tmp_path):
    path = write(tmp_path, "shards: 2\nstart_method: fork\niter_chunk_size: 4\ncache_size: 3\n")
    with DataBase(config=path) as db:
        assert db.shard_count == 2
        assert db.config == Config.from_yaml(path)
        assert len(db.stats()["shards"]) == 2
    with DataBase(config=str(path), shards=1) as db:  # overrides win over the file
        assert db.shard_count == 1
        assert db.config.iter_chunk_size == 4


def test_database_with_a_bad_file_raises_config_error_naming_it(tmp_path):
    path = write(tmp_path, "shards: many\n")
    with pytest.raises(ConfigError) as info:
        DataBase(config=path)
    assert str(path) in str(info.value) and "shards" in str(info.value)


def test_database_with_default_yaml_and_an_override():
    with DataBase(config=DEFAULT_YAML, shards=1, start_method="fork") as db:
        assert db.shard_count == 1
        assert db.config.cache_size == Config().cache_size


@pytest.mark.parametrize(
    "text, key",
    [("shards: 2\ncache_size: 5\nshards: 3\n", "shards"), ("log: true\nlog: true\n", "log")],
)
def test_duplicate_keys_name_the_key_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    message = str(info.value)
    assert str(path) in message and "duplicate key" in message and repr(key) in message


def test_duplicate_keys_are_caught_in_nested_mappings_but_merges_are_fine(tmp_path):
    with pytest.raises(ConfigError, match="duplicate key 'x'"):
        Config.from_yaml(write(tmp_path, "shards: 2\nnested: {x: 1, x: 2}\n"))
    # `<<:` merge keys may be overridden beside them; the extra keys are then reported as unknown
    with pytest.raises(ConfigError, match="unknown key"):
        Config.from_yaml(write(tmp_path, "base: &b {x: 1}\nother:\n  <<: *b\n  x: 2\n"))


@pytest.mark.parametrize("mode", ["0660", "0602", "0622", "0666", "0777", "020"])
def test_file_mode_refuses_group_and_other_write(tmp_path, mode):
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({"file_mode": mode})
    assert "file_mode" in str(info.value) and "only the owner may write" in str(info.value)
    path = write(tmp_path, f"file_mode: '{mode}'\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        Config.from_yaml(path)


@pytest.mark.parametrize("mode", ["0600", "0644", "0640", "0604", "0400", "0700", "644"])
def test_file_mode_allows_owner_write_and_any_read(mode):
    assert Config.from_mapping({"file_mode": mode}).file_mode == mode
