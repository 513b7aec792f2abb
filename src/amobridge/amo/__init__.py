"""The amoCRM SDK (in progress: issue 4)."""

__all__: list[str] = []
