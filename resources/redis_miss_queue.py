"""The miss queue in Redis, as the paper's service keeps it: a LIFO list plus a dedupe set.

Keys (all under one hash tag, so a Redis Cluster keeps them in one slot and the scripts stay
atomic there too), with `ns` = `namespace` (default `{bggen}:misses`):

  ns:list          LIST of request keys, newest at the head (LPUSH; consumers take from the head)
  ns:queued        SET of the request keys now in the list: a storm over one bucket queues it once
  ns:claimed       ZSET request key -> claim time, for claim leases
  ns:m:<key>       HASH merchant, category, product_id, bucket_id, prompt_id, first, last, count,
                   status (pending | claimed | done), claimed_by, lapsed (the claim time of a claim
                   the reaper put back: bucket_miss_sensor sees the partition changed then)

Every mutation is one Lua script, so it is atomic against concurrent producers and consumers:
`record` (SADD; LPUSH only when new), `claim` (take from the head, skipping other partitions when
filtered, mark claimed: two consumers never get the same miss), `mark_done`, `release`, and the
lease reaper (claims older than `claim_lease_s` go back to the head of the list).
`waiting_partitions` reads one snapshot of the list and summarises it per partition, whatever its
length (O(queued) per sensor tick).

Order: the list is LIFO by the time a miss was *queued*; a repeat request of a miss already in the
list raises its count and last-request time but does not move it (moving would cost an O(n)
LREM per request during a storm). The DB queue orders by last request time instead; both give
"newest miss first" for distinct misses. Done entries expire after `done_ttl_s`.
"""
from __future__ import annotations

import time
from typing import Optional

from dagster import ConfigurableResource  # noqa: F401  (MissQueue is one)
from pydantic import PrivateAttr

from .metadata_db import Miss, WaitingPartition
from .miss_queue import MissQueue

_FIELDS = ("merchant", "category", "product_id", "bucket_id", "prompt_id")

# KEYS[1]=list KEYS[2]=queued KEYS[3]=hash ; ARGV: key merchant category product_id bucket_id prompt_id now
# requests users (the requests and the not-yet-counted users this record stands for)
_RECORD = """
local status = redis.call('HGET', KEYS[3], 'status')
if not status then
  redis.call('HSET', KEYS[3], 'merchant', ARGV[2], 'category', ARGV[3], 'product_id', ARGV[4],
             'bucket_id', ARGV[5], 'prompt_id', ARGV[6], 'first', ARGV[7], 'count', 0, 'users', 0)
end
redis.call('HINCRBY', KEYS[3], 'count', ARGV[8])
redis.call('HINCRBY', KEYS[3], 'users', ARGV[9])
redis.call('HSET', KEYS[3], 'last', ARGV[7])
if status == 'claimed' then
  return 0
end
if status ~= 'pending' then
  redis.call('PERSIST', KEYS[3])
  redis.call('HSET', KEYS[3], 'status', 'pending', 'first', ARGV[7], 'count', ARGV[8], 'users', ARGV[9])
  redis.call('HDEL', KEYS[3], 'claimed_by', 'lapsed')
end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# Put claims past their lease back at the head of the list, noting when they were claimed.
_REAP_FN = """
local function reap(KEYS, ns, cutoff)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. cutoff, 'WITHSCORES')
  for i = 1, #expired, 2 do
    local key = expired[i]
    redis.call('ZREM', KEYS[3], key)
    local h = ns .. ':m:' .. key
    if redis.call('HGET', h, 'status') == 'claimed' then
      redis.call('HSET', h, 'status', 'pending', 'lapsed', expired[i + 1])
      redis.call('HDEL', h, 'claimed_by')
      if redis.call('SADD', KEYS[2], key) == 1 then
        redis.call('LPUSH', KEYS[1], key)
      end
    end
  end
  return #expired / 2
