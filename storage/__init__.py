"""Storage: PostgreSQL through asyncpg, bridged to trio; the embedded server; migrations; queries.

The only package that imports asyncpg or trio-asyncio. Callers use::

    async with storage.open_database(url, data_dir=...) as db:
        await storage.apply_migrations(db)
        async with db.transaction() as conn:
            await storage.queries.insert_trade(conn, ...)
"""

from __future__ import annotations

from storage.database import (
    APP_DATABASE,
    Connection,
    Database,
    Executor,
    Notifications,
    PoolStatistics,
    Row,
    open_database,
)
from storage.errors import IntegrityError, QueryError
from storage.migrations import MigrationState, apply_migrations, migration_status

__all__ = [
    "APP_DATABASE",
    "Connection",
    "Database",
    "Executor",
    "IntegrityError",
    "MigrationState",
    "Notifications",
    "PoolStatistics",
    "QueryError",
    "Row",
    "apply_migrations",
    "migration_status",
    "open_database",
]
