"""The SQLite store: every SQL statement of edgejobs lives in this package."""

from edgejobs.store.store import Store

__all__ = ["Store"]
