"""Placements and prompts config: parsing and validation; feeds are read by core/feed_formats.py
(re-exported here: FeedError, FeedRow, FEED_COLUMNS, read_feed).

A malformed file is an error that names the file (and the line and column where there is one), so
a merchant's feed team can fix it without reading our code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .feed_formats import FEED_COLUMNS, CategoryMapping, FeedError, FeedRow, FeedStream  # noqa: F401 (re-exported)
from .geometry import GeometryError, Placement
from .keys import InvalidName, check_name
from .template_bg import STYLES, TemplateStyleError, hex_rgb


class ConfigError(ValueError):
    """A malformed placements or prompts file."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    negative: str = ""
    style: str = "studio"
    palette: tuple[str, ...] = ()


def read_feed(path: Path, mapping: Optional[CategoryMapping] = None, skip_out_of_stock: bool = True) -> list[FeedRow]:
    """A feed file (any format feed_formats reads) -> its usable rows, in memory: for small feeds
    and tests; the pipeline streams feeds through core/feed_split.py instead."""
    stream = FeedStream(path, mapping or CategoryMapping(), skip_out_of_stock)
    return [r for r in stream if isinstance(r, FeedRow)]


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
