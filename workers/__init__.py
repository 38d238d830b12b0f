"""What runs inside a shard worker process (installed as ``pydbms_shard.workers``)."""
