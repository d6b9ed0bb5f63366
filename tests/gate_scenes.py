"""Constructed "generated" images for the quality gates: a bottle-shaped product on a plain or busy
background, the same product extended (object expansion), and its contour drawn again just outside
it (edge leakage). Used by tests/core/test_quality_gates.py and printed by benchmarks/diffusion.py."""
import cv2
import numpy as np

H, W = 192, 256
PRODUCT = (30, 90, 200)


def bottle_mask(extend_down: int = 0) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    cv2.rectangle(m, (108, 70), (148, 130 + extend_down), 1, -1)  # body
    cv2.rectangle(m, (120, 45), (136, 70), 1, -1)  # neck
    cv2.ellipse(m, (128, 130 + extend_down), (20, 8), 0, 0, 360, 1, -1)  # rounded base
    return m.astype(bool)


MASK = bottle_mask()


def background(kind: str = "plain") -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    if kind == "plain":  # a soft studio gradient
        v = 225 + 20 * yy / H
        return np.repeat(v[:, :, None], 3, axis=2).astype(np.uint8)
    rng = np.random.default_rng(0)  # busy texture: random blocks, edges in every direction
    blocks = rng.integers(60, 220, size=(H // 6 + 1, W // 6 + 1, 3)).astype(np.uint8)
    return cv2.resize(blocks, (W, H), interpolation=cv2.INTER_NEAREST)[:H, :W]


def scene(product_mask=MASK, bg="plain") -> np.ndarray:
    img = background(bg)
    img[product_mask] = PRODUCT
    img[95:105, 110:146] = (240, 240, 240)  # a label on the product
    return img


def halo(img: np.ndarray, offset: int = 3, thickness: int = 1) -> np.ndarray:
    """Draw the product's contour again ``offset`` px outside it (ControlNet edge leakage)."""
    out = img.copy()
    grown = cv2.dilate(MASK.astype(np.uint8), cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (2 * offset + 1, 2 * offset + 1)))
    cs, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, cs, -1, (20, 20, 20), thickness)
    return out


def left_half_halo(offset: int = 3) -> np.ndarray:
    """A halo along the left half of the product only."""
    img = halo(scene(), offset=offset)
    img[:, W // 2:] = scene()[:, W // 2:]
    return img
