"""The preview page: a product's creatives for every placement x theme, for a merchant to look at
before a campaign goes live.

GET /preview?merchant=..&product=..  renders an HTML grid, one row per placement of the merchant
(its configured placements, else a standard set), one column per theme of the product's category
(its prompts in the published index) plus the positioned-product fallback. A cell whose bucket
canvas is in the index shows the creative (hit); a cell without one is marked MISS and shows the
fallback that the API would answer with. Previews record no impression and queue no miss.

GET /preview/image?merchant=..&product=..&width=..&height=..[&theme=..][&fill=..&anchor=..]
serves one cell. The page reports its image load status in ``#status`` (``data-loaded``,
``data-failed``, ``data-total``) so a headless browser can check it (tests/serving/test_preview.py).

This module renders; the endpoints are in :mod:`.routers.preview`.
"""
from __future__ import annotations

import html
from typing import Optional
from urllib.parse import urlencode

from ..core.geometry import Placement
from ..core.manifests import IndexDocument
from ..core.serving_index import CanvasLookup

#: when a merchant has no configured placements
STANDARD_PLACEMENTS = [(300, 250), (728, 90), (160, 600), (320, 50), (970, 250), (1080, 1080), (1200, 628), (1080, 1920)]
CELL = 180  # px: the longest side of a thumbnail on the page

CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1d2330;background:#f3f4f7}
header{padding:18px 28px;background:#1d2330;color:#fff}
header h1{margin:0 0 4px;font-size:20px;font-weight:600}
header .meta{color:#b7bfcf;font-size:13px}
header .meta b{color:#fff;font-weight:600}
.summary{display:flex;gap:10px;margin-top:10px}
.pill{padding:3px 10px;border-radius:999px;font-size:12px;font-weight:600;background:#2f3747;color:#dfe5f0}
.pill.hit{background:#1f7a4d;color:#fff}.pill.miss{background:#b3361f;color:#fff}
main{padding:20px 28px}
table{border-collapse:separate;border-spacing:10px}
th{font-weight:600;font-size:13px;text-align:center;color:#3a4356;padding:4px}
th.row{text-align:right;white-space:nowrap;vertical-align:middle}
th.row small{display:block;color:#7b8496;font-weight:400}
td.cell{background:#fff;border-radius:10px;padding:10px;box-shadow:0 1px 3px rgba(20,30,50,.12);text-align:center;vertical-align:middle;
  width:%(w)dpx;height:%(h)dpx;position:relative;border:2px solid transparent}
td.cell img{max-width:%(img)dpx;max-height:%(img)dpx;display:block;margin:0 auto;border-radius:3px;box-shadow:0 0 0 1px #e3e6ec}
td.cell.miss{border:2px dashed #d2553e;background:#fff6f4}
.badge{position:absolute;top:6px;right:6px;font-size:10px;font-weight:700;letter-spacing:.04em;padding:2px 6px;border-radius:4px;color:#fff}
.badge.hit{background:#1f7a4d}.badge.miss{background:#b3361f}.badge.base{background:#56607a}
#status{margin:12px 0 0;color:#7b8496;font-size:12px}
"""

SCRIPT = """
(function(){
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.creative'));
  var st = document.getElementById('status');
  function update(){
    var ok = imgs.filter(function(i){return i.complete && i.naturalWidth > 0;}).length;
    var bad = imgs.filter(function(i){return i.complete && i.naturalWidth === 0;}).length;
    st.setAttribute('data-loaded', ok); st.setAttribute('data-failed', bad); st.setAttribute('data-total', imgs.length);
    st.textContent = 'images loaded ' + ok + ' / ' + imgs.length + (bad ? ', failed ' + bad : '');
  }
  imgs.forEach(function(i){ i.addEventListener('load', update); i.addEventListener('error', update); });
  window.addEventListener('load', update); update();
})();
"""


def preview_placements(creative_config, merchant: str) -> list[Placement]:
    if creative_config is not None:
        try:
            found = creative_config.placements(merchant)
            if found:
                return list(dict.fromkeys(found))
        except Exception:  # no config for this merchant: the standard set
            pass
    return [Placement(w, h) for w, h in STANDARD_PLACEMENTS]


def cell_status(doc: IndexDocument, product_id: str, placement: Placement, theme: str,
                lookup: Optional[CanvasLookup] = None) -> tuple[bool, str]:
    """(hit, canvas id) for one cell, from the index alone, as serving decides it (containment):
    the id of the canvas that serves it, or of the one a miss asks for."""
    lookup = lookup or CanvasLookup(doc)
    found = lookup.find(product_id, theme, placement)
    return (True, found.canvas_id) if found is not None else (False, lookup.requested_id(product_id, placement))


def render_preview(merchant: str, category: str, product_id: str, doc: IndexDocument,
                   placements: list[Placement]) -> tuple[str, int, int]:
    """The page's HTML, and the counts of hit and miss cells."""
    info = doc.products[product_id]
    themes = list(doc.prompts)
    lookup = CanvasLookup(doc)
    e = html.escape
    hits = misses = 0
    rows = []
    for p in placements:
        scale = min(1.0, (CELL - 24) / max(p.width, p.height))
        tw, th = max(1, round(p.width * scale)), max(1, round(p.height * scale))
        base_q = {"merchant": merchant, "product": product_id, "width": p.width, "height": p.height,
                  "fill": f"{p.fill:g}", "anchor": f"{p.anchor_x:g},{p.anchor_y:g}"}
        cells = [f'<td class="cell base"><span class="badge base">BASE</span>'
                 f'<img class="creative" width="{tw}" height="{th}" alt="positioned product, {p.width}x{p.height}" '
                 f'src="/preview/image?{e(urlencode(base_q))}"></td>']
        for t in themes:
            hit, bucket_id = cell_status(doc, product_id, p, t, lookup)
            hits += hit
            misses += not hit
            kind = "hit" if hit else "miss"
            label = "HIT" if hit else "MISS"
            title = f"{t} · {p.width}x{p.height} · bucket {bucket_id}" + ("" if hit else " · not generated yet: fallback shown")
            cells.append(f'<td class="cell {kind}" title="{e(title)}"><span class="badge {kind}">{label}</span>'
                         f'<img class="creative" width="{tw}" height="{th}" alt="{e(t)}, {p.width}x{p.height}" '
                         f'data-hit="{int(hit)}" src="/preview/image?{e(urlencode({**base_q, "theme": t}))}"></td>')
        rows.append(f'<tr><th class="row">{p.width}×{p.height}<small>fill {p.fill:g} · anchor {p.anchor_x:g},{p.anchor_y:g}'
                    f'</small></th>{"".join(cells)}</tr>')
    head = "".join(f"<th>{e(t)}</th>" for t in themes)
    css = CSS % {"w": CELL, "h": CELL, "img": CELL - 24}
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Preview · {e(merchant)} · {e(product_id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{css}</style></head>
<body><header><h1>{e(info.title or product_id)}</h1>
<div class="meta">merchant <b>{e(merchant)}</b> · category <b>{e(category)}</b> · product <b>{e(product_id)}</b>
 · {e(info.subcategory)} · {e(info.colour)} · index v{e(str('?' if doc.version is None else doc.version))}
 · generator {e(doc.generator_id)}</div>
<div class="summary"><span class="pill">{len(placements)} placements × {len(themes)} themes</span>
<span class="pill hit">{hits} ready</span><span class="pill miss">{misses} missing</span></div></header>
<main><table><thead><tr><th></th><th>positioned<br><small>(fallback)</small></th>{head}</tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<p id="status" data-loaded="0" data-failed="0" data-total="0">images loading…</p></main>
<script>{SCRIPT}</script></body></html>"""
    return page, hits, misses
