"""The typed documents between the layers: every one survives its JSON round trip, the documents
stored before the types existed are still read, and a version this code does not know is refused."""
import json

import pytest
from pydantic import ValidationError

from bggen_assets.core import serving_index
from bggen_assets.core.feeds import Prompt
from bggen_assets.core.geometry import CanvasLayout
from bggen_assets.core.covers import CoverBounds
from bggen_assets.core.manifests import (
    CanvasBounds,
    CatalogManifest,
    CatalogProduct,
    FidelityFailure,
    FidelityReport,
    GateFailure,
    GateStats,
    GenerationManifest,
    IndexDocument,
    IndexEntry,
    IndexPointer,
    IndexProduct,
    IndexPublication,
    MaskInfo,
    MaskManifest,
    PlanItem,
    PlanManifest,
    Rejection,
    UnsupportedSchemaVersion,
    item_key,
)
from bggen_assets.core.store import ObjectNotFound, ObjectStore

BUCKET = "r1.2-t1-r7-b1-l7"
COVER_CANVAS = "c-t125-r3400-b125-l3400"
BOUNDS = CanvasBounds(area=1.7658, stretch=1.21, max_aspect=2.0)


def catalog() -> CatalogManifest:
    return CatalogManifest(
        merchant="northwind", category="footwear", snapshot_key="catalog/northwind/footwear/ab.parquet",
        products=[CatalogProduct(product_id="NO-1", title="Runner", category="footwear", subcategory="sneakers",
                                 colour="red", image_uri="../images/a.jpg", image_hash="a" * 64)],
        rejected=[Rejection(product_id="NO-BAD", line=4, reason="image file not found: x.jpg")])


def masks() -> MaskManifest:
    return MaskManifest(
        masker_id="classical-c4",
        products={"NO-1": MaskInfo(image_hash="a" * 64, mask_key="masks/aa/m.png", cutout_key="cutouts/aa/c.png",
                                   bbox=(10, 20, 300, 200), image_size=(480, 480), method="classical", score=0.93,
                                   reason="", coverage=0.26)},
        rejected=[Rejection(product_id="NO-BAD", line=4, reason="missing"),
                  Rejection(product_id="NO-FULL", reason="fills the frame")],
        reused=0, computed=1)


def plan() -> PlanManifest:
    return PlanManifest(
        merchant="northwind", category="footwear", bucket_ratio=1.2, canvas_pixels=120_000,
        prompts=[Prompt("beach-sunset", "a beach at sunset", "text", "outdoor", ("#ff8800", "#223344"))],
        placements=["300x250", "728x90"],
        items=[PlanItem(product_id="NO-1", bucket_id=BUCKET, prompt_id="beach-sunset", canvas=(512, 256),
                        product_box=(40, 30, 300, 200), source="miss")],
        requests=2, miss_keys=["k1"], planned_at=1700000000.5)


def cover_plan() -> PlanManifest:
    cover_item = PlanItem(product_id="NO-1", bucket_id=COVER_CANVAS, prompt_id="beach-sunset", canvas=(600, 200),
                          product_box=(260, 10, 80, 180), source="placement")
    return plan().model_copy(update={"bucketing": "cover", "bounds": BOUNDS, "items": (*plan().items, cover_item)})


def generation() -> GenerationManifest:
    key = item_key("NO-1", BUCKET, "beach-sunset")
    return GenerationManifest(generator_id="template-v3", images={key: "canvases/ab/abc.png"}, generated=1, reused=0,

                              gates=GateStats(gated=1, retried=1,
                                              failed=[GateFailure(item=key, reasons=["object expansion 0.2"])]))


def index_document() -> IndexDocument:
    return IndexDocument(
        merchant="northwind", category="footwear", bucket_ratio=1.2, canvas_pixels=120_000, generator_id="template-v3",
        prompts=["beach-sunset", "urban-concrete"],
        products={"NO-1": IndexProduct(bbox=(10, 20, 300, 200), cutout_key="cutouts/aa/c.png", image_hash="a" * 64,
                                       title="Runner", subcategory="sneakers", colour="red")},
        entries={item_key("NO-1", BUCKET, "beach-sunset"): IndexEntry(image_key="canvases/ab/abc.png", canvas=(512, 256),
                                                                      product_box=(40, 30, 300, 200))},
        version=3, published_at=1700000001.0)


