"""The miss queue: a serving miss becomes generation work, once per key, newest first.

`DbMissQueue` (the embedded default) keeps it in the metadata DB's `misses` table;
`resources.redis_miss_queue.RedisMissQueue` keeps it in Redis (production, as the paper's service).
"""

from typing import Optional

from dagster import ConfigurableResource, ResourceDependency

from .metadata_db import MetadataDB, Miss, WaitingPartition


class MissQueue(ConfigurableResource):
    def record(self, miss: Miss, now: Optional[float] = None) -> None:
        raise NotImplementedError

    def record_request(self, misses: list[Miss], width: int, height: int, user: str = "",
                       now: Optional[float] = None) -> str:
        """One request that missed, as every theme's miss of its canvas. Written straight to the
        queue, all of them: the serving API's buffer (serving/state.py) puts its miss policy
        (size threshold, caps, rate limit) in front of this."""
        for miss in misses:
            self.record(miss, now)
        return "queued"

    def pending(self, limit: int = 1000, merchant: Optional[str] = None, category: Optional[str] = None) -> list[Miss]:
        """Pending misses, newest request first."""
        raise NotImplementedError

    def waiting_partitions(self) -> list[WaitingPartition]:
        """Every partition with misses waiting for a run (pending, or claimed past the lease), the
        longest-waiting first, with how many and when its waiting set last changed (a new request,
        or the claim time of a claim that lapsed). Never cut to a limit."""
        raise NotImplementedError

    def mark_done(self, request_keys: list[str], served_before: Optional[float] = None) -> int:
        raise NotImplementedError

    def claim(self, consumer: str, limit: int = 100, merchant: Optional[str] = None,
              category: Optional[str] = None) -> list[Miss]:
        """Take up to `limit` pending misses for `consumer`, newest first; concurrent consumers never
        receive the same miss. A claim not marked done within the queue's lease comes back."""
        raise NotImplementedError

    def release(self, request_keys: list[str]) -> int:
        """Give claimed misses back (the consumer could not serve them)."""
        raise NotImplementedError


class DbMissQueue(MissQueue):
    metadata_db: ResourceDependency[MetadataDB]

    def record(self, miss: Miss, now: Optional[float] = None) -> None:
        self.metadata_db.record_miss(miss, now)

    def pending(self, limit: int = 1000, merchant: Optional[str] = None, category: Optional[str] = None) -> list[Miss]:
        return self.metadata_db.pending_misses(limit, merchant, category)

    def waiting_partitions(self) -> list[WaitingPartition]:
        return self.metadata_db.waiting_partitions()

    def mark_done(self, request_keys: list[str], served_before: Optional[float] = None) -> int:
        return self.metadata_db.mark_misses_done(request_keys, served_before)

    def claim(self, consumer: str, limit: int = 100, merchant: Optional[str] = None,
              category: Optional[str] = None) -> list[Miss]:
        return self.metadata_db.claim_misses(consumer, limit, merchant, category)

    def release(self, request_keys: list[str]) -> int:
        return self.metadata_db.release_misses(request_keys)
