"""Decoding catalog images into the in-memory convention (uint8 RGB ``H×W×3`` or RGBA ``H×W×4``).

Real merchant feeds contain grayscale JPEGs, CMYK JPEGs (often Adobe-inverted, sometimes
with an ICC profile), 16-bit PNGs, palette PNGs with ``tRNS`` transparency, camera images that
rely on the EXIF orientation tag, tiny thumbnails, huge scans and the occasional hostile file
(a "decompression bomb": small file, enormous header dimensions).  :func:`decode_image`
turns all of them into one array format or raises :class:`ImageDecodeError` with a message
that says what is wrong.  The pixel count is read from the header and checked *before* any
pixel data is decoded, so a bomb costs microseconds and no memory.

HEIC/HEIF (phone photos in feeds) is decoded through pi-heif's Pillow opener, registered when
this module is imported: Pillow alone refuses those files as "not an image".

The pipeline's own images (masks, cutouts, canvases) are PNGs written and read back with
:func:`encode_png` / :func:`decode_png` (OpenCV; trusted input, so none of the guards above).
"""
from __future__ import annotations

import hashlib
import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pi_heif import register_heif_opener

# Pillow then opens HEIC/HEIF through libheif (pi-heif's decoder); the header is read lazily like
# any Pillow format, so the pixel guard below still runs before any pixel is decoded.
register_heif_opener()

__all__ = ["ImageDecodeError", "image_sha256", "decode_image", "DEFAULT_MAX_PIXELS", "encode_png", "decode_png"]

DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes cannot be turned into an image; the message says why."""


def image_sha256(data: bytes) -> str:
    """Hex SHA-256 of the file bytes (the content hash masks are stored under)."""
    return hashlib.sha256(data).hexdigest()


def _to_uint8_from_wide(arr: np.ndarray) -> np.ndarray:
    """Scale a 16/32-bit integer or float single-channel array to uint8."""
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        hi = float(finite.max()) if finite.size else 1.0
        scale = 255.0 if hi <= 1.0 else (255.0 / 65535.0 if hi > 255.0 else 1.0)
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    arr = arr.astype(np.int64)
    hi = int(arr.max()) if arr.size else 0
    if hi > 255:  # 16-bit data (PNG "I;16" / "I"): 0..65535 -> 0..255
        return np.clip((arr + 128) // 257, 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK -> RGB, through the embedded ICC profile when there is one and it works."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out
        except Exception:  # a broken or unsupported profile: fall back to the naive formula
            pass
    return im.convert("RGB")


def _alpha_is_real(alpha: np.ndarray) -> bool:
    """A constant alpha plane (all opaque, or all one value) carries no shape information."""
    return alpha.size > 0 and int(alpha.min()) != int(alpha.max())


def _decode_pil(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P" or mode == "PA":
        has_trns = "transparency" in im.info or mode == "PA"
        im = im.convert("RGBA" if has_trns else "RGB")
        mode = im.mode
    if mode in ("1", "L"):
        a = np.asarray(im.convert("L"), dtype=np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "LA" or mode == "La":
        if mode == "La":
            im = im.convert("LA")
        a = np.asarray(im, dtype=np.uint8)
        lum, alpha = a[:, :, 0], a[:, :, 1]
        rgb = np.repeat(lum[:, :, None], 3, axis=2)
        if _alpha_is_real(alpha):
            return np.ascontiguousarray(np.dstack([rgb, alpha]))
        return np.ascontiguousarray(rgb)
    if mode.startswith("I") or mode == "F":  # 16-bit / 32-bit grayscale
        a = np.asarray(im)
        if a.ndim == 3:  # e.g. "I;16" variants that come back with a channel axis
            a = a[:, :, 0]
        g = _to_uint8_from_wide(a)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "CMYK":
        return np.ascontiguousarray(np.asarray(_cmyk_to_rgb(im), dtype=np.uint8))
    if mode in ("RGBA", "RGBa"):
        if mode == "RGBa":
            im = im.convert("RGBA")
        a = np.asarray(im, dtype=np.uint8)
        if _alpha_is_real(a[:, :, 3]):
            return np.ascontiguousarray(a)
        return np.ascontiguousarray(a[:, :, :3])
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    # YCbCr, LAB, HSV, RGBX, 16-bit RGB variants...: let Pillow convert.
    try:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except Exception as exc:  # pragma: no cover - depends on Pillow's converters
        raise ImageDecodeError(f"unsupported image mode {mode!r}: {exc}") from exc


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image file bytes to uint8 RGB ``H×W×3``, or RGBA ``H×W×4`` when the file has a
    real (non-constant) alpha channel.

    Grayscale, 16-bit, palette (with ``tRNS``), CMYK (ICC profile honoured when present) and
    EXIF-rotated images are normalised; multi-frame files give their first frame.
    Raises :class:`ImageDecodeError` when the bytes are not an image, are truncated, declare
    more than ``max_pixels`` pixels (checked from the header, before decoding) or use a mode
    that cannot be converted.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"image data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageDecodeError("not an image: the data is empty (0 bytes)")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")

    with warnings.catch_warnings():
        # Pillow's own guard warns above Image.MAX_IMAGE_PIXELS and raises above twice that;
        # ours (max_pixels) runs first and decides, so its warning is noise here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(
                f"too many pixels (decompression bomb guard): {exc}; limit is {max_pixels:,} pixels"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(
                f"not an image: no known image format recognised in {len(data)} bytes "
                f"(starts with {data[:8]!r})"
            ) from exc
        except Exception as exc:
            raise ImageDecodeError(
                f"not a readable image: truncated or broken header ({type(exc).__name__}: {exc}, "
                f"{len(data)} bytes)"
            ) from exc

        try:
            w, h = im.size
            fmt = im.format or "image"
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"{fmt} header declares an empty image ({w}x{h})")
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"too many pixels (decompression bomb guard): {fmt} header declares "
                    f"{w}x{h} = {w * h:,} pixels, limit is {max_pixels:,}"
                )
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            # Truncated files must fail, not come back half grey.
            prev = ImageFile.LOAD_TRUNCATED_IMAGES
            if prev:  # pragma: no cover - someone flipped the global
                ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                im.load()
            except Image.DecompressionBombError as exc:
                raise ImageDecodeError(f"too many pixels (decompression bomb guard): {exc}") from exc
            except (OSError, SyntaxError, EOFError) as exc:
                msg = str(exc)
                if "truncated" in msg or isinstance(exc, EOFError) or "broken data stream" in msg:
                    raise ImageDecodeError(
                        f"truncated {fmt} file: {msg or type(exc).__name__} ({len(data)} bytes)"
                    ) from exc
                raise ImageDecodeError(f"corrupt {fmt} file: {type(exc).__name__}: {msg}") from exc
            except ValueError as exc:  # e.g. Pillow's decompressed-text-chunk size guard
                raise ImageDecodeError(f"corrupt {fmt} file: {exc}") from exc
            finally:
                if prev:  # pragma: no cover
                    ImageFile.LOAD_TRUNCATED_IMAGES = prev

            try:
                im = ImageOps.exif_transpose(im) or im
            except Exception:
                pass  # a malformed EXIF block must not lose an otherwise good image
            arr = _decode_pil(im)
        except ImageDecodeError:
            raise
        except MemoryError as exc:
            raise ImageDecodeError(f"too many pixels: out of memory decoding {w}x{h}") from exc
        except Exception as exc:
            raise ImageDecodeError(
                f"could not decode {fmt} (mode {getattr(im, 'mode', '?')}): {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            try:
                im.close()
            except Exception:
                pass

    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageDecodeError(f"decoder produced an unexpected array {arr.dtype} {arr.shape}")
    return arr


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """RGB ``H×W×3``, RGBA ``H×W×4`` or single-channel ``H×W`` uint8 -> PNG bytes."""
    if image.ndim == 3 and image.shape[2] == 4:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    elif image.ndim == 3:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    else:
        bgr = image
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """A PNG the pipeline stored -> RGB / RGBA / single-channel uint8 (``flags`` as in cv2.imdecode)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise ImageDecodeError("stored PNG could not be decoded")
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    if img.ndim == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


# -- what a served image is (IPTC digital source type, in XMP) ------------------------------------
IPTC_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
#: a product photo on a background a trained model generated (Google Merchant Center asks that
#: AI-generated images keep this), and a photo composited with other non-generated imagery
TRAINED_COMPOSITE = IPTC_SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"
COMPOSITE = IPTC_SOURCE_TYPES + "composite"


def digital_source_xmp(source_type: str) -> bytes:
    """An XMP packet naming the image's IPTC ``Iptc4xmpExt:DigitalSourceType`` (a few hundred
    bytes; build it once per source type: serving_xmp)."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
        f'<Iptc4xmpExt:DigitalSourceType>{source_type}</Iptc4xmpExt:DigitalSourceType>'
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
    ).encode()


_PACKETS = {kind: digital_source_xmp(kind) for kind in (TRAINED_COMPOSITE, COMPOSITE)}


def serving_xmp(generator_id: str) -> bytes:
    """The XMP of a creative whose background came from this generator (an index's generator_id):
    a diffusion model's is trained algorithmic media, the template's (and a plain fallback) a composite."""
    return _PACKETS[TRAINED_COMPOSITE if generator_id.startswith("diffusion") else COMPOSITE]


def composite_xmp() -> bytes:
    """The XMP of a creative with no generated background (the positioned product, the fallback)."""
    return _PACKETS[COMPOSITE]
