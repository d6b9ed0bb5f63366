"""``GET /creative``: the creative for one impression, its theme chosen by the A/B variant."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ..creative import FORMATS
from ..http import LABEL_RE, ImageFormat, PlacementParams, ProductParams
from ..personalize import assign_variant, build_features, device_from_user_agent, features_json, user_hash
from ..state import ServingState, serving_state

router = APIRouter(tags=["creative"])


@dataclass(frozen=True)
class Audience:
    """Who sees the impression: the user context of the query (all optional)."""

    country: Optional[str]
    region: Optional[str]
    gender: Optional[str]
    device: Optional[str]
    user_id: Optional[str]


def audience(
    country: Optional[str] = Query(None, pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2"),
    region: Optional[str] = Query(None, pattern=LABEL_RE),
    gender: Optional[str] = Query(None, pattern=LABEL_RE),
    device: Optional[str] = Query(None, pattern=LABEL_RE, description="mobile|desktop|tablet (else from User-Agent)"),
    user_id: Optional[str] = Query(None, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$"),
) -> Audience:
    return Audience(country, region, gender, device, user_id)


@router.get("/creative", summary="The creative for one impression",
            response_class=Response,
            responses={200: {"content": {"image/jpeg": {}, "image/webp": {}},
                             "description": "the image; headers X-Impression-Id, X-Variant, X-Theme, X-Policy, X-Bucket, X-Cache, X-Propensity (the probability of the theme)"},
                       400: {"description": "bad parameter"}, 404: {"description": "unknown merchant or product"},
                       406: {"description": "Accept allows no image format we produce"}})
def creative(
    request: Request,
    state: Annotated[ServingState, Depends(serving_state)],
    fmt: ImageFormat,
    ids: ProductParams,
    query: PlacementParams,
    user: Annotated[Audience, Depends(audience)],
) -> Response:
    service, merchant, product, user_id = state.service, ids.merchant, ids.product, user.user_id
    width, height = query.width, query.height
    category, doc = service.find_product(merchant, product)
    placement = query.placement(service.default_placement(merchant, width, height))
    impression_id = secrets.token_hex(16)
    variant = assign_variant(user_id or impression_id, state.personalizer.config)
    info = doc.products[product]
    features = build_features(country=user.country, region=user.region, gender=user.gender,
                              device=user.device or device_from_user_agent(request.headers.get("user-agent")),
                              subcategory=info.subcategory, colour=info.colour, width=width, height=height)
    arms = doc.prompts
    choice = state.personalizer.choose(variant, merchant, category, arms, doc.products, features)
    if variant == "control":
        body, hit, bucket_id, theme = state.control(doc, product, width, height, fmt), True, "none", "none"
    elif variant == "positioned":
        body, bucket_id = state.positioned(doc, product, placement, fmt)
        hit, theme = True, "none"
    else:
        c = service.serve(merchant, product, placement, prompt_id=choice.theme, fmt=fmt, user=user_hash(user_id))
        body, hit, bucket_id, theme = c.body, c.hit, c.bucket_id, c.prompt_id
        state.personalizer.record_impression(choice, merchant, category, arms, doc.products, hit)
    state.served["hit" if hit else "miss"] += 1
    state.impressions.add({
        "impression_id": impression_id, "ts": time.time(), "merchant": merchant, "category": category,
        "product_id": product, "variant": variant, "theme": theme, "policy": choice.policy,
        "bucket_id": bucket_id, "hit": hit, "width": width, "height": height,
        "user_hash": user_hash(user_id), "context": features_json(features),
        "propensity": choice.propensity, "source": "served",
    })
    return Response(body, media_type=FORMATS[fmt], headers={
        "X-Impression-Id": impression_id, "X-Variant": variant, "X-Theme": theme, "X-Policy": choice.policy,
        "X-Bucket": bucket_id, "X-Cache": "hit" if hit else "miss", "Cache-Control": "private, no-store",
        "X-Propensity": "none" if choice.propensity is None else f"{choice.propensity:.6g}",
        "Vary": "Accept"})
