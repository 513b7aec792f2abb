"""The lead API and the push to amoCRM: a local mirror of the host app's leads and contacts
(``repository.py``), the routes that accept and show them (``router.py``, ``service.py``), and
the job handlers that send them to amoCRM without ever creating one twice (``tasks.py``), and
the import and catch-up that pull an account into the mirror (``imports.py``,
``import_tasks.py``, ``upsert.py``). See docs/sync.md, "Leads" and "Import and catch-up"."""
