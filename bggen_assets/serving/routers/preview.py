"""``GET /preview`` (the HTML grid of a product's creatives) and ``GET /preview/image`` (one cell).

The page itself is rendered by :mod:`..preview`; previews record no impression and queue no miss.
"""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response

from ...core.geometry import Placement
from ..creative import FORMATS, NotFound
from ..http import BadRequest, ImageFormat, PlacementParams, ProductParams, check_size
from ..preview import preview_placements, render_preview
from ..state import ServingState, serving_state

router = APIRouter(tags=["preview"])
MAX_EXTRA_SIZES = 20


def extra_sizes(sizes: Optional[str]) -> list[Placement]:
    """``400x300,1000x150`` -> placements of those sizes with Placement's default fill and anchor."""
    out = []
    for wh in (sizes.split(",") if sizes else []):
        w, h = (int(v) for v in wh.split("x"))
        try:
            check_size(w, h)
        except BadRequest as exc:
            raise BadRequest(f"sizes: {wh}: {exc}") from None
        out.append(Placement(w, h))
    return out


@router.get("/preview", response_class=HTMLResponse, summary="HTML grid of a product's creatives (placements x themes)")
def preview(state: Annotated[ServingState, Depends(serving_state)], ids: ProductParams,
            sizes: Optional[str] = Query(None, max_length=400,
                                         pattern=rf"^\d{{1,4}}x\d{{1,4}}(,\d{{1,4}}x\d{{1,4}}){{0,{MAX_EXTRA_SIZES - 1}}}$",
                                         description=f"extra placements to try, e.g. 400x300,1000x150 (at most {MAX_EXTRA_SIZES})")):
    category, doc = state.service.find_product(ids.merchant, ids.product)
    placements = preview_placements(state.creative_config, ids.merchant) + extra_sizes(sizes)
    page, hits, misses = render_preview(ids.merchant, category, ids.product, doc, list(dict.fromkeys(placements)))
    return HTMLResponse(page, headers={"X-Preview-Hits": str(hits), "X-Preview-Misses": str(misses),
                                       "Cache-Control": "no-store"})


@router.get("/preview/image", response_class=Response, summary="One preview cell (no impression, no miss queued)")
def preview_image(state: Annotated[ServingState, Depends(serving_state)], fmt: ImageFormat, ids: ProductParams,
                  query: PlacementParams, theme: Optional[str] = Query(None, min_length=1, max_length=64)):
    service, merchant, product = state.service, ids.merchant, ids.product
    category, doc = service.find_product(merchant, product)
    placement = query.placement(service.default_placement(merchant, query.width, query.height))
    if theme is None:
        body, bucket_id = state.positioned(doc, product, placement, fmt)
        hit = True
    else:
        if theme not in doc.prompts:
            raise NotFound(f"unknown theme {theme!r} for category {category!r}; known: {', '.join(doc.prompts)}")
        c = service.serve(merchant, product, placement, prompt_id=theme, fmt=fmt, record_miss=False)
        body, bucket_id, hit = c.body, c.bucket_id, c.hit
    return Response(body, media_type=FORMATS[fmt], headers={
        "X-Bucket": bucket_id, "X-Cache": "hit" if hit else "miss", "X-Theme": theme or "none",
        "Cache-Control": "no-store"})
