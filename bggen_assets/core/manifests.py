"""The documents the layers hand each other: one typed definition each.

The pipeline's assets pass small manifests (keys, boxes, counts; never pixels) from step to step:
catalog -> masks -> plan -> generation -> the serving index document, which serving replicas read.
Each is an immutable pydantic model with ``to_json`` / ``from_json`` and a ``schema_version``
written into every stored document. Reading a document of an older version upgrades it step by
step to the current one; a version this code does not know (newer, or never defined) is refused
with :class:`UnsupportedSchemaVersion`, naming the version found and the versions supported.
"""
from __future__ import annotations

import json
from typing import Any, Callable, ClassVar, Literal, Mapping, Optional, Self

from pydantic import BaseModel, ConfigDict, computed_field

from .covers import CoverBounds
from .feeds import Prompt
from .geometry import CanvasLayout

Box = tuple[int, int, int, int]  # (x, y, w, h), top-left origin
Size = tuple[int, int]  # (width, height)


class UnsupportedSchemaVersion(ValueError):
    """A stored document whose schema version this code cannot read."""


def item_key(product_id: str, bucket_id: str, prompt_id: str) -> str:
    """The key of one (product, bucket, prompt) canvas in the plan, the generation and the index."""
    return f"{product_id}|{bucket_id}|{prompt_id}"


