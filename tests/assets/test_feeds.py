"""Merchant feeds as merchants have them: Google Merchant Center TSV / XML (RSS, Atom), Meta CSV,
the project's CSV with BOM + CRLF, gzip; written here, parsed, and run through the pipeline to a
served creative (on the backend the pass chooses)."""
import gzip
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
import yaml

from bggen_assets.core import serving_index
from bggen_assets.core.feed_formats import CategoryMapping, FeedError, FeedRow, FeedStream, RowRejection, slug
from bggen_assets.core.manifests import CatalogManifest, PlanManifest
from bggen_assets.serving.creative import CreativeService
from bggen_assets.steps import resolve_image_uri
from image_server import image_server  # noqa: F401 (fixture)
from pipeline_helpers import checks_of, metadata_of, read_manifest, run_partition
from resources.creative_config import CreativeConfig
from sensors.catalog import feed_fingerprints

GMC_COLUMNS = ["id", "title", "description", "link", "image_link", "availability", "price", "product_type",
               "google_product_category", "brand", "color"]
SHOES = "Apparel & Accessories > Shoes > Sneakers"


# -- writing feeds ---------------------------------------------------------------------------------
def gmc_rows(images: list[str]) -> list[dict]:
    rows = [{"id": f"SKU-{i}", "title": f"Runner {i}", "description": "A shoe", "link": f"https://shop.test/p/{i}",
             "image_link": img, "availability": "in_stock", "price": "59.00 EUR", "product_type": SHOES,
             "google_product_category": "187", "brand": "Acme", "color": "Red"} for i, img in enumerate(images, 1)]
    rows.append({**rows[0], "id": "SKU-OOS", "availability": "out_of_stock"})
    rows.append({**rows[0], "id": "café"})  # an id the API could not serve
    return rows


def write_delimited(path: Path, columns: list[str], rows: list[dict], sep: str, newline: str = "\n",
                    bom: bool = False) -> None:
    text = newline.join([sep.join(columns)] + [sep.join(r.get(c, "") for c in columns) for r in rows]) + newline
    data = ("\ufeff" if bom else "").encode() + text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _items(rows: list[dict], tag: str, link) -> str:
    return "".join(f"<{tag}><title>{escape(r['title'])}</title>{link(escape(r['link']))}"
                   + "".join(f"<g:{k}>{escape(v)}</g:{k}>" for k, v in r.items() if k not in ("title", "link"))
                   + f"</{tag}>\n" for r in rows)


def rss(rows: list[dict]) -> str:
    items = _items(rows, "item", lambda url: f"<link>{url}</link>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">'
            f"<channel><title>Shop</title>\n{items}</channel></rss>\n")


def atom(rows: list[dict]) -> str:
    entries = _items(rows, "entry", lambda url: f'<link href="{url}"/>')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom" '
            f'xmlns:g="http://base.google.com/ns/1.0"><title>Shop</title>\n{entries}</feed>\n')


@pytest.fixture
def shop(tmp_path, sample_dir):
    """A feeds dir with two product photos under it, and a prompts file with a 'default' set."""
    feeds = tmp_path / "feeds"
    (feeds / "img").mkdir(parents=True)
    for name in ("NO-0001.jpg", "NO-0004.jpg"):
        shutil.copy(sample_dir / "feeds" / "images" / "northwind" / name, feeds / "img" / name)
    prompts = yaml.safe_load((sample_dir / "prompts.yaml").read_text())
    prompts["categories"]["default"] = prompts["categories"]["footwear"][:2]
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(prompts))
    return feeds


def config(feeds: Path, tmp_path: Path, **kw) -> CreativeConfig:
    return CreativeConfig(feeds_dir=str(feeds), prompts_path=str(tmp_path / "prompts.yaml"),
                          split_cache_dir=str(tmp_path / "splits"), **kw)


LOCAL_IMAGES = ["img/NO-0001.jpg", "img/NO-0004.jpg"]


