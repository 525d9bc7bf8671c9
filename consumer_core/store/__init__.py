"""Task stores: where task state lives (SQLite by default, Redis, PostgreSQL)."""

from consumer_core.store.base import TaskQuery, TaskStore, open_store
from consumer_core.store.sqlite import SqliteDatabase, SqliteDatabases, SqliteTaskStore

__all__ = [
    "SqliteDatabase",
    "SqliteDatabases",
    "SqliteTaskStore",
    "TaskQuery",
    "TaskStore",
    "open_store",
]
