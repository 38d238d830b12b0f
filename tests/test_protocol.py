"""The protocol table and the worker agree: every command has a handler taking exactly the
table's arguments, and the coordinator cannot send a command the table does not know."""

from __future__ import annotations

import inspect

import pytest

from pydbms_shard import protocol
from pydbms_shard.codec import Raw, decode_any
from pydbms_shard.workers.loop import ShardWorker


def test_every_command_has_a_handler_with_the_tables_arguments():
    worker = ShardWorker(0, 1)
    handlers = {name[3:] for name in dir(worker) if name.startswith("op_")}
    assert handlers == set(protocol.COMMANDS)
    for name, spec in protocol.COMMANDS.items():
        params = tuple(inspect.signature(getattr(worker, f"op_{name}")).parameters)
        assert params == spec.args, name
        assert spec.raw <= set(spec.args), name


def test_requests_are_checked_against_the_table():
    with pytest.raises(KeyError):
        protocol.request("no_such_command")
    with pytest.raises(TypeError):
        protocol.request("ping", 1)
    with pytest.raises(TypeError):
        protocol.write_message("remove", Raw(b"\x90"))


def test_a_write_travels_as_the_bytes_it_will_be_logged_as():
    message = protocol.write_message("add", Raw(b"\x90"))
    envelope = decode_any(protocol.write_request(7, 99, [0], message))
    assert envelope[:4] == ["write", 7, 99, [0]]
    worker = ShardWorker(0, 1)
    assert decode_any(worker.handle(protocol.write_request(1, 5, [0], message))) == [True, 0]
