"""Which misses earn generation: size threshold, declared sizes, per-product rate limit,
per-merchant cap; every theme queued; the miss record counts requests and distinct users."""
import pytest

from bggen_assets.core.miss_policy import (
    BELOW_THRESHOLD, MERCHANT_CAP, QUEUED, RATE_LIMITED, MissGate, MissPolicy, MissPolicyError,
)
from bggen_assets.serving.state import BufferedMissQueue
from resources.metadata_db import Miss

THEMES = ("beach", "marble", "forest")


def test_a_size_is_queued_from_its_nth_request_or_at_once_if_declared():
    gate = MissGate(MissPolicy(min_requests=3), declared=lambda m: [(300, 250)] if m == "shop" else [])
    assert [gate.admit("shop", "p1", "b1", 333, 111, 0.0) for _ in range(4)] == \
        [BELOW_THRESHOLD, BELOW_THRESHOLD, QUEUED, QUEUED]
    assert gate.admit("shop", "p2", "b2", 300, 250, 0.0) == QUEUED  # declared in its placements
    assert gate.admit("other", "p2", "b2", 300, 250, 0.0) == BELOW_THRESHOLD  # declared by another merchant only
    assert gate.held[BELOW_THRESHOLD] == 3 and gate.queued == 3


def test_per_product_rate_limit_refills_over_time():
    gate = MissGate(MissPolicy(min_requests=1, product_rate=2, product_period_s=100.0))
    got = [gate.admit("m", "p", f"b{i}", 300 + i, 250, 0.0) for i in range(4)]
    assert got == [QUEUED, QUEUED, RATE_LIMITED, RATE_LIMITED]
    assert gate.admit("m", "p", "b0", 300, 250, 1.0) == QUEUED  # an admitted bucket spends no token
    assert gate.admit("m", "other", "b9", 300, 250, 1.0) == QUEUED  # the limit is per product
    assert gate.admit("m", "p", "b5", 305, 250, 50.0) == QUEUED  # half a period: one token back
    assert gate.admit("m", "p", "b6", 306, 250, 50.0) == RATE_LIMITED
    assert gate.held[RATE_LIMITED] == 3


def test_bad_policy_is_a_clear_error():
    for bad in ({"min_requests": 0}, {"merchant_cap": -1}, {"product_rate": 1.5}, {"product_period_s": 0}):
        with pytest.raises(MissPolicyError):
            MissPolicy(**bad)


def _request(buf, product, bucket, w, h, user, now=0.0):
    misses = [Miss("shop", "shoes", product, bucket, t) for t in THEMES]
    return buf.record_request(misses, w, h, user, now)


def test_requests_and_distinct_users_are_counted_not_flushes(metadata_db):
    from resources.miss_queue import DbMissQueue

    queue = DbMissQueue(metadata_db=metadata_db)
    buf = BufferedMissQueue(queue, policy=MissPolicy(min_requests=1))
    for i in range(8):  # 8 requests by 3 users, over 3 flushes
        _request(buf, "p1", "b1", 300, 250, f"u{i % 3}")
        if i in (2, 5):
            buf.flush()
    buf.flush()
    pending = queue.pending()
    assert sorted(m.prompt_id for m in pending) == sorted(THEMES)  # every theme of the category
    assert {(m.request_count, m.distinct_users) for m in pending} == {(8, 3)}


def test_random_sizes_queue_nothing_below_the_threshold_and_the_cap_holds(metadata_db):
    """400 anonymous requests with random sizes (the issue's storm) queue no job; repeated sizes
    do, up to the merchant cap; everything else is counted."""
    import random

    from resources.miss_queue import DbMissQueue

    queue = DbMissQueue(metadata_db=metadata_db)
    buf = BufferedMissQueue(queue, policy=MissPolicy(min_requests=3, merchant_cap=3 * 4))
    rng = random.Random(0)
    sizes = set()
    for i in range(400):
        w, h = rng.randrange(100, 2000), rng.randrange(50, 2000)
        sizes.add((w, h))
        _request(buf, f"p{i % 7}", f"b{w}x{h}", w, h, "")
    buf.flush()
    assert len(sizes) > 390 and queue.pending() == []
    assert buf.gate.held[BELOW_THRESHOLD] == 400
    for i in range(6):  # 6 sizes requested 3 times each: 6 buckets x 3 themes = 18 misses > cap 12
        for _ in range(3):
            _request(buf, f"q{i}", f"c{i}", 500 + i, 500, "")
    buf.flush()
    assert len(queue.pending(limit=100)) == 12 and buf.gate.held[MERCHANT_CAP] == 6
    for i in range(6):  # a waiting miss still counts its requests; new ones stay held
        _request(buf, f"q{i}", f"c{i}", 500 + i, 500, "")
    buf.flush()
    pending = queue.pending(limit=100)
    assert len(pending) == 12 and {m.request_count for m in pending} == {2}
    assert buf.stats()["held"][MERCHANT_CAP] == 12
