"""Open a service data directory from the command line: its database and its registry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def open_registry(args: argparse.Namespace) -> Any:
    """``(sessions, registry)`` for ``args.data_dir`` (and ``args.database_url``, if any)."""
    from cloud.service.db import database_url, make_engine, make_sessionmaker
    from cloud.service.registry import Registry

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    sessions = make_sessionmaker(make_engine(database_url(data, getattr(args, "database_url", None))))
    return sessions, Registry(sessions, data)
