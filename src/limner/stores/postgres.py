"""What the PostgreSQL stores share: psycopg (imported only when a postgresql:// URL is configured),
the URL check, a password-free name for messages, and schema creation under one advisory lock."""

from __future__ import annotations

from typing import Any

from limner.extras import install_hint

#: The advisory lock that serializes limner's schema creation in PostgreSQL (any constant will do).
SCHEMA_LOCK = 0x6C696D6E6572  # "limner"


def psycopg_for(setting: str, url: str) -> Any:
    """psycopg, for the store a `setting` (keys_url, jobs_url) names; ValueError (one line) when the URL is
    not PostgreSQL's or psycopg is not installed."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{setting} must be a postgresql:// URL, not {url.split(':')[0]}:...")
    try:
        import psycopg
    except ImportError as exc:
        raise ValueError(f'{setting} = "postgresql://..." needs psycopg: {install_hint("postgres")}') from exc
    return psycopg


def where(psycopg: Any, url: str) -> str:
    """The database, without its password, for messages."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"


def create_schema(db: Any, schema: str) -> None:
    """Run `schema` (statements separated by ";") in the connection's transaction. Replicas start
    together and CREATE ... IF NOT EXISTS races in PostgreSQL (a unique violation on its catalog), so
    one creates while the others wait on the lock."""
    db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)
