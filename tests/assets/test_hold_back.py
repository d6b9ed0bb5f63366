"""Hold-back of low-confidence masks, for real: the partition's graph runs with a threshold above
one product's mask confidence; that product is neither planned nor generated nor served, and the
product_masks check mask_confidence lists it (a warning) with a contact sheet in the store."""
from pathlib import Path

import pytest

from bggen_assets import steps
from bggen_assets.core import serving_index
from bggen_assets.core.image_io import decode_png
from bggen_assets.core.manifests import CatalogManifest, MaskManifest, PlanManifest
from bggen_assets.serving.creative import CreativeService, NotFound
from pipeline_helpers import check_status_by_partition, checks_of, metadata_of, read_manifest, run_partition
from resources.masker import MaskerResource


def test_a_mask_below_the_threshold_is_held_back_and_shown(pipeline_resources):
    store, db = pipeline_resources["store"], pipeline_resources["metadata_db"]
    first, instance = run_partition(pipeline_resources, "northwind", "footwear")
    masks = read_manifest(store, MaskManifest, "product_masks", "northwind", "footwear")
    # the sample catalog's masks all pass the default threshold: nothing held back, the check passes
    assert masks.min_confidence == MaskerResource().min_confidence == 0.5
    assert not masks.held_back and masks.held_back_sheet is None
    check = checks_of(first)["mask_confidence"]
    assert check.passed and check.metadata["held_back"].value == 0 and "contact_sheet" not in check.metadata

    # a threshold between the lowest confidence and the next: exactly that product is held back
    by_confidence = sorted(masks.products.items(), key=lambda kv: kv[1].confidence)
    (low_pid, low), (_, nxt) = by_confidence[0], by_confidence[1]
    assert low.confidence < nxt.confidence
    threshold = round((low.confidence + nxt.confidence) / 2, 6)
    strict = {**pipeline_resources, "masker": MaskerResource(min_confidence=threshold)}
    result, _ = run_partition(strict, "northwind", "footwear", instance=instance)
    assert result.success  # the run goes on without it
    masks = read_manifest(store, MaskManifest, "product_masks", "northwind", "footwear")
    assert set(masks.held_back) == {low_pid} and low_pid not in masks.products
    assert masks.held_back[low_pid].confidence == low.confidence and masks.min_confidence == threshold
    assert metadata_of(result, "product_masks")["held_back"] == 1
    assert metadata_of(result, "product_masks")["computed"] == 0  # the threshold re-masks nothing

    plans = read_manifest(store, PlanManifest, "bucket_plans", "northwind", "footwear")
    assert plans.items and all(i.product_id != low_pid for i in plans.items)
    doc = serving_index.read_current(store, "northwind", "footwear")
    assert low_pid not in doc.products and set(doc.products) == set(masks.products)
    service = CreativeService(store, pipeline_resources["miss_queue"], pipeline_resources["creative_config"])
    placement = pipeline_resources["creative_config"].placements("northwind")[0]
    with pytest.raises(NotFound, match=f"unknown product {low_pid!r}"):  # as any product masking refused
        service.serve("northwind", low_pid, placement)
    assert service.serve("northwind", by_confidence[1][0], placement).hit

    check = checks_of(result)["mask_confidence"]
    assert not check.passed and check.severity.value == "WARN"
    md = {k: v.value for k, v in check.metadata.items()}
    assert md["held_back"] == 1 and md["min_confidence"] == threshold
    assert md["held_back_products"] == [{"product_id": low_pid, "confidence": round(low.confidence, 3),
                                         "method": low.method}]
    # where a person finds the sheet: a file path on the local store, an s3:// URL on S3
    location = md["contact_sheet"]
    assert location == steps.object_location(store, masks.held_back_sheet)
    sheet = decode_png(store.get_bytes(masks.held_back_sheet))
    if location.startswith("s3://"):
        assert location.endswith("/" + masks.held_back_sheet)
    else:
        assert Path(location).read_bytes() == store.get_bytes(masks.held_back_sheet)
    assert sheet.shape[0] >= 220 and sheet.shape[1] > 500
    # the overlay's magenta tint is on the sheet: the mask drawn over the photo
    tint = (sheet[:, :, 0] > 150) & (sheet[:, :, 1] < 150) & (sheet[:, :, 2] > 120)
    assert tint.sum() > 500
    assert check_status_by_partition(instance, "product_masks", "mask_confidence") == {
        ("northwind", "footwear"): "FAILED"}

    # the sheet is stored once: the same hold-back again reuses it
    again = steps.masks_step(read_manifest(store, CatalogManifest, "catalog", "northwind", "footwear"),
                             MaskerResource(min_confidence=threshold), store, db)
    assert again.held_back_sheet == masks.held_back_sheet


def test_the_threshold_is_checked():
    from resources.masker import MaskerConfigError

    with pytest.raises(MaskerConfigError, match=r"masker min_confidence must be in \[0, 1\], got 1.5"):
        MaskerResource(min_confidence=1.5).identity()
    assert MaskerResource(min_confidence=0.9).identity() == MaskerResource().identity()  # not part of the id


def test_the_sheet_link_names_the_object_where_a_person_finds_it(tmp_path):
    from dagster_aws.s3 import S3Resource

    from resources.object_store import LocalObjectStore, S3ObjectStore

    key = "checks/northwind/footwear/held-back-ab.png"
    local = LocalObjectStore(root=str(tmp_path / "objects"))
    assert steps.object_location(local, key) == str((tmp_path / "objects").resolve() / key)
    s3 = S3Resource(endpoint_url="http://127.0.0.1:1")  # describe() never connects
    assert steps.object_location(S3ObjectStore(bucket="bg", prefix="prod/", s3=s3), key) == f"s3://bg/prod/{key}"
    assert steps.object_location(S3ObjectStore(bucket="bg", s3=s3), key) == f"s3://bg/{key}"