def write_format(fmt: str, feeds: Path, server=None) -> tuple[str, str]:
    """Write merchant 'shop's feed in `fmt`; returns (category, expected format name)."""
    rows = gmc_rows(LOCAL_IMAGES)
    if fmt == "gmc-tsv":
        write_delimited(feeds / "shop.txt", GMC_COLUMNS, rows, "\t")
        return "apparel-accessories", "google-merchant-center-tsv"
    if fmt == "gmc-xml-http":
        server.images.update({"/a.jpg": (feeds / "img" / "NO-0001.jpg").read_bytes(),
                              "/b.jpg": (feeds / "img" / "NO-0004.jpg").read_bytes()})
        rows = gmc_rows([server.url("/a.jpg"), server.url("/b.jpg")])
        (feeds / "shop.xml").write_text(rss(rows))
        return "apparel-accessories", "google-merchant-center-xml"
    if fmt == "gmc-atom-gz":
        (feeds / "shop.xml.gz").write_bytes(gzip.compress(atom(rows).encode()))
        return "apparel-accessories", "google-merchant-center-xml"
    if fmt == "meta-csv":
        meta = [{**r, "availability": r["availability"].replace("_", " "), "product_type": "Shoes",
                 "fb_product_category": "clothing & accessories > shoes"} for r in rows]
        write_delimited(feeds / "shop.csv", GMC_COLUMNS + ["fb_product_category"], meta, ",")
        (feeds / "shop.mapping.yaml").write_text(yaml.safe_dump({"categories": {"Shoes": "footwear"}}))
        return "footwear", "meta-csv"
    if fmt == "bggen-bom-crlf-gz":
        own = [{"product_id": r["id"], "title": r["title"], "category": "footwear", "subcategory": "sneakers",
                "colour": "red", "image_uri": r["image_link"]} for r in rows if r["availability"] == "in_stock"]
        write_delimited(feeds / "shop.csv.gz", ["product_id", "title", "category", "subcategory", "colour", "image_uri"],
                        own, ",", newline="\r\n", bom=True)
        return "footwear", "bggen-csv"
    raise AssertionError(fmt)


# -- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["gmc-tsv", "gmc-atom-gz", "meta-csv", "bggen-bom-crlf-gz"])
def test_each_format_is_detected_by_content_with_its_rows_and_rejections(fmt, shop, tmp_path):
    category, expected = write_format(fmt, shop)
    cfg = config(shop, tmp_path)
    split = cfg.feed_split("shop")
    assert split.format == expected
    rows = list(split.rows(category))
    assert [r.product_id for r in rows] == ["SKU-1", "SKU-2"] and rows[0].image_uri == "img/NO-0001.jpg"
    summary = split.categories[category]
    if fmt != "bggen-bom-crlf-gz":
        assert rows[0].subcategory == ("" if fmt == "meta-csv" else "shoes") and rows[0].colour == "red"
        assert summary.out_of_stock == 1  # skipped, counted
        [bad] = list(split.rejections(category))
        assert bad.product_id == "café" and bad.line == (6 if "atom" in fmt else 5) and "is not allowed" in bad.reason
        assert bad.file.endswith(next(p.name for p in shop.iterdir() if p.name.startswith("shop.") and "mapping" not in p.name))


def test_out_of_stock_rows_are_kept_when_configured(shop, tmp_path):
    write_format("gmc-tsv", shop)
    split = config(shop, tmp_path, skip_out_of_stock=False).feed_split("shop")
    assert [r.product_id for r in split.rows("apparel-accessories")] == ["SKU-1", "SKU-2", "SKU-OOS"]


def test_bad_rows_are_rejected_alone_with_line_and_reason(tmp_path):
    feed = tmp_path / "m.tsv"
    rows = [dict(zip(GMC_COLUMNS, ["A-1", "Ok", "", "", "img/a.jpg", "in_stock", "", SHOES, "", "", ""])),
            dict(zip(GMC_COLUMNS, ["a/b/c", "Slashes", "", "", "img/a.jpg", "in_stock", "", SHOES, "", "", ""])),
            dict(zip(GMC_COLUMNS, ["A-1", "Again", "", "", "img/b.jpg", "in_stock", "", SHOES, "", "", ""])),
            dict(zip(GMC_COLUMNS, ["A-2", "No image", "", "", "", "in_stock", "", SHOES, "", "", ""])),
            dict(zip(GMC_COLUMNS, ["A-3", "No category", "", "", "img/a.jpg", "in_stock", "", "", "", "", ""])),
            dict(zip(GMC_COLUMNS, ["A-4", "FTP", "", "", "ftp://x/a.jpg", "in_stock", "", SHOES, "", "", ""])),
            dict(zip(GMC_COLUMNS, ["A-5", "Fine", "", "", "https://cdn.test/a.jpg", "in stock", "", SHOES, "", "", ""]))]
    write_delimited(feed, GMC_COLUMNS, rows, "\t")
    parsed = list(FeedStream(feed))
    good = [p.product_id for p in parsed if isinstance(p, FeedRow)]
    bad = {p.line: p.reason for p in parsed if isinstance(p, RowRejection)}
    assert good == ["A-1", "A-5"]
    assert "is not allowed" in bad[3] and "duplicate id 'A-1'" in bad[4] and "column 'image_link' is empty" in bad[5]
    assert "'product_type' and 'google_product_category' are empty" in bad[6] and "scheme 'ftp'" in bad[7]


