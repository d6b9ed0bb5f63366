"""The whole asset graph for a partition, for real: masks, plans, generation, index, checks."""
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from bggen_assets.core import serving_index
from bggen_assets.core.compositing import lanczos_crop
from bggen_assets.core.geometry import bucket_for, place_product
from bggen_assets.core.manifests import CatalogManifest, MaskManifest, PlanManifest
from bggen_assets.serving.creative import CreativeService
from pipeline_helpers import check_status_by_partition, checks_of, metadata_of, read_manifest, run_partition


@pytest.fixture
def footwear_run(pipeline_resources):
    result, instance = run_partition(pipeline_resources, "northwind", "footwear")
    return result, instance, pipeline_resources


def test_whole_graph_publishes_a_complete_index(footwear_run):
    result, _, res = footwear_run
    assert result.success
    store = res["store"]
    doc = serving_index.read_current(store, "northwind", "footwear")
    plans = read_manifest(store, PlanManifest, "bucket_plans", "northwind", "footwear")
    assert doc.entries and len(doc.entries) == len(plans.items)
    assert doc.prompts == ("urban-concrete", "beach-sunset", "pastel-podium")
    # every indexed image exists, has the canvas size, and keeps the product box the plan says
    planned = {item.key: item for item in plans.items}
    for key, entry in list(doc.entries.items())[:25]:
        img = Image.open(io.BytesIO(store.get_bytes(entry.image_key)))
        assert img.size == entry.canvas
        assert (entry.canvas, entry.product_box) == (planned[key].canvas, planned[key].product_box)
    checks = checks_of(result)
    assert checks["product_fidelity"].passed and checks["product_fidelity"].metadata["max_abs_diff"].value == 0
    assert checks["index_complete"].passed
    # bucketing shares canvases between placements: fewer generations than placement requests
    plan_md = metadata_of(result, "bucket_plans")
    assert plan_md["generations"] < plan_md["placement_requests"]


def test_bad_rows_are_reported_and_skipped_nothing_else_lost(footwear_run):
    result, _, res = footwear_run
    catalog_md = metadata_of(result, "catalog")
    masks = read_manifest(res["store"], MaskManifest, "product_masks", "northwind", "footwear")
    reasons = {r.product_id: r.reason for r in masks.rejected}
    assert "image file not found" in reasons["NO-BAD-MISSING"]
    assert "not an image" in reasons["NO-BAD-NOTIMAGE"]
    assert "NO-BAD-FULLFRAME" in reasons  # a product filling the whole frame cannot be masked
    good = {p.product_id for p in read_manifest(res["store"], CatalogManifest, "catalog", "northwind", "footwear").products}
    assert set(masks.products) == good - set(reasons)  # every other product went through
    assert catalog_md["rejected"] == 1
    checks = checks_of(result)
    assert not checks["feed_rows_usable"].passed and not checks["mask_coverage_sane"].passed  # reported, as warnings
    rows = {r["product_id"]: r for r in res["metadata_db"].product_rows("northwind", "footwear")}
    assert rows["NO-BAD-MISSING"]["status"] == "rejected" and rows["NO-0001"]["status"] == "ok"


def test_check_results_belong_to_the_partition_they_checked(pipeline_resources):
    """A warning in one partition stays visible after a later run of another partition passes."""
    first, instance = run_partition(pipeline_resources, "northwind", "footwear", selection=["catalog"])
    assert not checks_of(first)["feed_rows_usable"].passed  # northwind's feed has bad rows
    later, _ = run_partition(pipeline_resources, "acme-outfitters", "bags", instance=instance, selection=["catalog"])
    assert checks_of(later)["feed_rows_usable"].passed
    assert check_status_by_partition(instance, "catalog", "feed_rows_usable") == {
        ("northwind", "footwear"): "FAILED", ("acme-outfitters", "bags"): "SUCCEEDED"}


