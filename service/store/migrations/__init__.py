"""Alembic migrations of the session store's schema (SQLite and PostgreSQL)."""