def test_mapping_file_maps_prefixes_and_slugs_the_rest():
    mapping = CategoryMapping.from_doc({"categories": {"Apparel & Accessories > Shoes": "footwear"},
                                        "prompts": {"footwear": "footwear"}}, "m.yaml")
    assert mapping.resolve(SHOES) == ("footwear", "sneakers")
    assert mapping.resolve("Apparel & Accessories > Handbags") == ("apparel-accessories", "handbags")
    assert slug("Maison & Jardin") == "maison-jardin" and slug("Électronique") == "electronique"
    with pytest.raises(FeedError, match="categories"):
        CategoryMapping.from_doc({"categories": {"Shoes": "Not A Name"}}, "m.yaml")


@pytest.mark.parametrize("data, message", [
    ("id\timage_link\tproduct_type\nA\tx.jpg\tShoes\n".encode("utf-16"), "UTF-16-encoded"),
    (b"id\timage_link\tproduct_type\nA\tx.jpg\tChaussures \xe9t\xe9\n", ":2: not valid UTF-8"),
    (b"sku,picture\nA,x.jpg\n", "header is missing column 'product_id' (bggen CSV) or 'id' and 'image_link'"),
    (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><rss><channel></channel></rss>', "entity declarations"),
    (b"<rss><channel><item><g:id>1</item></channel></rss>", "not well-formed XML"),
])
def test_a_file_that_is_no_feed_is_an_error_naming_the_file(tmp_path, data, message):
    path = tmp_path / "m.txt"
    path.write_bytes(data)
    with pytest.raises(FeedError, match="m.txt") as exc:
        list(FeedStream(path))
    assert message in str(exc.value)


def test_a_stray_file_is_reported_and_skipped_alone(shop, tmp_path, sample_dir):
    write_format("gmc-tsv", shop)
    shutil.copy(sample_dir / "feeds" / "northwind.csv", shop / "Crlf (copy).csv")
    (shop / "notes.pdf").write_bytes(b"%PDF-1.4")
    (shop / "broken.xml").write_bytes(b"<rss><channel><item>")
    prints, errors = feed_fingerprints(config(shop, tmp_path))
    assert list(prints) == [("shop", "apparel-accessories")]
    assert any("Crlf (copy).csv: feed file name" in e for e in errors) and any("notes.pdf: not a feed" in e for e in errors)
    assert any("broken.xml" in e and "not well-formed" in e for e in errors)


def test_a_local_image_outside_the_feeds_directory_is_refused(tmp_path):
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    assert resolve_image_uri("img/a.jpg", feeds) == (feeds / "img" / "a.jpg").resolve()
    for uri in ("../secret.jpg", "/etc/passwd", "file:///etc/passwd", "img/../../x.jpg"):
        with pytest.raises(ValueError, match="outside the feeds directory"):
            resolve_image_uri(uri, feeds)


# -- through the pipeline --------------------------------------------------------------------------
def resources_for(pipeline_resources, cfg):
    return {**pipeline_resources, "creative_config": cfg}


@pytest.fixture
def shop_config(shop, tmp_path, sample_dir):
    def make(**kw):
        return CreativeConfig(feeds_dir=str(shop), placements_path=str(sample_dir / "placements.yaml"),
                              prompts_path=str(tmp_path / "prompts.yaml"), split_cache_dir=str(tmp_path / "splits"),
                              canvas_pixels=120_000, fetch={"allow_networks": "127.0.0.0/8", "retries": 1,
                                                            "backoff_s": 0.01}, **kw)
    return make


def served(res, product_id: str):
    cfg = res["creative_config"]
    placement = cfg.placements("shop")[0]
    service = CreativeService(res["store"], res["miss_queue"], cfg)
    return service.serve("shop", product_id, placement)


@pytest.mark.parametrize("fmt", ["gmc-tsv", "gmc-xml-http", "gmc-atom-gz", "meta-csv", "bggen-bom-crlf-gz"])
def test_each_format_goes_through_the_pipeline_to_a_served_creative(fmt, shop, shop_config, pipeline_resources,
                                                                   image_server):
    category, _ = write_format(fmt, shop, image_server)
    res = resources_for(pipeline_resources, shop_config())
    result, _ = run_partition(res, "shop", category)
    assert result.success
    catalog = read_manifest(res["store"], CatalogManifest, "catalog", "shop", category)
    assert [p.product_id for p in catalog.products] == ["SKU-1", "SKU-2"] and catalog.images_fetched == 2
    plan = read_manifest(res["store"], PlanManifest, "bucket_plans", "shop", category)
    assert plan.prompt_set == ("default" if category == "apparel-accessories" else "footwear")  # reported fallback
    assert metadata_of(result, "bucket_plans")["prompt_set"] == plan.prompt_set
    creative = served(res, "SKU-2")
    assert creative.hit and creative.body[:3] == b"\xff\xd8\xff"  # a JPEG, from the published index
    if fmt == "gmc-xml-http":  # the second run revalidates: 304, nothing downloaded again
        result, _ = run_partition(res, "shop", category)
        again = read_manifest(res["store"], CatalogManifest, "catalog", "shop", category)
        assert (again.images_fetched, again.images_reused) == (0, 2)
        assert image_server.full_bodies["/a.jpg"] == 1 and image_server.hits["/a.jpg"] == 2


def test_a_mass_failure_fails_the_blocking_check_and_keeps_the_last_index(shop, shop_config, pipeline_resources):
    category, _ = write_format("gmc-tsv", shop)
    res = resources_for(pipeline_resources, shop_config())
    assert run_partition(res, "shop", category)[0].success
    before = serving_index.read_pointer(res["store"], "shop", category)
    (shop / "img").rename(shop / "img-moved")  # the image directory briefly missing
    result, _ = run_partition(res, "shop", category, raise_on_error=False)
    assert not result.success
    check = checks_of(result)["catalog_not_mass_rejected"]
    assert not check.passed and check.metadata["rejected_fraction"].value == 1.0
    assert serving_index.read_pointer(res["store"], "shop", category) == before  # not unpublished
    assert served(res, "SKU-1").hit


def test_product_ids_compare_byte_exact_and_titles_keep_unicode(metadata_db):
    row = {"merchant": "shop", "category": "footwear", "subcategory": "", "colour": "", "image_uri": "img/a.jpg",
           "image_hash": None, "status": "ok", "reason": ""}
    metadata_db.upsert_products([{**row, "product_id": "ABC", "title": "Café crème"},
                                 {**row, "product_id": "abc", "title": "Ünïcode 👟"}])
    rows = {r["product_id"]: r["title"] for r in metadata_db.product_rows("shop")}
    assert rows == {"ABC": "Café crème", "abc": "Ünïcode 👟"}


def test_a_meta_xml_feed_is_told_apart_by_its_meta_only_attributes(tmp_path):
    rows = [{**r, "availability": r["availability"].replace("_", " "), "fb_product_category": "shoes"}
            for r in gmc_rows(LOCAL_IMAGES)]
    path = tmp_path / "meta.xml"
    path.write_text(rss(rows))
    stream = FeedStream(path)
    parsed = list(stream)
    assert stream.format == "meta-xml" and stream.out_of_stock == {"apparel-accessories": 1}
    assert [p.product_id for p in parsed if isinstance(p, FeedRow)] == ["SKU-1", "SKU-2"]


def test_an_unreachable_image_link_rejects_its_row_alone(shop, shop_config, pipeline_resources, image_server):
    image_server.images["/a.jpg"] = (shop / "img" / "NO-0001.jpg").read_bytes()
    image_server.images["/b.jpg"] = (shop / "img" / "NO-0004.jpg").read_bytes()
    rows = gmc_rows([image_server.url("/a.jpg"), image_server.url("/b.jpg"), image_server.url("/gone.jpg")])
    (shop / "shop.xml").write_text(rss(rows))
    res = resources_for(pipeline_resources, shop_config())
    result, _ = run_partition(res, "shop", "apparel-accessories")
    assert result.success  # 2 of 4 rows rejected: not a mass failure
    catalog = read_manifest(res["store"], CatalogManifest, "catalog", "shop", "apparel-accessories")
    assert [p.product_id for p in catalog.products] == ["SKU-1", "SKU-2"] and catalog.images_failed == 1
    reasons = {r.product_id: r.reason for r in catalog.rejected}
    assert reasons["SKU-3"] == f"{image_server.url('/gone.jpg')}: HTTP 404" and "is not allowed" in reasons["café"]
    assert {r["product_id"]: r["status"] for r in res["metadata_db"].product_rows("shop")}["SKU-3"] == "rejected"
