"""Config: YAML in, validated settings out. Every key, its default and its meaning live in
``config/default.yaml``; this module is the schema that checks them."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from .errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys without a word; a config file with
    ``shards`` twice is a mistake, so say so."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *defaults`` may be overridden by the keys beside it
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, mark: yaml.Mark) -> None:
        super().__init__(f"duplicate key {key!r} (line {mark.line + 1})")
        self.key = key


MAX_AUTOSAVE_INTERVAL = 31_536_000  # a year: longer waits overflow the platform's timers
MAX_CALL_TIMEOUT = 86_400.0
MIN_CHECKPOINT_BYTES = 64 << 20  # the log is checkpointed past max(this, the last snapshot's size)
RAY_INSTALL_HINT = "pip install pydbms-shard[ray]"
_RAY_ADDRESS = re.compile(r"auto|ray://[^\s/:]+:\d{1,5}|[^\s/:]+:\d{1,5}")
_RAY_RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Validated settings. Build with ``Config.from_yaml(path)`` or ``Config.from_mapping(d)``."""

    shards: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    start_method: Literal["forkserver", "spawn", "fork"] = "forkserver"
    cache_size: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    iter_chunk_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    snapshot_path: str | None = None
    autosave_interval: Annotated[float, msgspec.Meta(ge=0, le=MAX_AUTOSAVE_INTERVAL)] = 0.0
    compression_level: Annotated[int, msgspec.Meta(ge=1, le=22)] = 1
    keep_generations: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    file_mode: Annotated[str, msgspec.Meta(pattern="^0?[0-7]{3}$")] = "0600"
    save_on_close: bool = False
    log: bool = True
    log_fsync: Literal["always", "everysec", "no"] = "always"
    log_checkpoint_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] | None = None
    call_timeout: Annotated[float, msgspec.Meta(gt=0, le=MAX_CALL_TIMEOUT)] = 300.0
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 5
    restart_window: Annotated[float, msgspec.Meta(gt=0, le=MAX_AUTOSAVE_INTERVAL)] = 60.0
    backend: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_num_cpus_per_shard: Annotated[float, msgspec.Meta(ge=0, le=1024)] = 0.0
    ray_resources_per_shard: dict[str, Annotated[float, msgspec.Meta(gt=0)]] | None = None
    ray_placement: Literal["spread", "default"] = "spread"
    ray_start_timeout: Annotated[float, msgspec.Meta(gt=0, le=MAX_CALL_TIMEOUT)] = 120.0

    @property
    def shard_count(self) -> int:
        return self.shards or os.cpu_count() or 1

    @property
    def logging_enabled(self) -> bool:
        """A write-ahead log is kept whenever there is a snapshot path to keep it beside."""
        return self.log and self.snapshot_path is not None

    @property
    def file_mode_bits(self) -> int:
        return int(self.file_mode, 8)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "settings") -> Config:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the settings must be a mapping of keys to values, got {type(data).__name__}")
        if isinstance(data.get("snapshot_path"), os.PathLike):
            data = {**data, "snapshot_path": os.fspath(data["snapshot_path"])}
        bad = [key for key in data if not isinstance(key, str)]
        if bad:
            raise ConfigError(f"{source}: unknown key {bad[0]!r} (keys are strings such as 'shards')")
        try:
            config = msgspec.convert(data, cls, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{source}: {_explain(exc)}") from None
        if config.file_mode_bits & 0o022:
            raise ConfigError(
                f"{source}: key 'file_mode': {config.file_mode!r} lets group or others write the snapshot "
                "files; only the owner may write them (read bits for group and others are fine, e.g. '0644')"
            )
        if (config.save_on_close or config.autosave_interval) and not config.snapshot_path:
            raise ConfigError(f"{source}: key 'snapshot_path': save_on_close and autosave_interval need a snapshot_path")
        _check_ray(config, source)
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Config:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
        except _DuplicateKey as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        return cls.from_mapping(data, source=str(path))

    def replace(self, source: str = "overrides", /, **changes: Any) -> Config:
        """A copy with ``changes`` applied, validated like a file."""
        merged = msgspec.structs.asdict(self)
        merged.update(changes)
        return Config.from_mapping(merged, source=source)


def _check_ray(config: Config, source: str) -> None:
    """The Ray settings make sense together, and Ray is there when the backend needs it."""
    if config.ray_address is not None and not _RAY_ADDRESS.fullmatch(config.ray_address):
        raise ConfigError(
            f"{source}: key 'ray_address': expected null (start a local Ray), 'auto' (the cluster this machine "
            f"belongs to), 'ray://host:port' (Ray Client) or 'host:port' (the head's GCS), got {config.ray_address!r}"
        )
    reserved = sorted(_RAY_RESERVED_RESOURCES & set(config.ray_resources_per_shard or ()))
    if reserved:
        raise ConfigError(
            f"{source}: key 'ray_resources_per_shard': {reserved[0]!r} is not a custom resource "
            "(CPUs are ray_num_cpus_per_shard; give custom resources here, e.g. {pydbms_shard: 0.25})"
        )
    if config.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(f"{source}: key 'backend': 'ray' needs Ray, which is not installed: {RAY_INSTALL_HINT}")


def _explain(exc: msgspec.ValidationError) -> str:
    """msgspec says ``... - at `$.shards```; say ``key 'shards': ...`` instead."""
    text = str(exc)
    if " - at `$." in text:
        message, _, where = text.rpartition(" - at `$.")
        return f"key {where.rstrip('`')!r}: {message}"
    if text.startswith("Object contains unknown field"):
        key = text.split("`")[1]
        return f"unknown key {key!r} (known keys: {', '.join(Config.__struct_fields__)})"
    return text


def load_config(config: Config | str | os.PathLike[str] | None, overrides: dict[str, Any]) -> Config:
    """The settings a DataBase runs with: a Config, a YAML path, or the defaults; then overrides."""
    if config is None:
        base = Config()
    elif isinstance(config, Config):
        base = config
    elif isinstance(config, (str, os.PathLike)):
        base = Config.from_yaml(config)
    else:
        raise ConfigError(f"config must be a Config, a path to a YAML file or None, got {type(config).__name__}")
    return base.replace(**overrides) if overrides else base
