"""A feed run while the Redis miss queue is down degrades by design, on a Redis of the test's own
(another port; the shared one stays up), SIGKILLed and restarted on its append-only file.

Services pass only. With Redis killed, the miss run of a partition still succeeds: bucket_plans
plans without the miss queue and says so in a warning naming Redis and its address; the served
miss is not planned, and not lost. After the restart the next run plans it and the miss is a hit.
"""
from __future__ import annotations

import uuid

from pipeline_helpers import read_manifest, run_partition
from services import RedisServer, services_only, start_or_fail

from bggen_assets.core import serving_index
from bggen_assets.core.geometry import Placement
from bggen_assets.core.manifests import PlanManifest
from bggen_assets.serving.creative import CreativeService

pytestmark = services_only
MERCHANT, CATEGORY = "northwind", "footwear"
MISS_RUN = ["bucket_plans", "generated_backgrounds", "serving_index"]


def warnings_of(instance, result) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id) if e.level >= 30]


def test_a_run_without_redis_plans_without_misses_and_the_next_run_picks_them_up(tmp_path, pipeline_resources):
    from resources.redis_miss_queue import RedisMissQueue

    redis = start_or_fail(RedisServer(tmp_path / "redis"), "a private Redis for the outage test")
    try:
        queue = RedisMissQueue(redis_url=redis.url, namespace=f"{{bggen-t-{uuid.uuid4().hex[:8]}}}:m",
                               socket_timeout=1.0)
        res = {**pipeline_resources, "miss_queue": queue}
        store = res["store"]
        first, instance = run_partition(res, MERCHANT, CATEGORY)
        assert first.success
        doc = serving_index.read_current(store, MERCHANT, CATEGORY)
        service = CreativeService(store, queue, res["creative_config"], index_ttl_s=0.0)
        pid, unplanned = sorted(doc.products)[0], Placement(333, 222, 0.5, 0.1, 0.9)
        miss = service.serve(MERCHANT, pid, unplanned, doc.prompts[0])
        assert not miss.hit and len(queue.pending()) == len(doc.prompts)

        redis.kill()
        degraded, _ = run_partition(res, MERCHANT, CATEGORY, instance=instance, selection=MISS_RUN)
        assert degraded.success  # a warning, not a failure
        warned = [w for w in warnings_of(instance, degraded) if "miss queue unavailable" in w]
        assert warned and f"Redis at {redis.url}" in warned[0], warnings_of(instance, degraded)
        plan = read_manifest(store, PlanManifest, "bucket_plans", MERCHANT, CATEGORY)
        assert plan.miss_keys == () and not [i for i in plan.items if i.source == "miss"]
        assert not service.serve(MERCHANT, pid, unplanned, doc.prompts[0], record_miss=False).hit

        redis.start()  # the same port and append-only file: the misses are still queued
        assert len(queue.pending()) == len(doc.prompts)
        after, _ = run_partition(res, MERCHANT, CATEGORY, instance=instance, selection=MISS_RUN)
        assert after.success and not [w for w in warnings_of(instance, after) if "miss queue unavailable" in w]
        replanned = read_manifest(store, PlanManifest, "bucket_plans", MERCHANT, CATEGORY)
        assert len(replanned.miss_keys) == len(doc.prompts)
        assert service.serve(MERCHANT, pid, unplanned, doc.prompts[0], record_miss=False).hit
        assert queue.pending() == []
    finally:
        redis.kill()
