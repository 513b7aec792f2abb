"""Persistence: tables, the database handle, encryption at rest, migrations."""
