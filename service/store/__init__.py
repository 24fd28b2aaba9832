"""Session storage: one interface, one SQLAlchemy implementation for SQLite and PostgreSQL."""

from service.store.base import IdempotencyRecord, LockedSession, SessionMeta, SessionStore
from service.store.sql import SqlSessionStore

__all__ = ["IdempotencyRecord", "LockedSession", "SessionMeta", "SessionStore", "SqlSessionStore"]
