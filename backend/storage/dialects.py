"""What differs between SQLite and PostgreSQL for the face store, and nothing else.

The store writes one SQL text for both: `?` placeholders, `BLOB_TYPE` in its table definitions, and
`ON CONFLICT` upserts, which both databases speak. A dialect turns that into its own database's terms
and knows how to open a connection and how to take the per-project lock.
"""
from __future__ import annotations

import hashlib
import sqlite3
from contextlib import nullcontext
from pathlib import Path

MMAP_BYTES = 2**40


class SQLiteDialect:
    """One file under DATA_DIR, in WAL mode: readers never wait for the writer, and a committed
    transaction survives the process being killed (synchronous=FULL also survives a power cut)."""

    blob_type = "BLOB"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __str__(self) -> str:
        return f"sqlite:{self.path}"

    def connect(self):
        # isolation_level=None: no implicit transactions; the store issues BEGIN itself.
        # timeout: how long a writer waits for another one's lock (a whole-project recluster commit included).
        connection = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        # Pages read through a memory map, not a read() into SQLite's 2 MB cache each: an assignment looks
        # up its face's neighbours, rows anywhere in a file of 6 GB at 10^6 faces (median 6.1 -> 3.0 ms there).
        # SQLite caps the map at its build's maximum (2 GiB in Python's); the rest is read as before.
        connection.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        return connection

    def begin_locked(self, connection, lock: str) -> None:
        """A write transaction holding `lock`. SQLite has one writer at a time, so the file's write lock,
        taken up front by BEGIN IMMEDIATE, serves as every project's lock."""
        connection.execute("BEGIN IMMEDIATE")

    @staticmethod
    def pipeline(connection):
        """Statements run in-process: nothing to gather into fewer round trips."""
        return nullcontext()

    @staticmethod
    def sql(text: str) -> str:
        return text


class PostgreSQLDialect:
    """A PostgreSQL server (DATABASE_URL=postgresql://...), so that several replicas share one store."""

    blob_type = "BYTEA"

    def __init__(self, url: str):
        import psycopg  # only needed with DATABASE_URL

        self.psycopg = psycopg
        self.url = url

    def __str__(self) -> str:
        return "postgresql (DATABASE_URL)"  # the URL may hold a password

    def connect(self):
        return self.psycopg.connect(self.url, autocommit=True)  # autocommit: the store issues BEGIN itself

    def begin_locked(self, connection, lock: str) -> None:
        """A transaction holding an advisory lock named `lock` until it ends: writers of one project wait
        for each other, other projects' writers and all readers do not."""
        connection.execute("BEGIN")
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_number(lock),))

    @staticmethod
    def pipeline(connection):
        """Within it, statements are sent without waiting for their answers until a result is read
        (psycopg's pipeline mode): the statements between two reads cost one round trip to the server."""
        return connection.pipeline()

    @staticmethod
    def sql(text: str) -> str:
        return text.replace("?", "%s")


def _lock_number(name: str) -> int:
    """Advisory locks are numbered (bigint): a stable 63-bit hash of the lock's name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1


def dialect_for(database_url: str, data_dir: Path):
    """DATABASE_URL if set (postgresql://... or postgres://...), else an SQLite file in DATA_DIR."""
    if not database_url:
        return SQLiteDialect(Path(data_dir) / "faces.sqlite3")
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgreSQLDialect(database_url)
    scheme = database_url.split(":")[0]
    raise ValueError(f"DATABASE_URL must be a postgresql:// URL (or unset for SQLite), got {scheme}:...")
