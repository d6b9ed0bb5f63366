"""The miss queue: a serving miss becomes generation work, once per key, newest first.

`DbMissQueue` (the embedded default) keeps it in the metadata DB's `misses` table.
"""

from typing import Optional

from dagster import ConfigurableResource, ResourceDependency

from .metadata_db import MetadataDB, Miss


class MissQueue(ConfigurableResource):
    def record(self, miss: Miss, now: Optional[float] = None) -> None:
        raise NotImplementedError

    def pending(self, limit: int = 1000, merchant: Optional[str] = None, category: Optional[str] = None) -> list[Miss]:
        """Pending misses, newest request first."""
        raise NotImplementedError

    def mark_done(self, request_keys: list[str], served_before: Optional[float] = None) -> int:
        raise NotImplementedError


class DbMissQueue(MissQueue):
    metadata_db: ResourceDependency[MetadataDB]

    def record(self, miss: Miss, now: Optional[float] = None) -> None:
        self.metadata_db.record_miss(miss, now)

    def pending(self, limit: int = 1000, merchant: Optional[str] = None, category: Optional[str] = None) -> list[Miss]:
        return self.metadata_db.pending_misses(limit, merchant, category)

    def mark_done(self, request_keys: list[str], served_before: Optional[float] = None) -> int:
        return self.metadata_db.mark_misses_done(request_keys, served_before)
