"""Merchant catalog feeds (CSV or Parquet), placements and prompts config: parsing and validation.

A malformed feed is an error that names the file, the line and the column, so a merchant's feed
team can fix it without reading our code.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .geometry import GeometryError, Placement
from .keys import InvalidName, check_name
from .template_bg import STYLES, TemplateStyleError, hex_rgb

FEED_COLUMNS = ("product_id", "title", "category", "subcategory", "colour", "image_uri")
REQUIRED = ("product_id", "category", "image_uri")
MAX_FIELD = {"product_id": 128, "title": 512, "category": 64, "subcategory": 128, "colour": 64, "image_uri": 1024}


class FeedError(ValueError):
    """A malformed feed: the message names file, line and column."""


class ConfigError(ValueError):
    """A malformed placements or prompts file."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    negative: str = ""
    style: str = "studio"
    palette: tuple[str, ...] = ()


@dataclass
class FeedRow:
    line: int
    product_id: str
    title: str
    category: str
    subcategory: str
    colour: str
    image_uri: str
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in FEED_COLUMNS}


def _check_row(path: str, line: int, values: dict[str, str]) -> FeedRow:
    for col in REQUIRED:
        if not (values.get(col) or "").strip():
            raise FeedError(f"{path}:{line}: column '{col}' is empty")
    for col, limit in MAX_FIELD.items():
        if len(values.get(col) or "") > limit:
            raise FeedError(f"{path}:{line}: column '{col}' is longer than {limit} characters")
    pid = values["product_id"].strip()
    if any(ord(ch) < 32 for ch in pid):
        raise FeedError(f"{path}:{line}: column 'product_id' has control characters")
    category = values["category"].strip().lower()
    try:
        check_name("category", category)
    except InvalidName as exc:
        raise FeedError(f"{path}:{line}: column 'category': {exc}") from None
    return FeedRow(
        line=line,
        product_id=pid,
        title=(values.get("title") or "").strip(),
        category=category,
        subcategory=(values.get("subcategory") or "").strip().lower(),
        colour=(values.get("colour") or "").strip().lower(),
        image_uri=values["image_uri"].strip(),
    )


def parse_feed_csv(text: str, path: str) -> list[FeedRow]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise FeedError(f"{path}:1: the feed is empty (expected a header: {', '.join(FEED_COLUMNS)})") from None
    except csv.Error as exc:
        raise FeedError(f"{path}:1: {exc}") from None
    header = [h.strip().lower() for h in header]
    for col in REQUIRED:
        if col not in header:
            raise FeedError(f"{path}:1: header is missing column '{col}' (expected {', '.join(FEED_COLUMNS)})")
    rows, seen = [], {}
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise FeedError(f"{path}:{reader.line_num}: {exc}") from None
        line = reader.line_num
        if not record or all(not v.strip() for v in record):
            continue
        if len(record) != len(header):
            col = header[len(record)] if len(record) < len(header) else f"#{len(record)} (beyond the header)"
            raise FeedError(f"{path}:{line}: column {col}: expected {len(header)} fields, found {len(record)}")
        row = _check_row(path, line, dict(zip(header, record)))
        if row.product_id in seen:
            raise FeedError(f"{path}:{line}: column 'product_id': duplicate id {row.product_id!r} (first on line {seen[row.product_id]})")
        seen[row.product_id] = line
        rows.append(row)
    return rows


def read_feed(path: Path) -> list[FeedRow]:
    """CSV (utf-8) or Parquet feed -> validated rows."""
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise FeedError(f"{path}: not a readable Parquet file: {exc}") from None
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise FeedError(f"{path}: missing column(s) {', '.join(missing)}")
        rows, seen = [], {}
        for i, rec in enumerate(frame.fillna("").astype(str).to_dict("records"), start=1):
            row = _check_row(str(path), i, rec)  # Parquet "line" = 1-based row number
            if row.product_id in seen:
                raise FeedError(f"{path}:{i}: column 'product_id': duplicate id {row.product_id!r}")
            seen[row.product_id] = i
            rows.append(row)
        return rows
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise FeedError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from None
    return parse_feed_csv(text, str(path))


def _parse_size(value: Any, where: str) -> tuple[int, int]:
    try:
        w, h = str(value).lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise ConfigError(f"{where}: size must look like 300x250, got {value!r}") from None


def parse_placements(doc: Any, where: str) -> dict[str, list[Placement]]:
    """{"default": [...], "merchants": {name: [...]}} -> placements per merchant (+ "default")."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping with 'default' and/or 'merchants'")
    out: dict[str, list[Placement]] = {}

    def parse_list(items: Any, ctx: str) -> list[Placement]:
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{ctx}: expected a non-empty list of placements")
        result = []
        for i, item in enumerate(items):
            c = f"{ctx}[{i}]"
            if not isinstance(item, dict) or "size" not in item:
                raise ConfigError(f"{c}: expected a mapping with 'size' (and optional fill, anchor)")
            w, h = _parse_size(item["size"], c)
            anchor = item.get("anchor", [0.5, 0.5])
            try:
                result.append(Placement(w, h, float(item.get("fill", 0.8)), float(anchor[0]), float(anchor[1])))
            except (GeometryError, TypeError, IndexError, ValueError) as exc:
                raise ConfigError(f"{c}: {exc}") from None
        return sorted(set(result))

    if "default" in doc:
        out["default"] = parse_list(doc["default"], f"{where}: default")
    for name, items in (doc.get("merchants") or {}).items():
        try:
            check_name("merchant", name)
        except InvalidName as exc:
            raise ConfigError(f"{where}: merchants: {exc}") from None
        out[name] = parse_list(items, f"{where}: merchants.{name}")
    return out


def parse_prompts(doc: Any, where: str, max_per_category: int = 10) -> dict[str, list[Prompt]]:
    """{"categories": {category: [{id, text, negative, template: {style, palette}}]}}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("categories"), dict):
        raise ConfigError(f"{where}: expected a mapping with 'categories'")
    out: dict[str, list[Prompt]] = {}
    for category, items in doc["categories"].items():
        ctx = f"{where}: categories.{category}"
        try:
            check_name("category", category)
        except InvalidName as exc:
            raise ConfigError(f"{ctx}: {exc}") from None
        if not isinstance(items, list) or not 1 <= len(items) <= max_per_category:
            raise ConfigError(f"{ctx}: expected 1 to {max_per_category} prompts")
        prompts, ids = [], set()
        for i, item in enumerate(items):
            c = f"{ctx}[{i}]"
            if not isinstance(item, dict) or not item.get("id") or not item.get("text"):
                raise ConfigError(f"{c}: each prompt needs 'id' and 'text'")
            try:
                pid = check_name("prompt", str(item["id"]))
            except InvalidName as exc:
                raise ConfigError(f"{c}: {exc}") from None
            if pid in ids:
                raise ConfigError(f"{c}: duplicate prompt id {pid!r}")
            ids.add(pid)
            tpl = item.get("template") or {}
            style = tpl.get("style", "studio")
            if style not in STYLES:
                raise ConfigError(f"{c}: unknown template style {style!r} (known: {', '.join(STYLES)})")
            palette = tuple(tpl.get("palette", ()))
            try:
                [hex_rgb(p) for p in palette]
            except TemplateStyleError as exc:
                raise ConfigError(f"{c}: {exc}") from None
            prompts.append(Prompt(pid, str(item["text"]), str(item.get("negative", "")), style, palette))
        out[category] = prompts
    return out


def load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
