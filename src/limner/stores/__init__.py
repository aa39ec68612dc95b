"""What limner keeps: url-mode images (`images/`), API keys (`keys/`) and durable jobs (`jobs/`).

Each store is one protocol (its `base.py`) with an embedded implementation (a directory, SQLite) and
one for clusters (S3, PostgreSQL); no implementation subclasses another. What they share lives here:
the link-signing secret (`secret.py`) and the PostgreSQL connection and schema lock (`postgres.py`).
"""
