"""The proxy keeps no tables of its own: it reads the owner's connection through
:class:`~amobridge.connect.repository.ConnectionRepository` and writes its audit entries through
:class:`~amobridge.audit.AuditRepository`, so this module holds no SQL."""
