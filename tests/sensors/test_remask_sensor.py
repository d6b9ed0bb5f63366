"""remask_sensor on a real Dagster instance and the real metadata DB: a new masker version re-runs
the partitions an older one masked, once per partition and version, a bounded number per tick,
and the run it asks for really re-makes the masks."""
import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context, materialize

from bggen_assets.assets.pipeline import pipeline_assets
from bggen_assets.core.manifests import CatalogManifest, MaskManifest
from bggen_assets.partitions import partition_key
from pipeline_helpers import metadata_of, read_manifest, run_partition
from resources.masker import MaskerResource
from sensors import remask
from sensors.remask import REMASK_ASSETS, remask_sensor


class Ticks:
    """Successive remask_sensor ticks on one instance, carrying the cursor as the daemon does."""

    def __init__(self, instance, metadata_db):
        self.instance, self.db, self.cursor = instance, metadata_db, None

    def tick(self):
        with build_sensor_context(instance=self.instance, cursor=self.cursor,
                                  resources={"masker": MaskerResource(), "metadata_db": self.db}) as ctx:
            result = remask_sensor(ctx)
        if isinstance(result, SensorResult) and result.cursor is not None:
            self.cursor = result.cursor
        return result


def requests_of(result) -> list:
    return list(result.run_requests) if isinstance(result, SensorResult) and result.run_requests else []


def test_a_new_masker_version_remasks_each_partition_once(pipeline_resources, monkeypatch):
    store, db = pipeline_resources["store"], pipeline_resources["metadata_db"]
    first, instance = run_partition(pipeline_resources, "northwind", "footwear")
    old = read_manifest(store, MaskManifest, "product_masks", "northwind", "footwear")
    # every product with an image, those masking refused (not an image, the full frame) included
    with_images = len(read_manifest(store, CatalogManifest, "catalog", "northwind", "footwear").products)
    assert with_images > len(old.products)
    ticks = Ticks(instance, db)
    skip = ticks.tick()
    assert isinstance(skip, SensorResult) and not requests_of(skip)  # everything is masked by this masker
    assert skip.skip_reason.skip_message == f"no partition masked by another masker than {old.masker_id}"

    monkeypatch.setattr("resources.masker.CLASSICAL_VERSION", "c99")  # what a new masking release does
    new_id = MaskerResource().identity()
    assert new_id != old.masker_id and new_id == "classical-c99"
    result = ticks.tick()
    [req] = requests_of(result)
    key = str(partition_key("northwind", "footwear"))
    assert req.run_key == f"remask:{key}:{new_id}" and str(req.partition_key) == key
    assert [a.to_user_string() for a in req.asset_selection] == REMASK_ASSETS
    assert req.tags["bggen/masker_id"] == new_id and req.tags["bggen/stale_masks"] == str(with_images)
    again = ticks.tick()  # requested once per partition and version
    assert isinstance(again, SkipReason) and "already requested" in again.skip_message

    # the run it asked for: every mask made again under the new id, the old ones left alone
    remasked = materialize(pipeline_assets, partition_key=req.partition_key, resources=pipeline_resources,
                           instance=instance, selection=[a.to_user_string() for a in req.asset_selection])
    assert remasked.success
    new = read_manifest(store, MaskManifest, "product_masks", "northwind", "footwear")
    md = metadata_of(remasked, "product_masks")
    assert new.masker_id == new_id == md["masker_id"] and md["reused"] == 0
    assert md["computed"] == with_images
    assert set(new.products) == set(old.products)
    assert all(new.products[p].mask_key != old.products[p].mask_key for p in new.products)
    assert all(store.exists(old.products[p].mask_key) for p in old.products)
    assert not db.stale_mask_partitions(new_id)
    # and the step reuses them from then on
    assert metadata_of(run_partition(pipeline_resources, "northwind", "footwear", instance=instance)[0],
                       "product_masks")["computed"] == 0

    # back to the old version (a rollback): its masks are all there, nothing is stale
    monkeypatch.setattr("resources.masker.CLASSICAL_VERSION", old.masker_id.split("-")[1])
    assert not db.stale_mask_partitions(old.masker_id)
    assert not requests_of(ticks.tick())


def _partition_rows(db, n: int, masker_id: str) -> list[tuple[str, str]]:
    """n partitions of one product each in the DB, masked by masker_id."""
    parts = [(f"m{i:02d}", "bags") for i in range(n)]
    for i, (merchant, category) in enumerate(parts):
        digest = f"{i:064x}"
        db.upsert_products([{"merchant": merchant, "product_id": f"P{i}", "category": category, "subcategory": "",
                             "colour": "", "title": "", "image_uri": f"{i}.jpg", "image_hash": digest,
                             "status": "ok", "reason": ""}])
        db.put_mask({"image_hash": digest, "masker_id": masker_id, "status": "ok", "method": "classical",
                     "score": 0.9, "reason": "", "mask_key": f"masks/{i}.png", "cutout_key": f"cutouts/{i}.png",
                     "bbox": "0,0,1,1", "image_size": "2,2", "coverage": 0.25})
    return parts


def test_runs_go_out_a_bounded_number_per_tick_and_busy_partitions_wait(metadata_db, monkeypatch):
    monkeypatch.setattr(remask, "MAX_RUNS_PER_TICK", 4)
    parts = _partition_rows(metadata_db, 10, "classical-c1")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("merchant", sorted({m for m, _ in parts} - {"m09"}))  # m09: no partition yet
    instance.add_dynamic_partitions("category", ["bags"])
    ticks = Ticks(instance, metadata_db)
    seen = []
    for expected in (4, 4, 1):
        result = ticks.tick()
        seen += [str(r.partition_key) for r in requests_of(result)]
        assert len(requests_of(result)) == expected
    assert seen == [str(partition_key(m, c)) for m, c in parts[:9]]  # each once, in order; m09 is not a partition
    assert isinstance(ticks.tick(), SkipReason)


def test_a_partition_with_a_run_in_progress_waits(metadata_db):
    from dagster import DagsterRunStatus

    from bggen_assets.jobs import pipeline_job
    from bggen_assets.definitions import build_definitions

    parts = _partition_rows(metadata_db, 2, "classical-c1")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("merchant", [m for m, _ in parts])
    instance.add_dynamic_partitions("category", ["bags"])
    job = build_definitions().resolve_job_def(pipeline_job.name)
    busy = str(partition_key(*parts[0]))
    run = instance.create_run_for_job(job, tags={"dagster/partition": busy}, status=DagsterRunStatus.STARTED)
    ticks = Ticks(instance, metadata_db)
    result = ticks.tick()
    assert [str(r.partition_key) for r in requests_of(result)] == [str(partition_key(*parts[1]))]
    assert isinstance(ticks.tick(), SkipReason)
    instance.report_run_canceled(instance.get_run_by_id(run.run_id))  # its run is over: now it goes
    assert [str(r.partition_key) for r in requests_of(ticks.tick())] == [busy]


@pytest.mark.parametrize("raw", [None, ""])
def test_an_empty_cursor_is_no_masker_and_nothing_requested(raw):
    assert remask.read_cursor(raw) == ("", set())
    assert remask.read_cursor(remask.write_cursor("classical-c5", {"b|a"})) == ("classical-c5", {"b|a"})
