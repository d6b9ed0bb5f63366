"""The held-back masks' picture (core/mask_sheet.py): the mask tinted over its photo, outlined."""
import numpy as np
import pytest

from bggen_assets.core.mask_sheet import CELL_H, OUTLINE, TINT, SheetItem, mask_overlay, mask_sheet


def photo_and_mask(w=400, h=300):
    photo = np.full((h, w, 3), 200, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[100:200, 120:300] = True
    return photo, mask


def test_the_overlay_tints_the_mask_and_outlines_its_boundary_only():
    photo, mask = photo_and_mask()
    out = mask_overlay(photo, mask, opacity=0.5, outline_px=1)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.array_equal(out[150, 200], np.rint(0.5 * np.array(TINT) + 100).astype(np.uint8))  # inside: tinted
    assert np.array_equal(out[20, 20], photo[20, 20])  # far outside: the photo
    assert np.array_equal(out[100, 200], OUTLINE) and np.array_equal(out[99, 200], OUTLINE)  # the boundary
    with pytest.raises(ValueError, match="mask is 10x10, image is 400x300"):
        mask_overlay(photo, np.zeros((10, 10), bool))


def test_the_sheet_has_a_row_per_mask_with_both_pictures():
    photo, mask = photo_and_mask()
    big_photo, big_mask = photo_and_mask(1600, 1200)
    sheet = mask_sheet([SheetItem("A\nconfidence 0.31", photo, mask),
                        SheetItem("B\nconfidence 0.44", np.dstack([big_photo, np.full(big_mask.shape, 255, np.uint8)]),
                                  big_mask)], title="m/c: held back")
    assert sheet.ndim == 3 and sheet.shape[0] >= 2 * CELL_H
    tinted = (sheet[:, :, 0] > 150) & (sheet[:, :, 1] < 150)
    rows = np.nonzero(tinted.any(axis=1))[0]
    assert rows.min() < sheet.shape[0] / 2 < rows.max()  # a tinted mask in each of the two rows
    with pytest.raises(ValueError, match="at least one item"):
        mask_sheet([])
