"""Database: engine and sessions, ORM models, Alembic migrations. SQLite (WAL) or PostgreSQL."""