DOCUMENTS = [catalog(), masks(), plan(), cover_plan(), generation(),
             generation().model_copy(update={"batches": 3, "batch_fill": 0.75}), index_document(),
             IndexPointer(version=3, key="index/northwind/footwear/v000003-abc.json", entries=1),
             IndexPublication(version=3, key="index/northwind/footwear/v000003-abc.json", entries=1, misses_served=2)]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda d: type(d).__name__)
def test_every_document_survives_its_json_round_trip(doc):
    raw = doc.to_json()
    back = type(doc).from_json(raw)
    assert back == doc
    assert back.to_json() == raw
    assert json.loads(raw)["schema_version"] == type(doc).SCHEMA_VERSION
    assert type(doc).from_dict(doc.to_dict()) == doc


def test_report_values_round_trip_as_plain_json():
    report = FidelityReport(checked=3, max_abs_diff=1, failures=[
        FidelityFailure(product_id="NO-1", bucket_id=BUCKET, prompt_id="beach-sunset", max_diff=1)])
    assert FidelityReport.model_validate_json(report.model_dump_json()) == report


def test_item_keys_and_layouts_come_from_the_documents():
    item = plan().items[0]
    assert item.key == "NO-1|r1.2-t1-r7-b1-l7|beach-sunset" == item_key(item.product_id, item.bucket_id, item.prompt_id)
    assert item.layout == CanvasLayout(512, 256, 40, 30, 300, 200)
    doc = index_document()
    assert doc.entry("NO-1", BUCKET, "beach-sunset").layout == item.layout
    assert doc.has_entry("NO-1", BUCKET, "beach-sunset") and not doc.has_entry("NO-1", BUCKET, "urban-concrete")
    assert doc.entry("NO-2", BUCKET, "beach-sunset") is None
    assert plan().prompt("beach-sunset").palette == ("#ff8800", "#223344")
    with pytest.raises(KeyError, match="no prompt 'disco'"):
        plan().prompt("disco")


def test_documents_are_immutable_and_refuse_unknown_fields():
    doc = index_document()
    with pytest.raises(ValidationError):
        doc.version = 4
    raw = doc.to_dict()
    raw["entries"][item_key("NO-1", BUCKET, "beach-sunset")]["pad"] = "x"
    with pytest.raises(ValidationError, match="pad"):
        IndexDocument.from_dict(raw)
    with pytest.raises(ValidationError, match="source"):
        PlanManifest.from_dict({**plan().to_dict(), "items": [{**plan().to_dict()["items"][0], "source": "guess"}]})


# A serving index document exactly as the code before the typed documents published it.
FORMAT_1_INDEX = {
    "format": 1, "merchant": "northwind", "category": "footwear", "bucket_ratio": 1.2, "canvas_pixels": 120000,
    "generator_id": "template-v3", "prompts": ["beach-sunset", "urban-concrete"],
    "products": {"NO-1": {"bbox": [10, 20, 300, 200], "cutout_key": "cutouts/aa/c.png", "image_hash": "a" * 64,
                          "title": "Runner", "subcategory": "sneakers", "colour": "red"}},
    "entries": {"NO-1|r1.2-t1-r7-b1-l7|beach-sunset": {"image_key": "canvases/ab/abc.png", "canvas": [512, 256],
                                                       "product_box": [40, 30, 300, 200]}},
    "version": 3, "published_at": 1700000001.0,
}


def test_an_index_document_of_format_1_is_read_and_upgraded():
    doc = IndexDocument.from_json(json.dumps(FORMAT_1_INDEX, sort_keys=True))
    assert doc == index_document()
    assert doc.entry("NO-1", BUCKET, "beach-sunset").canvas == (512, 256)
    written = json.loads(doc.to_json())
    assert written["schema_version"] == IndexDocument.SCHEMA_VERSION == 3 and "format" not in written
    assert doc.bucketing == "grid" and doc.bounds is None  # the grid, looked up by its own bucket only


def cover_index() -> IndexDocument:
    entry = IndexEntry(image_key="canvases/cd/cde.png", canvas=(600, 200), product_box=(260, 10, 80, 180))
    doc = index_document()
    return doc.model_copy(update={"bucketing": "cover", "bounds": BOUNDS,
                                  "entries": {**doc.entries, item_key("NO-1", COVER_CANVAS, "beach-sunset"): entry}})


