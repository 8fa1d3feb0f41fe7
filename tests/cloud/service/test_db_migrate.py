"""A database made before ``batches.digest`` existed is brought up to the schema on open (issue 12, item 19)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import inspect


def test_an_old_database_gains_the_digest_column_and_keeps_its_rows(tmp_path: Path) -> None:
    from cloud.service.db import make_engine

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the batches table as the first release created it, with one row
        db.execute("CREATE TABLE devices (id INTEGER PRIMARY KEY, name VARCHAR(200) UNIQUE, token_hash VARCHAR(64) "
                   "UNIQUE, created FLOAT, last_seen FLOAT, running_version VARCHAR(64), last_event TEXT, "
                   "samples_stored INTEGER, dropped INTEGER)")
        db.execute("CREATE TABLE batches (id INTEGER PRIMARY KEY, device_id INTEGER REFERENCES devices(id), "
                   "key VARCHAR(128), received FLOAT, stored INTEGER, UNIQUE (device_id, key))")
        db.execute("INSERT INTO devices VALUES (1, 'd', 'h', 0, NULL, NULL, NULL, 0, 0)")
        db.execute("INSERT INTO batches VALUES (1, 1, 'k', 0, 5)")
    engine = make_engine(f"sqlite:///{path}")
    assert "digest" in {c["name"] for c in inspect(engine).get_columns("batches")}
    make_engine(f"sqlite:///{path}")  # idempotent
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT key, stored, digest FROM batches").all() == [("k", 5, None)]
    assert "statements" in inspect(engine).get_table_names()
