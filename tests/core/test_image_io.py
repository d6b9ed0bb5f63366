"""Decoding the images real feeds contain, and refusing the ones that would hurt."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from bggen_assets.core.image_io import ImageDecodeError, decode_image, decode_png, encode_png, image_sha256


def _enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(h=32, w=48, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, w)[None, :]
    base[..., 1] = np.linspace(0, 255, h)[:, None]
    base[..., 2] = rng.integers(0, 256, (h, w))
    return base


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w×h but whose data is a few bytes (a decompression bomb)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_sha256_is_hex_digest_of_bytes():
    assert image_sha256(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_rgb_png_roundtrip():
    a = _rgb()
    out = decode_image(_enc(Image.fromarray(a), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"hello, this is not an image", "not an image"),
    (b"<html><body>404</body></html>", "not an image"),
])
def test_not_an_image(data, needle):
    with pytest.raises(ImageDecodeError, match=needle):
        decode_image(data)


def test_non_bytes_input():
    with pytest.raises(ImageDecodeError, match="bytes"):
        decode_image("a string")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    data = _enc(Image.fromarray(_rgb(200, 300)), fmt)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_rejected_from_header_fast():
    bomb = _png_header_only(60_000, 60_000)           # 3.6 G pixels declared, ~100 bytes
    assert len(bomb) < 200
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20  # refused from the header: the 3.6 G pixels were never allocated


def test_pillow_bomb_guard_gives_clear_error_too():
    # our limit raised above Pillow's own: Pillow's DecompressionBombError becomes ours
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(_png_header_only(60_000, 60_000), max_pixels=10**12)


def test_huge_over_limit_and_large_under_limit():
    big = _enc(Image.new("RGB", (3000, 2000), (200, 10, 10)), "PNG")
    with pytest.raises(ImageDecodeError, match=r"3000x2000 = 6,000,000 pixels, limit is 1,000,000"):
        decode_image(big, max_pixels=1_000_000)
    out = decode_image(big)
    assert out.shape == (2000, 3000, 3) and tuple(out[5, 5]) == (200, 10, 10)


def test_tiny_images():
    for size in [(1, 1), (1, 5), (3, 2)]:
        out = decode_image(_enc(Image.new("RGB", size, (1, 2, 3)), "PNG"))
        assert out.shape == (size[1], size[0], 3)
        assert tuple(out[0, 0]) == (1, 2, 3)


def test_grayscale_jpeg_and_png():
    g = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(30, 40)
    for fmt in ("PNG", "JPEG"):
        out = decode_image(_enc(Image.fromarray(g, "L"), fmt))
        assert out.shape == (30, 40, 3)
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    out = decode_image(_enc(Image.fromarray(g, "L"), "PNG"))
    np.testing.assert_array_equal(out[..., 0], g)
    # 1-bit
    out = decode_image(_enc(Image.fromarray(g > 128), "PNG"))
    assert set(np.unique(out)) <= {0, 255}


def test_cmyk_jpeg():
    a = np.zeros((32, 32, 3), np.uint8)
    a[:, :16] = (220, 30, 30)
    a[:, 16:] = (30, 60, 200)
    data = _enc(Image.fromarray(a).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert out.shape == (32, 32, 3)
    assert np.abs(out[8, 4].astype(int) - (220, 30, 30)).max() < 25
    assert np.abs(out[8, 28].astype(int) - (30, 60, 200)).max() < 25


def test_16bit_grayscale_png():
    g16 = (np.linspace(0, 65535, 64 * 16).reshape(16, 64)).astype(np.uint16)
    data = _enc(Image.fromarray(g16), "PNG")
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.shape == (16, 64, 3)
    np.testing.assert_allclose(out[..., 0].astype(float), g16 / 257.0, atol=1.0)


def test_16bit_rgb_png():
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    ok, buf = cv2.imencode(".png", rgb16[:, :, ::-1])
    assert ok
    out = decode_image(buf.tobytes())
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_allclose(out.astype(float), rgb16 / 257.0, atol=1.0)


def test_palette_png_without_and_with_transparency():
    a = _rgb(24, 24)
    p = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = decode_image(_enc(p, "PNG"))
    assert out.shape == (24, 24, 3)
    # tRNS: palette index 0 transparent
    idx = np.zeros((24, 24), np.uint8)
    idx[6:18, 6:18] = 1
    p = Image.fromarray(idx, "P")
    p.putpalette([255, 255, 255, 200, 0, 0] + [0] * (254 * 3))
    out = decode_image(_enc(p, "PNG", transparency=0))
    assert out.shape == (24, 24, 4)
    assert (out[..., 3][idx == 0] == 0).all() and (out[..., 3][idx == 1] == 255).all()
    assert tuple(out[10, 10, :3]) == (200, 0, 0)


def test_rgba_real_and_trivial_alpha():
    a = np.dstack([_rgb(20, 20), np.full((20, 20), 255, np.uint8)])
    assert decode_image(_enc(Image.fromarray(a, "RGBA"), "PNG")).shape == (20, 20, 3)
    a[5:10, 5:10, 3] = 0
    out = decode_image(_enc(Image.fromarray(a, "RGBA"), "PNG"))
    assert out.shape == (20, 20, 4) and out[7, 7, 3] == 0
    la = Image.fromarray(np.dstack([np.full((8, 8), 90, np.uint8), np.eye(8, dtype=np.uint8) * 255]), "LA")
    out = decode_image(_enc(la, "PNG"))
    assert out.shape == (8, 8, 4) and out[0, 0, 3] == 255 and out[0, 1, 3] == 0


@pytest.mark.parametrize("orientation,expected_corner", [
    (1, (0, 0)),    # as stored
    (3, (-1, -1)),  # rotated 180
    (6, (0, -1)),   # rotate 90 CW to display: stored top-left ends top-right
    (8, (-1, 0)),   # rotate 90 CCW: stored top-left ends bottom-left
])
def test_exif_orientation(orientation, expected_corner):
    a = np.full((20, 40, 3), 255, np.uint8)   # stored 40 wide, 20 high
    a[:4, :4] = (255, 0, 0)                   # red marker at stored top-left
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    out = decode_image(_enc(im, "JPEG", exif=exif, quality=95))
    if orientation in (6, 8):
        assert out.shape[:2] == (40, 20)
    else:
        assert out.shape[:2] == (20, 40)
    y = 1 if expected_corner[0] == 0 else out.shape[0] - 2
    x = 1 if expected_corner[1] == 0 else out.shape[1] - 2
    r, g, b = (int(v) for v in out[y, x])
    assert r > 200 and g < 80 and b < 80, (orientation, out[y, x])


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert out.shape[:2] == (10, 10) and out[0, 0, 0] > 200


@pytest.mark.parametrize("channels", [None, 3, 4])
def test_the_pipelines_own_pngs_round_trip_exactly(channels):
    rgb = _rgb(31, 47, seed=3)
    image = {None: rgb[..., 0], 3: rgb, 4: np.dstack([rgb, rgb[..., 1]])}[channels]
    data = encode_png(image)
    assert data.startswith(b"\x89PNG")
    # channel order as the in-memory convention says (RGB / RGBA), checked against Pillow's reading
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
    assert np.array_equal(decode_png(data), image)
    assert np.array_equal(decode_png(encode_png(image, compression=9)), image)
    if channels:
        assert np.array_equal(decode_png(data, cv2.IMREAD_COLOR), rgb)
        assert decode_png(data, cv2.IMREAD_GRAYSCALE).shape == rgb.shape[:2]


def test_a_stored_png_that_does_not_decode_is_an_image_error():
    with pytest.raises(ImageDecodeError, match="stored PNG could not be decoded"):
        decode_png(b"this is not a PNG")


def heic_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    """A HEIC file of the image, written with pillow-heif's HEVC encoder (pi-heif only decodes)."""
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_bytes("RGB", (rgb.shape[1], rgb.shape[0]), np.ascontiguousarray(rgb).tobytes()).save(
        buf, quality=quality)
    return buf.getvalue()


def test_heic_is_decoded_through_the_registered_opener():
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)
    rgb[:, 32:] = (20, 40, 220)
    data = heic_bytes(rgb)
    assert data[4:12] == b"ftypheic"  # a real HEIC container, not a PNG renamed
    out = decode_image(data)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    # lossy HEVC: close to the source away from the colour edge
    assert np.abs(out[:, :28].astype(int) - (200, 30, 30)).max() <= 12
    assert np.abs(out[:, 36:].astype(int) - (20, 40, 220)).max() <= 12
    with pytest.raises(ImageDecodeError, match="decompression bomb guard"):
        decode_image(data, max_pixels=1000)  # the header's size is checked before decoding
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])  # a cut HEIC is refused, not returned half grey