def test_an_index_document_of_version_2_is_read_as_a_grid_index_without_bounds():
    v2 = {**index_document().to_dict(), "schema_version": 2}
    del v2["bucketing"], v2["bounds"]
    doc = IndexDocument.from_json(json.dumps(v2))
    assert doc == index_document() and doc.bucketing == "grid" and doc.bounds is None
    assert json.loads(doc.to_json())["schema_version"] == 3


def test_a_version_3_index_carries_its_bucketing_and_bounds():
    doc = cover_index()
    raw = json.loads(doc.to_json())
    assert raw["bucketing"] == "cover" and raw["bounds"] == {"area": 1.7658, "stretch": 1.21, "max_aspect": 2.0}
    back = IndexDocument.from_json(doc.to_json())
    assert back.bounds.cover_bounds() == CoverBounds(1.7658, 1.21, 2.0)
    with pytest.raises(ValidationError, match="bucketing"):
        IndexDocument.from_dict({**raw, "bucketing": "hexagons"})


def test_a_plan_of_version_1_is_read_as_a_grid_plan():
    v1 = {**cover_plan().to_dict(), "schema_version": 1}
    del v1["bucketing"], v1["bounds"]
    back = PlanManifest.from_dict(v1)
    assert back.bucketing == "grid" and back.bounds is None and back.items == cover_plan().items
    assert PlanManifest.from_json(cover_plan().to_json()).bounds == BOUNDS


def test_bounds_below_one_are_refused_when_used():
    with pytest.raises(ValueError, match="cover bounds must all be >= 1"):
        CanvasBounds(area=0.9, stretch=1.0, max_aspect=2.0).cover_bounds()


@pytest.mark.parametrize("version", [4, 99, 0, "2"])
def test_an_index_document_of_an_unknown_version_is_refused_naming_the_versions(version):
    raw = {**index_document().to_dict(), "schema_version": version}
    with pytest.raises(UnsupportedSchemaVersion) as err:
        IndexDocument.from_json(json.dumps(raw))
    assert str(err.value) == f"IndexDocument of schema version {version!r}: this code reads versions 1..3"


def test_an_index_document_naming_no_version_is_refused():
    raw = {k: v for k, v in FORMAT_1_INDEX.items() if k != "format"}
    with pytest.raises(UnsupportedSchemaVersion, match="names no schema_version; this code reads versions 1..3"):
        IndexDocument.from_dict(raw)
    with pytest.raises(UnsupportedSchemaVersion, match="schema version 7: this code reads versions 1..3"):
        IndexDocument.from_dict({**raw, "format": 7})


def test_a_newer_manifest_is_refused():
    with pytest.raises(UnsupportedSchemaVersion, match=r"^PlanManifest of schema version 3: this code reads versions 1..2$"):
        PlanManifest.from_dict({**plan().to_dict(), "schema_version": 3})


def test_not_json_or_not_an_object_is_a_clear_error():
    with pytest.raises(json.JSONDecodeError, match="MaskManifest: the stored document is not JSON: Expecting"):
        MaskManifest.from_json(b"{half")
    with pytest.raises(ValueError, match="IndexPointer: the stored document is a JSON list, not an object"):
        IndexPointer.from_json(b"[1, 2]")


