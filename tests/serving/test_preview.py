"""The preview page: HTML over real HTTP, then loaded in headless Chromium (Debian's `chromium`,
installed by scripts/install_chromium.sh): a screenshot whose grid cells are not blank, and the
page's own report that every image loaded."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from bggen_assets.core.geometry import Placement

from test_api import MERCHANT, LiveServer, bandit_only, find_miss_size, make_app, world  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=10000"]


@pytest.fixture
def preview_server(world, bandit_only):  # noqa: F811
    app = make_app(world, bandit_only)
    with LiveServer(app) as srv:
        yield srv


# ``sizes=WxH`` on /preview places the product with Placement's defaults
PREVIEW_SIZE_PLACEMENT = {"fill": Placement(1, 1).fill, "anchor": (Placement(1, 1).anchor_x, Placement(1, 1).anchor_y)}


def _chromium(tmp_path, *args):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=90)


def test_preview_html_marks_hits_and_misses(preview_server, world):  # noqa: F811
    import httpx

    pid = sorted(world["doc"].products)[0]
    w, h = find_miss_size(world["doc"], pid, **PREVIEW_SIZE_PLACEMENT)
    with httpx.Client(base_url=preview_server.url) as c:
        r = c.get("/preview", params={"merchant": MERCHANT, "product": pid, "sizes": f"{w}x{h}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        n_themes = len(world["doc"].prompts)
        hits, misses = int(r.headers["x-preview-hits"]), int(r.headers["x-preview-misses"])
        assert hits > 0 and misses >= 1
        assert r.text.count('class="cell hit"') == hits and r.text.count('class="cell miss"') == misses
        rows = r.text.count('<th class="row">')
        assert hits + misses == rows * n_themes
        # every image URL on the page answers an image
        srcs = re.findall(r'src="(/preview/image\?[^"]+)"', r.text)
        assert len(srcs) == rows * (n_themes + 1)
        for src in srcs[:: max(1, len(srcs) // 12)]:
            img = c.get(src.replace("&amp;", "&"))
            assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg", img.text
        # previews queue no miss and log no impression
        preview_server.app.state.serving.flush()
        from resources.miss_queue import DbMissQueue

        assert DbMissQueue(metadata_db=world["metadata_db"]).pending() == []
        assert c.get("/health").json()["served"] == {"hit": 0, "miss": 0}
        # bad input is 4xx
        assert c.get("/preview", params={"merchant": MERCHANT, "product": "nope"}).status_code == 404
        assert c.get("/preview", params={"merchant": "Bad Name", "product": pid}).status_code == 400
        assert c.get("/preview", params={"merchant": MERCHANT, "product": pid, "sizes": "9999x1"}).status_code == 400
        assert c.get("/preview/image", params={"merchant": MERCHANT, "product": pid, "width": 300, "height": 250,
                                               "theme": "no-such-theme"}).status_code == 404


def test_preview_renders_in_headless_chromium(preview_server, world, tmp_path):  # noqa: F811
    if CHROMIUM is None:  # make test installs it: a missing browser is a failure, never a skip
        pytest.fail("chromium is not installed: run scripts/install_chromium.sh (as root), as `make test` does")
    pid = sorted(world["doc"].products)[0]
    w, h = find_miss_size(world["doc"], pid, **PREVIEW_SIZE_PLACEMENT)
    url = f"{preview_server.url}/preview?merchant={MERCHANT}&product={pid}&sizes={w}x{h}"
    shot = tmp_path / "preview.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1100,1300", url)
    assert shot.exists(), res.stderr[-2000:]
    # the same page with images disabled: where the two differ, images were drawn
    blank = tmp_path / "blank.png"
    _chromium(tmp_path, f"--screenshot={blank}", "--window-size=1100,1300", "--blink-settings=imagesEnabled=false", url)
    a = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    b = np.asarray(Image.open(blank).convert("RGB")).astype(np.int16)
    assert a.shape == b.shape == (1300, 1100, 3)
    drawn = np.abs(a - b).sum(-1) > 30
    assert drawn.mean() > 0.05, f"images barely drawn; screenshot at {shot}"
    # one band of drawn pixels per grid column: positioned + every theme
    xs = np.flatnonzero(drawn.sum(0) > 20)
    bands = [band for band in np.split(xs, np.flatnonzero(np.diff(xs) > 8) + 1) if band[-1] - band[0] > 100]
    assert len(bands) == len(world["doc"].prompts) + 1, [(int(band[0]), int(band[-1])) for band in bands]
    # the page's own report: every <img> decoded (naturalWidth > 0)
    dom = _chromium(tmp_path, "--dump-dom", url)
    m = re.search(r'id="status" data-loaded="(\d+)" data-failed="(\d+)" data-total="(\d+)"', dom.stdout)
    assert m, dom.stdout[-1500:] + dom.stderr[-1500:]
    loaded, failed, total = map(int, m.groups())
    assert total > 10 and loaded == total and failed == 0