end
"""

# KEYS[1]=list KEYS[2]=queued KEYS[3]=claimed ; ARGV: ns cutoff
_REAP = _REAP_FN + "return reap(KEYS, ARGV[1], ARGV[2])"

# KEYS[1]=list KEYS[2]=queued KEYS[3]=claimed ; ARGV: ns limit consumer now merchant category cutoff
_CLAIM = _REAP_FN + """
reap(KEYS, ARGV[1], ARGV[7])
local limit = tonumber(ARGV[2])
local out = {}
local taken = {}
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for _, key in ipairs(items) do
  if #taken >= limit then break end
  local h = ARGV[1] .. ':m:' .. key
  local mc = redis.call('HMGET', h, 'merchant', 'category')
  if (ARGV[5] == '' or mc[1] == ARGV[5]) and (ARGV[6] == '' or mc[2] == ARGV[6]) then
    table.insert(taken, key)
    redis.call('HSET', h, 'status', 'claimed', 'claimed_by', ARGV[3])
    redis.call('HDEL', h, 'lapsed')
    redis.call('ZADD', KEYS[3], ARGV[4], key)
    redis.call('SREM', KEYS[2], key)
    local row = redis.call('HMGET', h, 'merchant', 'category', 'product_id', 'bucket_id', 'prompt_id', 'last', 'count')
    table.insert(out, row)
  end
end
for _, key in ipairs(taken) do
  redis.call('LREM', KEYS[1], 1, key)
end
return out
"""

# A claimed miss goes back to pending: off the claimed set, onto the LIFO list (once).
_REQUEUE_FN = """
local function requeue(KEYS, h, key)
  redis.call('HSET', h, 'status', 'pending')
  redis.call('HDEL', h, 'claimed_by')
  redis.call('ZREM', KEYS[3], key)
  if redis.call('SADD', KEYS[2], key) == 1 then
    redis.call('LPUSH', KEYS[1], key)
  end
end
"""

# KEYS[1]=list KEYS[2]=queued KEYS[3]=claimed ; ARGV: ns served_before('' = none) done_ttl key...
_DONE = _REQUEUE_FN + """
local done = 0
for i = 4, #ARGV do
  local key = ARGV[i]
  local h = ARGV[1] .. ':m:' .. key
  local status = redis.call('HGET', h, 'status')
  if status and status ~= 'done' then
    local last = tonumber(redis.call('HGET', h, 'last'))
    if ARGV[2] == '' or last <= tonumber(ARGV[2]) then
      redis.call('HSET', h, 'status', 'done')
      redis.call('HDEL', h, 'claimed_by')
      redis.call('EXPIRE', h, tonumber(ARGV[3]))
      redis.call('ZREM', KEYS[3], key)
      if redis.call('SREM', KEYS[2], key) == 1 then
        redis.call('LREM', KEYS[1], 1, key)
      end
      done = done + 1
    elseif status == 'claimed' then
      -- requested again after the plan: back to the queue for the next plan
      requeue(KEYS, h, key)
    end
  end
end
return done
"""

# KEYS[1]=list KEYS[2]=queued KEYS[3]=claimed ; ARGV: ns key...
_RELEASE = _REQUEUE_FN + """
local n = 0
for i = 2, #ARGV do
  local key = ARGV[i]
  local h = ARGV[1] .. ':m:' .. key
  if redis.call('HGET', h, 'status') == 'claimed' then
    requeue(KEYS, h, key)
    n = n + 1
  end
