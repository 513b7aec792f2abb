"""The audit log: who did what to which connection, lead or stage, and how it ended. Every feature
writes to it through :class:`AuditRepository` inside its own unit of work, so an entry commits (or
rolls back) with the change it describes."""

from amobridge.audit.repository import AuditRepository

__all__ = ["AuditRepository"]