def test_second_run_regenerates_nothing(footwear_run):
    result, instance, res = footwear_run
    first = metadata_of(result, "generated_backgrounds")
    assert first["generated"] > 0 and first["reused"] == 0
    objects_before = sorted(res["store"].list_keys("canvases"))
    again, _ = run_partition(res, "northwind", "footwear", instance=instance)
    second = metadata_of(again, "generated_backgrounds")
    assert second["generated"] == 0 and second["reused"] == first["generated"]
    assert metadata_of(again, "product_masks")["computed"] == 0  # masks are stored once per image hash
    assert sorted(res["store"].list_keys("canvases")) == objects_before
    assert metadata_of(again, "serving_index")["version"] == 2


def test_a_changed_prompt_regenerates_only_its_canvases(pipeline_resources, tmp_path, sample_dir):
    import yaml

    from resources.creative_config import CreativeConfig

    result, instance = run_partition(pipeline_resources, "northwind", "footwear")
    first = metadata_of(result, "generated_backgrounds")["generated"]
    prompts = yaml.safe_load((sample_dir / "prompts.yaml").read_text())
    prompts["categories"]["footwear"][0]["text"] += ", at dawn"
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(prompts))
    cfg = pipeline_resources["creative_config"]
    res = {**pipeline_resources, "creative_config": CreativeConfig(**{**cfg.model_dump(), "prompts_path": str(tmp_path / "prompts.yaml")})}
    again, _ = run_partition(res, "northwind", "footwear", instance=instance)
    assert metadata_of(again, "generated_backgrounds")["generated"] == first // 3  # one theme of three


def test_served_placement_is_the_crop_of_its_canvas(footwear_run):
    _, _, res = footwear_run
    store = res["store"]
    doc = serving_index.read_current(store, "northwind", "footwear")
    pid = sorted(doc.products)[0]
    _, _, bw, bh = doc.products[pid].bbox
    service = CreativeService(store, res["miss_queue"], res["creative_config"])

    def reference(placed, theme):  # one Lanczos pass over the stored canvas of that theme
        entry = doc.entry(pid, bucket_for(placed, 1.2).id, theme)
        canvas = Image.open(io.BytesIO(store.get_bytes(entry.image_key))).convert("RGB")
        return np.asarray(lanczos_crop(canvas, entry.layout, placed), np.float64)

    for placement in res["creative_config"].placements("northwind")[:6]:
        placed = place_product(bw, bh, placement)
        served = service.serve("northwind", pid, placement, "beach-sunset", fmt="png")  # PNG: lossless
        assert served.hit
        got = np.asarray(Image.open(io.BytesIO(served.body)).convert("RGB"), np.float64)
        assert got.shape == (placement.height, placement.width, 3)
        psnr = {t: 10 * np.log10(255.0**2 / max(np.mean((got - reference(placed, t)) ** 2), 1e-12)) for t in doc.prompts}
        assert psnr["beach-sunset"] > 40.0 and all(v < 25.0 for t, v in psnr.items() if t != "beach-sunset"), psnr


def _with_feeds(pipeline_resources, feeds):
    from resources.creative_config import CreativeConfig

    cfg = pipeline_resources["creative_config"]
    return {**pipeline_resources, "creative_config": CreativeConfig(**{**cfg.model_dump(), "feeds_dir": str(feeds)})}