end
return n
"""


class RedisMissQueue(MissQueue):
    """The miss queue in Redis (`redis://host:6379/0`); same interface as DbMissQueue."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "{bggen}:misses"
    claim_lease_s: float = 900.0
    done_ttl_s: int = 7 * 86400
    socket_timeout: float = 5.0

    _client = PrivateAttr(default=None)
    _scripts = PrivateAttr(default=None)

    # -- plumbing -----------------------------------------------------------------------------
    def _r(self):
        if self._client is None:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry

            self._client = redis.Redis.from_url(
                self.redis_url, decode_responses=True, socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout, health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 5),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError])
            self._scripts = {name: self._client.register_script(src) for name, src in
                             (("record", _RECORD), ("reap", _REAP), ("claim", _CLAIM), ("done", _DONE),
                              ("release", _RELEASE))}
        return self._client

    def _script(self, name: str):
        self._r()
        return self._scripts[name]

    @property
    def _keys(self) -> list[str]:
        ns = self.namespace
        return [f"{ns}:list", f"{ns}:queued", f"{ns}:claimed"]

    def _hash(self, request_key: str) -> str:
        return f"{self.namespace}:m:{request_key}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- MissQueue ----------------------------------------------------------------------------
    def record(self, miss: Miss, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        key = miss.request_key
        self._script("record")(keys=[self._keys[0], self._keys[1], self._hash(key)],
                               args=[key, *(getattr(miss, f) for f in _FIELDS), repr(float(now)),
                                     int(miss.request_count), int(miss.distinct_users)])

    def pending(self, limit: int = 1000, merchant: Optional[str] = None, category: Optional[str] = None) -> list[Miss]:
        """Queued misses, newest queued first (claims past their lease are queued again first)."""
        r = self._r()
        self._script("reap")(keys=self._keys, args=[self.namespace, repr(time.time() - self.claim_lease_s)])
        out: list[Miss] = []
        start, page = 0, 500
        while len(out) < limit:
            keys = r.lrange(self._keys[0], start, start + page - 1)
            if not keys:
                break
            start += page
            pipe = r.pipeline(transaction=False)
            for k in keys:
                pipe.hmget(self._hash(k), *_FIELDS, "last", "count", "users")
            for row in pipe.execute():
                if row[0] is None:
                    continue
                if (merchant is None or row[0] == merchant) and (category is None or row[1] == category):
                    out.append(Miss(*row[:5], float(row[5]), int(row[6]), int(row[7] or 0)))
                    if len(out) >= limit:
                        break
        return out

    def waiting_partitions(self) -> list[WaitingPartition]:
        r = self._r()
        self._script("reap")(keys=self._keys, args=[self.namespace, repr(time.time() - self.claim_lease_s)])
        keys = r.lrange(self._keys[0], 0, -1)  # one snapshot of the queue
        found: dict[tuple[str, str], list] = {}  # (merchant, category) -> [misses, oldest, changed]
        for start in range(0, len(keys), 1000):
            pipe = r.pipeline(transaction=False)
            for k in keys[start:start + 1000]:
                pipe.hmget(self._hash(k), "merchant", "category", "last", "lapsed")
            for merchant, category, last, lapsed in pipe.execute():
                if merchant is None:  # done and expired since the snapshot
                    continue
                last = float(last)
                changed = max(last, float(lapsed)) if lapsed else last
                part = found.setdefault((merchant, category), [0, last, changed])
                part[0] += 1
                part[1], part[2] = min(part[1], last), max(part[2], changed)
        return sorted((WaitingPartition(m, c, n, oldest, changed) for (m, c), (n, oldest, changed) in found.items()),
                      key=lambda p: (p.oldest_request, p.merchant, p.category))

    def mark_done(self, request_keys: list[str], served_before: Optional[float] = None) -> int:
        if not request_keys:
            return 0
        return int(self._script("done")(keys=self._keys, args=[
            self.namespace, "" if served_before is None else repr(float(served_before)), self.done_ttl_s,
            *request_keys]))

    def claim(self, consumer: str, limit: int = 100, merchant: Optional[str] = None,
              category: Optional[str] = None) -> list[Miss]:
        now = time.time()
        rows = self._script("claim")(keys=self._keys, args=[
            self.namespace, int(limit), consumer, repr(now), merchant or "", category or "",
            repr(now - self.claim_lease_s)])
        return [Miss(*row[:5], float(row[5]), int(row[6])) for row in rows]

    def release(self, request_keys: list[str]) -> int:
        if not request_keys:
            return 0
        return int(self._script("release")(keys=self._keys, args=[self.namespace, *request_keys]))

    # -- operators / tests --------------------------------------------------------------------
    def stats(self) -> dict:
        r = self._r()
        return {"queued": r.llen(self._keys[0]), "dedupe": r.scard(self._keys[1]), "claimed": r.zcard(self._keys[2])}

    def clear(self) -> int:
        """Delete every key of this namespace (tests; resetting a staging queue)."""
        r = self._r()
        n = 0
        for k in r.scan_iter(match=f"{self.namespace.replace('{', '[{]').replace('}', '[}]')}:*", count=1000):
            n += r.delete(k)
        return n
