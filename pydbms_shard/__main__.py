"""``python -m pydbms_shard`` is the ``pydbms`` command."""

from .cli import main

raise SystemExit(main())