class Value(BaseModel):
    """A part of a document: immutable, and no field this code does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Document(Value):
    """A document stored on its own (a manifest, the index, its pointer), with a schema version."""

    SCHEMA_VERSION: ClassVar[int] = 1
    #: UPGRADES[v] turns the dict of a version-v document into the dict of version v + 1
    UPGRADES: ClassVar[Mapping[int, Callable[[dict], dict]]] = {}
    #: the version of a stored dict that names none (written before the documents were typed and
    #: of the same shape as version 1); None: such a dict is refused
    UNVERSIONED: ClassVar[Optional[int]] = 1

    @computed_field
    @property
    def schema_version(self) -> int:
        return self.SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def oldest_supported(cls) -> int:
        return min(cls.UPGRADES, default=cls.SCHEMA_VERSION)

    @classmethod
    def _stored_version(cls, data: dict) -> object:
        """Pop and return the version the stored dict declares."""
        if "schema_version" in data:
            return data.pop("schema_version")
        if cls.UNVERSIONED is None:
            raise UnsupportedSchemaVersion(f"{cls.__name__}: the document names no schema_version; this code reads "
                                           f"versions {cls.oldest_supported()}..{cls.SCHEMA_VERSION}")
        return cls.UNVERSIONED

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        data = dict(data)
        found = cls._stored_version(data)
        oldest = cls.oldest_supported()
        if type(found) is not int or not oldest <= found <= cls.SCHEMA_VERSION:
            raise UnsupportedSchemaVersion(f"{cls.__name__} of schema version {found!r}: this code reads versions "
                                           f"{oldest}..{cls.SCHEMA_VERSION}")
        for version in range(found, cls.SCHEMA_VERSION):
            data = cls.UPGRADES[version](data)
        return cls.model_validate(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:  # same type, with the document named
            raise json.JSONDecodeError(f"{cls.__name__}: the stored document is not JSON: {exc.msg}", exc.doc,
                                       exc.pos) from None
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: the stored document is a JSON {type(data).__name__}, not an object")
        return cls.from_dict(data)


class Rejection(Value):
    """A product left out, and why (``line``: the feed line, for rows the catalog refused)."""

    product_id: str
    reason: str
    line: Optional[int] = None
    file: Optional[str] = None  # the feed file, for rows the catalog refused


# -- catalog -------------------------------------------------------------------------------------
class CatalogProduct(Value):
    """A usable feed row (the feed's columns) with the content hash of its image in the store."""

    product_id: str
    title: str
    category: str
    subcategory: str
    colour: str
    image_uri: str
    image_hash: str


class CatalogManifest(Document):
    merchant: str
    category: str
    snapshot_key: str  # the partition's rows as Parquet
    products: tuple[CatalogProduct, ...]
    rejected: tuple[Rejection, ...]
    feed_format: str = ""  # as detected from the content (feed_formats.FeedStream.format)
    out_of_stock: int = 0  # rows skipped as out of stock (not rejected)
    images_fetched: int = 0  # downloaded (or read from a local file) this run
    images_reused: int = 0  # unchanged since the last download (HTTP 304), not downloaded again
    images_failed: int = 0

    @property
    def rejected_fraction(self) -> float:
        total = len(self.products) + len(self.rejected)
        return len(self.rejected) / total if total else 0.0


# -- masks ---------------------------------------------------------------------------------------
class MaskInfo(Value):
    """One product's mask: stored once per image hash and masker."""

    image_hash: str
    mask_key: str
    cutout_key: str
    bbox: Box  # tight box of the product in the source image
    image_size: Size
    method: str
    score: float  # the masker's confidence in [0, 1] (MaskResult.score): what hold-back compares
    reason: str
    coverage: float  # fraction of the image the mask covers

    @property
    def confidence(self) -> float:
        return self.score


def _add_hold_back(data: dict) -> dict:
    # Version 1 held nothing back: every usable mask was in products.
    return {**data, "min_confidence": 0.0, "held_back": {}, "held_back_sheet": None}


class MaskManifest(Document):
    """A partition's masks. ``products`` are the masks the rest of the pipeline uses; a mask whose
    confidence is below ``min_confidence`` is in ``held_back`` instead (never planned, generated
    or indexed), with a contact sheet of them (``held_back_sheet``, an object key) for a person
    to look at. Version 2 added the hold-back."""

    SCHEMA_VERSION: ClassVar[int] = 2
    UPGRADES: ClassVar[Mapping[int, Callable[[dict], dict]]] = {1: _add_hold_back}

    masker_id: str
    products: dict[str, MaskInfo]  # product id -> its mask
    rejected: tuple[Rejection, ...]  # the catalog's rejections, then the products masking refused
    reused: int
    computed: int
    min_confidence: float = 0.0  # the threshold this run held back below
    held_back: dict[str, MaskInfo] = {}  # product id -> its mask, confidence below min_confidence
    held_back_sheet: Optional[str] = None  # object key of the held-back masks' contact sheet (PNG)


# -- plan ----------------------------------------------------------------------------------------
Bucketing = Literal["grid", "cover"]  # the paper's log grid, or canvases chosen freely (core/covers.py)
BUCKETING_MODES: tuple[str, ...] = ("grid", "cover")


class CanvasBounds(Value):
    """What serving a placement from a bigger canvas may cost it (covers.CoverBounds): the area
    ratio, the stretch beyond the model's aspect cap, and that cap. Measured on the partition's
    products and placements as the grid's own worst case (covers.grid_bounds), in either mode."""

    area: float
    stretch: float
    max_aspect: float

    @classmethod
    def of(cls, bounds: CoverBounds) -> "CanvasBounds":
        return cls(area=bounds.area, stretch=bounds.stretch, max_aspect=bounds.max_aspect)

    def cover_bounds(self) -> CoverBounds:
        return CoverBounds(self.area, self.stretch, self.max_aspect).check()


def _add_grid_bucketing(data: dict) -> dict:
    # Documents written before covers existed were all planned on the grid, with no bounds (so
    # serving looks their canvases up by the request's own grid bucket only).
    return {**data, "bucketing": "grid", "bounds": None}


class PlanItem(Value):
    """One canvas to generate: a product on a bucket's canvas, in one theme."""

    product_id: str
    bucket_id: str
    prompt_id: str
    canvas: Size
    product_box: Box  # where the product sits on the canvas
    source: Literal["placement", "miss"]  # planned for a configured placement, or for a served miss

    @property
    def key(self) -> str:
        return item_key(self.product_id, self.bucket_id, self.prompt_id)

    @property
    def layout(self) -> CanvasLayout:
        return CanvasLayout(*self.canvas, *self.product_box)


class PlanManifest(Document):
    SCHEMA_VERSION: ClassVar[int] = 2
    UPGRADES: ClassVar[Mapping[int, Callable[[dict], dict]]] = {1: _add_grid_bucketing}

    merchant: str
    category: str
    bucket_ratio: float
    canvas_pixels: int
    bucketing: Bucketing = "grid"
    bounds: Optional[CanvasBounds] = None  # plans_step always measures them; None in plans of version 1
    prompts: tuple[Prompt, ...]
    placements: tuple[str, ...]  # placement ids
    items: tuple[PlanItem, ...]  # sorted by key, one per key
    requests: int  # placement x prompt requests the items serve
    miss_keys: tuple[str, ...]  # the claimed misses this plan covers
    planned_at: float
    prompt_set: str = ""  # the prompts file's set used ("default": the category has none of its own)

    def prompt(self, prompt_id: str) -> Prompt:
        for p in self.prompts:
            if p.id == prompt_id:
                return p
        raise KeyError(f"plan of {self.merchant}/{self.category} has no prompt {prompt_id!r}")


# -- generation ----------------------------------------------------------------------------------
class GateFailure(Value):
    item: str  # item_key of the canvas
    reasons: tuple[str, ...]


class GateStats(Value):
    gated: int = 0  # canvases the quality gates checked
    retried: int = 0  # of those, regenerated at least once
    failed: tuple[GateFailure, ...] = ()  # no attempt passed: the best one was kept


class GenerationManifest(Document):
    generator_id: str
    images: dict[str, str]  # item_key -> canvas key in the store
    generated: int
    reused: int
    gates: GateStats
    batches: int = 0  # generate() calls
    batch_fill: float = 0.0  # mean of (jobs in a call / batch size) over the calls; 0 when none ran


class FidelityFailure(Value):
    product_id: str
    bucket_id: str
    prompt_id: str
    max_diff: int


class FidelityReport(Value):
    """Product fidelity after cut-back on a sample of canvases (the check's metadata)."""

    checked: int
    max_abs_diff: int
    failures: tuple[FidelityFailure, ...]


# -- serving index -------------------------------------------------------------------------------
class IndexProduct(Value):
    bbox: Box
    cutout_key: str
    image_hash: str
    title: str = ""
    subcategory: str = ""
    colour: str = ""


class IndexEntry(Value):
    image_key: str
    canvas: Size
    product_box: Box

    @property
    def layout(self) -> CanvasLayout:
        return CanvasLayout(*self.canvas, *self.product_box)


def _index_v1_to_v2(data: dict) -> dict:
    # Version 1 ("format": 1) had today's fields; version 2 names its version like every other
    # document ("schema_version"), which _stored_version has already read.
    return data


class IndexDocument(Document):
    """One partition's published index: (product, bucket, prompt) -> canvas, plus the products.

    Version 3 names its bucketing and the bounds within which any canvas of a product may serve a
    request (containment, core/covers.py); an older index has no bounds and serves a request only
    from its own grid bucket."""

    SCHEMA_VERSION: ClassVar[int] = 3
    UPGRADES: ClassVar[Mapping[int, Callable[[dict], dict]]] = {1: _index_v1_to_v2, 2: _add_grid_bucketing}
    UNVERSIONED: ClassVar[Optional[int]] = None  # every index document ever written names its version

    merchant: str
    category: str
    bucket_ratio: float
    canvas_pixels: int
    bucketing: Bucketing = "grid"
    bounds: Optional[CanvasBounds] = None  # None: serve a request from its own grid bucket only
    generator_id: str
    prompts: tuple[str, ...]  # theme ids, the default first
    products: dict[str, IndexProduct]
    entries: dict[str, IndexEntry]  # item_key -> canvas
    version: Optional[int] = None  # set when published
    published_at: Optional[float] = None

    @classmethod
    def _stored_version(cls, data: dict) -> object:
        if "schema_version" not in data and "format" in data:
            return data.pop("format")  # version 1 called it "format"
        return super()._stored_version(data)

    def entry(self, product_id: str, bucket_id: str, prompt_id: str) -> Optional[IndexEntry]:
        return self.entries.get(item_key(product_id, bucket_id, prompt_id))

    def has_entry(self, product_id: str, bucket_id: str, prompt_id: str) -> bool:
        return item_key(product_id, bucket_id, prompt_id) in self.entries


class IndexPointer(Document):
    """``current.json`` of a partition: the live version of its index."""

    version: int
    key: str  # the IndexDocument's object key
    entries: int


class IndexPublication(IndexPointer):
    """What publishing a partition's index did (the serving_index asset's value)."""

    misses_served: int  # recorded misses this version answers
