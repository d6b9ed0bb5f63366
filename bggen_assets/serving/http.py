"""The HTTP pieces every router shares: limits, errors and their answers, content negotiation,
and the parsing of a product and a placement from the query string.

Every error is answered as ``{"error": "<parameter>: <what is wrong>"}`` (plus ``details`` for
FastAPI's validation errors) by the handlers :func:`install_error_handlers` registers once on the
app; routers raise :class:`BadRequest`, :class:`NotAcceptable` or
:class:`~bggen_assets.serving.creative.NotFound` and never build an error response themselves.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.geometry import GeometryError, Placement
from ..core import keys
from ..core.keys import InvalidName, check_name
from .creative import NotFound

log = logging.getLogger("bggen.serving")

MIN_SIDE, MAX_SIDE = 8, 4096
MAX_PIXELS = 4096 * 2048
#: bytes of query string answered 414 before any parsing (see QueryLimit)
MAX_QUERY = 2048
IMPRESSION_RE = r"^[0-9a-f]{32}$"
LABEL_RE = r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,31}$"
ANCHORS = {
    "center": (0.5, 0.5), "centre": (0.5, 0.5), "top": (0.5, 0.0), "bottom": (0.5, 1.0), "left": (0.0, 0.5),
    "right": (1.0, 0.5), "top-left": (0.0, 0.0), "top-right": (1.0, 0.0), "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}


class BadRequest(ValueError):
    """A request parameter that is well-formed but not acceptable (answered 400)."""


class NotAcceptable(ValueError):
    """An Accept header that allows no image format we produce (answered 406)."""


# ------------------------------------------------------------------------------- parsing
def parse_anchor(value: Optional[str]) -> Optional[tuple[float, float]]:
    """``'ax,ay'`` in [0, 1]² or a named anchor (``top-left``, ...); None when absent."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in ANCHORS:
        return ANCHORS[v]
    parts = v.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        ax, ay = float(parts[0]), float(parts[1])
    except ValueError:
        raise BadRequest(f"anchor must be 'ax,ay' with both in [0, 1] or one of {', '.join(ANCHORS)}; got {value!r}") from None
    if not (0.0 <= ax <= 1.0 and 0.0 <= ay <= 1.0):
        raise BadRequest(f"anchor values must be in [0, 1], got {value!r}")
    return ax, ay


def negotiate(accept: Optional[str]) -> str:
    """'jpeg' or 'webp' from an Accept header (highest q wins; ties and no header: JPEG)."""
    if not accept:
        return "jpeg"
    best, best_q = None, 0.0
    for part in accept.split(",")[:32]:
        fields = part.strip().split(";")
        media = fields[0].strip().lower()
        q = 1.0
        for p in fields[1:]:
            p = p.strip()
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        for fmt, mt, spec in (("jpeg", "image/jpeg", 3), ("webp", "image/webp", 3), ("jpeg", "image/*", 1),
                              ("jpeg", "*/*", 0)):
            if media == mt and q > 0:
                # an exact type beats a wildcard of the same q; WebP only when asked for by name
                score = q + spec * 1e-3 + (1e-4 if fmt == "webp" else 0.0)
                if score > best_q:
                    best, best_q = fmt, score
    if best is None:
        raise NotAcceptable(f"Accept {accept[:200]!r} allows neither image/jpeg nor image/webp")
    return best


def check_size(width: int, height: int) -> None:
    """Each side in MIN_SIDE..MAX_SIDE and at most MAX_PIXELS in all (FastAPI checks the sides of
    declared query parameters; this is for sizes parsed from free text, and for the area)."""
    for name, v in (("width", width), ("height", height)):
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise BadRequest(f"{name} must be in {MIN_SIDE}..{MAX_SIDE} px, got {v}")
    if width * height > MAX_PIXELS:
        raise BadRequest(f"width x height must be at most {MAX_PIXELS} pixels, got {width}x{height}")


def check_product_id(product: str) -> None:
    try:
        keys.check_product_id(product)  # the rule the feed applies too
    except keys.InvalidProductId as exc:
        raise BadRequest(str(exc)) from None


# ------------------------------------------------------------------------------- query dependencies
@dataclass(frozen=True)
class ProductQuery:
    """``merchant`` and ``product`` of a request, both checked against their name rules."""

    merchant: str
    product: str


def product_query(merchant: str = Query(..., min_length=1, max_length=64, description="merchant name"),
                  product: str = Query(..., min_length=1, max_length=128, description="product id")) -> ProductQuery:
    try:
        check_name("merchant", merchant)
    except InvalidName as exc:
        raise BadRequest(str(exc)) from None
    check_product_id(product)
    return ProductQuery(merchant, product)


@dataclass(frozen=True)
class PlacementQuery:
    """The placement a request asks for: size always, fill and anchor where given."""

    width: int
    height: int
    fill: Optional[float] = None
    anchor: Optional[tuple[float, float]] = None

    def placement(self, default: Placement) -> Placement:
        """This query over ``default`` (the merchant's configured placement for the size): what
        the query leaves out comes from it."""
        ax, ay = self.anchor if self.anchor is not None else (default.anchor_x, default.anchor_y)
        try:
            return Placement(self.width, self.height, default.fill if self.fill is None else self.fill, ax, ay)
        except GeometryError as exc:
            raise BadRequest(str(exc)) from None


def placement_query(
    width: int = Query(..., ge=MIN_SIDE, le=MAX_SIDE),
    height: int = Query(..., ge=MIN_SIDE, le=MAX_SIDE),
    fill: Optional[float] = Query(None, gt=0.0, le=1.0, description="fraction of the limiting side the product fills"),
    anchor: Optional[str] = Query(None, max_length=32,
                                  description="'ax,ay' in [0,1]^2 or center|top|bottom|left|right|top-left|..."),
) -> PlacementQuery:
    """The one place a placement is read from a query (``/creative`` and ``/preview/image``)."""
    check_size(width, height)
    return PlacementQuery(width, height, fill, parse_anchor(anchor))


def accepted_format(request: Request) -> str:
    """The image format the request's Accept header prefers ('jpeg' or 'webp'), else 406."""
    return negotiate(request.headers.get("accept"))


ProductParams = Annotated[ProductQuery, Depends(product_query)]
PlacementParams = Annotated[PlacementQuery, Depends(placement_query)]
ImageFormat = Annotated[str, Depends(accepted_format)]


# ------------------------------------------------------------------------------- errors
def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors as one readable line (400), the details kept."""
    problems = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body"))
        problems.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return error_response(400, "; ".join(problems), details=[{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                                                             for e in exc.errors()])


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # unknown route, wrong method
    return error_response(exc.status_code, str(exc.detail))


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    return error_response(400, str(exc))


async def _not_acceptable(request: Request, exc: NotAcceptable) -> JSONResponse:
    return error_response(406, str(exc))


async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
    return error_response(404, str(exc.args[0]) if exc.args else "not found")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered with no internals (no message, no path)."""
    log.exception("unhandled error on %s", request.url.path)
    return error_response(500, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Every error answer of the API, registered once."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    for bad in (BadRequest, GeometryError, InvalidName):
        app.add_exception_handler(bad, _bad_request)
    app.add_exception_handler(NotAcceptable, _not_acceptable)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Exception, _unexpected)


class QueryLimit:
    """Pure ASGI middleware: a query string over `max_bytes` is answered 414 before any parsing."""

    def __init__(self, app, max_bytes: int = MAX_QUERY):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and len(scope.get("query_string", b"")) > self.max_bytes:
            resp = error_response(414, f"query string longer than {self.max_bytes} bytes")
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)