# Manifests as the IO manager stored them before they were typed: json.dumps of plain dicts.
UNTYPED_MANIFESTS = {
    CatalogManifest: {"merchant": "northwind", "category": "footwear",
                      "snapshot_key": "catalog/northwind/footwear/ab.parquet",
                      "products": [{"product_id": "NO-1", "title": "Runner", "category": "footwear",
                                    "subcategory": "sneakers", "colour": "red", "image_uri": "../images/a.jpg",
                                    "image_hash": "a" * 64}],
                      "rejected": [{"product_id": "NO-BAD", "line": 4, "reason": "image file not found: x.jpg"}]},
    MaskManifest: {"masker_id": "classical-c4",
                   "products": {"NO-1": {"image_hash": "a" * 64, "mask_key": "masks/aa/m.png",
                                         "cutout_key": "cutouts/aa/c.png", "bbox": [10, 20, 300, 200],
                                         "image_size": [480, 480], "method": "classical", "score": 0.93, "reason": "",
                                         "coverage": 0.26}},
                   "rejected": [{"product_id": "NO-BAD", "line": 4, "reason": "missing"},
                                {"product_id": "NO-FULL", "reason": "fills the frame"}],
                   "reused": 0, "computed": 1},
    PlanManifest: {"merchant": "northwind", "category": "footwear", "bucket_ratio": 1.2, "canvas_pixels": 120000,
                   "prompts": [{"id": "beach-sunset", "text": "a beach at sunset", "negative": "text",
                                "style": "outdoor", "palette": ["#ff8800", "#223344"]}],
                   "placements": ["300x250", "728x90"],
                   "items": [{"product_id": "NO-1", "bucket_id": BUCKET, "prompt_id": "beach-sunset",
                              "canvas": [512, 256], "product_box": [40, 30, 300, 200], "source": "miss"}],
                   "requests": 2, "miss_keys": ["k1"], "planned_at": 1700000000.5},
    GenerationManifest: {"generator_id": "template-v3", "images": {item_key("NO-1", BUCKET, "beach-sunset"): "canvases/ab/abc.png"},
                         "generated": 1, "reused": 0,
                         "gates": {"gated": 1, "retried": 1, "failed": [{"item": item_key("NO-1", BUCKET, "beach-sunset"),
                                                                         "reasons": ["object expansion 0.2"]}]}},
}


@pytest.mark.parametrize("kind", list(UNTYPED_MANIFESTS), ids=lambda k: k.__name__)
def test_manifests_stored_before_the_types_are_read_as_version_1(kind):
    expected = {CatalogManifest: catalog(), MaskManifest: masks(), PlanManifest: plan(),
                GenerationManifest: generation()}[kind]
    assert kind.from_json(json.dumps(UNTYPED_MANIFESTS[kind], sort_keys=True)) == expected
    assert IndexPointer.from_json(b'{"version": 3, "key": "index/n/f/v000003-abc.json", "entries": 1}').version == 3


def test_publish_writes_the_version_then_flips_the_pointer(tmp_path):
    from resources.object_store import LocalObjectStore

    store = LocalObjectStore(root=str(tmp_path))
    assert isinstance(store, ObjectStore)  # the resource satisfies core's protocol
    assert serving_index.read_pointer(store, "northwind", "footwear") is None
    assert serving_index.categories(store, "northwind") == []
    draft = index_document().model_copy(update={"version": None, "published_at": None})
    first = serving_index.publish(store, draft, now=lambda: 5.0)
    second = serving_index.publish(store, draft, now=lambda: 6.0)
    assert (first.version, second.version, second.entries) == (1, 2, 1)
    assert second.key.startswith("index/northwind/footwear/v000002-") and store.exists(first.key)
    assert serving_index.read_pointer(store, "northwind", "footwear") == second
    doc = serving_index.read_current(store, "northwind", "footwear")
    assert (doc.version, doc.published_at) == (2, 6.0)
    assert doc.model_copy(update={"version": None, "published_at": None}) == draft
    assert serving_index.pointer_key("northwind", "footwear") == "index/northwind/footwear/current.json"
    serving_index.publish(store, draft.model_copy(update={"category": "bags"}))
    store.put_bytes("index/northwind/footwear/notes/current.json", b"{}")  # not a partition's pointer
    assert serving_index.categories(store, "northwind") == ["bags", "footwear"]
    assert serving_index.categories(store, "north") == []  # a merchant whose name is a prefix of another
    assert sorted(serving_index.published_partitions(store)) == [("northwind", "bags"), ("northwind", "footwear")]
    with pytest.raises(ObjectNotFound):
        store.get_bytes("index/northwind/shoes/current.json")


def test_a_mask_manifest_of_version_1_is_read_as_holding_nothing_back():
    v1 = {**masks().to_dict(), "schema_version": 1}
    for field in ("min_confidence", "held_back", "held_back_sheet"):
        del v1[field]
    back = MaskManifest.from_dict(v1)
    assert back.held_back == {} and back.min_confidence == 0.0 and back.held_back_sheet is None
    assert back.products == masks().products and back.products["NO-1"].confidence == 0.93
    held = MaskManifest(**{**masks().model_dump(exclude={"schema_version"}), "min_confidence": 0.95, "products": {},
                           "held_back": masks().model_dump()["products"], "held_back_sheet": "checks/n/f/s.png"})
    assert MaskManifest.from_json(held.to_json()) == held and held.schema_version == 2