def test_a_malformed_row_is_rejected_alone_naming_file_line_and_column(pipeline_resources, tmp_path, sample_dir):
    feeds = tmp_path / "feeds"
    shutil.copytree(sample_dir / "feeds", feeds)
    lines = (feeds / "northwind.csv").read_text().splitlines()
    bad_id = lines[3].split(",")[0]
    lines[3] = lines[3] + ',"extra"'  # one field too many on line 4
    (feeds / "northwind.csv").write_text("\n".join(lines) + "\n")
    res = _with_feeds(pipeline_resources, feeds)
    category = next(c for c in ("footwear", "bags", "home") if f",{c}," in lines[3])
    result, _ = run_partition(res, "northwind", category, raise_on_error=False)
    assert result.success
    catalog = read_manifest(res["store"], CatalogManifest, "catalog", "northwind", category)
    [rejection] = [r for r in catalog.rejected if r.line == 4]
    assert rejection.file.endswith("northwind.csv") and rejection.product_id == bad_id
    assert "column" in rejection.reason and "expected 6 fields, found 7" in rejection.reason
    assert bad_id not in {p.product_id for p in catalog.products} and catalog.products  # the others went through
    assert res["store"].exists(f"index/northwind/{category}/current.json")


def test_an_unreadable_feed_fails_its_catalog_naming_the_file(pipeline_resources, tmp_path, sample_dir):
    feeds = tmp_path / "feeds"
    shutil.copytree(sample_dir / "feeds", feeds)
    text = (feeds / "northwind.csv").read_text()
    (feeds / "northwind.csv").write_bytes(text.encode("utf-16"))  # Excel's "Unicode text"
    res = _with_feeds(pipeline_resources, feeds)
    result, _ = run_partition(res, "northwind", "footwear", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    text = failure.message + "".join(str(c.message) for c in ([failure.cause] if failure.cause else []))
    assert "northwind.csv" in text and "UTF-16" in text
    # nothing downstream ran and nothing was published; the other merchant's feed still works
    assert not res["store"].exists("index/northwind/footwear/current.json")
    assert run_partition(res, "acme-outfitters", "bags")[0].success


def test_empty_partition_publishes_an_empty_index(pipeline_resources):
    # acme-outfitters sells no home goods: the cross product still has that partition
    result, _ = run_partition(pipeline_resources, "acme-outfitters", "home")
    assert result.success
    assert metadata_of(result, "serving_index")["entries"] == 0


def _failing_generator(monkeypatch, fail_on):
    from bggen_assets.core import template_bg

    calls = {"n": 0}
    real = template_bg.TemplateGenerator.generate

    def flaky(self, jobs):
        calls["n"] += 1
        if fail_on(calls["n"]):
            raise RuntimeError("device lost")
        return real(self, jobs)

    monkeypatch.setattr(template_bg.TemplateGenerator, "generate", flaky)
    return real, calls


def test_a_transient_generation_failure_is_retried(pipeline_resources, monkeypatch):
    _, calls = _failing_generator(monkeypatch, lambda n: n == 3)
    result, _ = run_partition(pipeline_resources, "acme-outfitters", "bags")
    assert result.success and calls["n"] > 3
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    # the retry reused what the first attempt had stored
    assert metadata_of(result, "generated_backgrounds")["reused"] > 0


def test_failed_generation_loses_nothing_and_rerun_completes(pipeline_resources, monkeypatch):
    """A generator that keeps dying half-way: the step fails after its retries, every stored
    canvas is whole, and a later run completes the rest."""
    from bggen_assets.core import template_bg

    real, _ = _failing_generator(monkeypatch, lambda n: n >= 3)

    result, instance = run_partition(pipeline_resources, "acme-outfitters", "bags", raise_on_error=False)
    assert not result.success
    store = pipeline_resources["store"]
    made = list(store.list_keys("canvases"))
    assert made  # the batches before the failure are kept...
    for key in made:  # ...and every stored object is a whole, decodable PNG
        Image.open(io.BytesIO(store.get_bytes(key))).load()
    monkeypatch.setattr(template_bg.TemplateGenerator, "generate", real)
    again, _ = run_partition(pipeline_resources, "acme-outfitters", "bags", instance=instance)
    md = metadata_of(again, "generated_backgrounds")
    assert md["reused"] == len(made) and md["generated"] > 0


def test_concurrent_plans_of_one_partition_never_take_the_same_miss(footwear_run):
    from bggen_assets import steps
    from resources.metadata_db import Miss

    _, _, res = footwear_run
    store, queue = res["store"], res["miss_queue"]
    catalog = read_manifest(store, CatalogManifest, "catalog", "northwind", "footwear")
    masks = read_manifest(store, MaskManifest, "product_masks", "northwind", "footwear")
    pid = sorted(masks.products)[0]
    usable = Miss("northwind", "footwear", pid, "r1.2-t1-r7-b1-l7", "beach-sunset")
    stale_theme = Miss("northwind", "footwear", pid, "r1.2-t1-r7-b1-l7", "no-such-theme")
    queue.record(usable, now=100.0)
    queue.record(stale_theme, now=101.0)
    first = steps.plans_step(catalog, masks, res["creative_config"], queue, "northwind", "footwear", consumer="run:a")
    second = steps.plans_step(catalog, masks, res["creative_config"], queue, "northwind", "footwear", consumer="run:b")
    assert first.miss_keys == (usable.request_key,) and second.miss_keys == ()
    assert any(i.source == "miss" and i.bucket_id == usable.bucket_id for i in first.items)
    # a miss the plan cannot use goes back to the queue (the theme may be configured again)
    assert [m.request_key for m in queue.pending()] == [stale_theme.request_key]


def test_cover_bucketing_plans_fewer_canvases_and_serves_every_placement_exactly(pipeline_resources):
    from bggen_assets import steps
    from bggen_assets.core.compositing import canvas_pyramid, crop_placement
    from bggen_assets.core.manifests import GenerationManifest
    from resources.creative_config import CreativeConfig

    cfg = pipeline_resources["creative_config"]
    cover_cfg = CreativeConfig(**{**cfg.model_dump(), "bucketing": "cover"})
    res = {**pipeline_resources, "creative_config": cover_cfg}
    result, _ = run_partition(res, "northwind", "footwear")
    assert result.success
    store = res["store"]
    checks = checks_of(result)
    assert checks["product_fidelity"].passed and checks["product_fidelity"].metadata["max_abs_diff"].value == 0
    assert checks["index_complete"].passed
    plan = read_manifest(store, PlanManifest, "bucket_plans", "northwind", "footwear")
    assert plan.bucketing == "cover" and plan.bounds is not None
    assert all(i.bucket_id.startswith("c-") for i in plan.items)
    catalog = read_manifest(store, CatalogManifest, "catalog", "northwind", "footwear")
    masks = read_manifest(store, MaskManifest, "product_masks", "northwind", "footwear")
    grid = steps.plans_step(catalog, masks, cfg, res["miss_queue"], "northwind", "footwear")
    assert grid.bounds == plan.bounds  # one bar for both: the grid's worst case on the partition
    assert len(plan.items) < len(grid.items), (len(plan.items), len(grid.items))
    # replanning is stable: the published canvases are kept
    doc = serving_index.read_current(store, "northwind", "footwear")
    assert doc.bucketing == "cover" and doc.bounds == plan.bounds
    again = steps.plans_step(catalog, masks, cover_cfg, res["miss_queue"], "northwind", "footwear", previous=doc)
    assert {i.key for i in again.items} == {i.key for i in plan.items}
    # every configured placement in every theme is a hit, the exact crop of the canvas that serves it
    service = CreativeService(store, res["miss_queue"], cover_cfg, index_ttl_s=0.0)
    for pid in sorted(doc.products):
        _, _, bw, bh = doc.products[pid].bbox
        for placement in cover_cfg.placements("northwind"):
            for theme in doc.prompts:
                served = service.serve("northwind", pid, placement, theme, fmt="png")
                assert served.hit, (pid, placement, theme)
            entry = doc.entries[f"{pid}|{served.bucket_id}|{theme}"]
            canvas = Image.open(io.BytesIO(store.get_bytes(entry.image_key))).convert("RGB")
            got = np.asarray(Image.open(io.BytesIO(served.body)).convert("RGB"))
            placed = place_product(bw, bh, placement)
            assert np.array_equal(got, np.asarray(crop_placement(canvas_pyramid(canvas), entry.layout, placed)))
    assert res["miss_queue"].pending() == []
    gen = read_manifest(store, GenerationManifest, "generated_backgrounds", "northwind", "footwear")
    assert gen.generated == len(plan.items)
    # a miss queues the cover canvas it needs, for every theme of the category; the miss run plans
    # canvases for that product only
    from bggen_assets.core.geometry import Placement

    pid, unplanned = sorted(doc.products)[0], Placement(333, 222, 0.5, 0.1, 0.9)
    first = service.serve("northwind", pid, unplanned, "beach-sunset")
    assert not first.hit and first.bucket_id.startswith("c-")
    pending = res["miss_queue"].pending()
    assert sorted((m.bucket_id, m.prompt_id) for m in pending) == sorted((first.bucket_id, t) for t in doc.prompts)
    run_partition(res, "northwind", "footwear", selection=["bucket_plans", "generated_backgrounds", "serving_index"])
    second = service.serve("northwind", pid, unplanned, "beach-sunset")
    assert second.hit and res["miss_queue"].pending() == []
    replanned = read_manifest(store, PlanManifest, "bucket_plans", "northwind", "footwear")
    from_miss = [i for i in replanned.items if i.source == "miss"]
    assert from_miss and all(i.product_id == pid for i in from_miss)
    assert {i.prompt_id for i in from_miss} == set(doc.prompts)
    assert {i.key for i in plan.items} <= {i.key for i in replanned.items}  # stable: nothing replaced


def test_the_generator_receives_full_batches_except_at_most_one_per_shape(footwear_run):
    from bggen_assets import steps
    from bggen_assets.core.diffusion import generation_shape
    from bggen_assets.core.manifests import GenerationManifest
    from bggen_assets.core.template_bg import TemplateGenerator
    from resources.generator import GeneratorResource

    _, _, res = footwear_run
    store = res["store"]
    plans = read_manifest(store, PlanManifest, "bucket_plans", "northwind", "footwear")
    masks = read_manifest(store, MaskManifest, "product_masks", "northwind", "footwear")
    first = read_manifest(store, GenerationManifest, "generated_backgrounds", "northwind", "footwear")
    assert first.batches > 0 and 0 < first.batch_fill <= 1

    class RecordingTemplate(TemplateGenerator):  # the real template generator, under its own identity
        calls: list = []

        def identity(self) -> str:
            return "template-recording"  # new image keys: every planned canvas is generated again

        def generation_shape(self, w: int, h: int) -> tuple[int, int]:
            return generation_shape(w, h, 256 * 256, 2.0, 64)

        def generate(self, jobs):
            self.calls.append([self.generation_shape(j.canvas_rgb.shape[1], j.canvas_rgb.shape[0]) for j in jobs])
            return super().generate(jobs)

    class RecordingResource(GeneratorResource):
        def get(self):
            return generator

    generator = RecordingTemplate()
    resource = RecordingResource(batch_size=4)
    manifest = steps.generate_step(plans, masks, res["masker"], resource, store, res["metadata_db"])
    calls = generator.calls
    assert sum(map(len, calls)) == manifest.generated == len(plans.items)
    assert all(len(set(shapes)) == 1 for shapes in calls)  # one shape per call
    by_shape: dict = {}
    for shapes in calls:
        by_shape.setdefault(shapes[0], []).append(len(shapes))
    assert len(by_shape) > 1
    for shape, sizes in by_shape.items():
        assert sum(n < 4 for n in sizes) <= 1, (shape, sizes)
        assert all(1 <= n <= 4 for n in sizes)
    assert manifest.batches == len(calls)
    assert manifest.batch_fill == pytest.approx(manifest.generated / (4 * len(calls)))
    assert len(calls) <= len(plans.items) // 4 + len(by_shape)
