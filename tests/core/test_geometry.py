"""Bucketing properties (hypothesis): every placement is an exact crop of its bucket canvas."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from bggen_assets.core.compositing import canvas_pyramid, crop_placement
from bggen_assets.core.geometry import (
    Bucket,
    GeometryError,
    Placement,
    bucket_exponent,
    bucket_for,
    canvas_layout,
    crop_box,
    place_product,
    plan_buckets,
)

placements = st.builds(
    Placement,
    width=st.integers(20, 2000),
    height=st.integers(20, 2000),
    fill=st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
    anchor_x=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
    anchor_y=st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]),
)
bboxes = st.tuples(st.integers(8, 1500), st.integers(8, 1500))
ratios = st.sampled_from([1.1, 1.2, 1.5])


def served_product_box(bbox, placement, r, budget):
    """Render a canvas whose product region is white, serve the placement, measure where the
    product landed (pixels >= 50%) in the W x H output."""
    placed = place_product(*bbox, placement)
    layout = canvas_layout(bucket_for(placed, r), *bbox, budget)
    canvas = np.zeros((layout.height, layout.width), np.uint8)
    x, y, w, h = layout.product_box
    canvas[y : y + h, x : x + w] = 255
    out = np.asarray(crop_placement(canvas_pyramid(Image.fromarray(canvas)), layout, placed))
    ys, xs = np.nonzero(out >= 128)
    return out.shape, (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)), placed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(bbox=bboxes, placement=placements, r=ratios, budget=st.sampled_from([60_000, 250_000, 1_000_000]))
def test_every_placement_is_an_exact_crop_of_its_bucket_canvas(bbox, placement, r, budget):
    placed = place_product(*bbox, placement)
    layout = canvas_layout(bucket_for(placed, r), *bbox, budget)
    # Measured in pixels where the canvas has at least the placement's resolution (the canvas is
    # resampled down): a product edge then lands on the placed pixel boundary exactly.
    assume(layout.product_w >= placed.w and layout.product_h >= placed.h)
    shape, box, placed = served_product_box(bbox, placement, r, budget)
    assert shape == (placement.height, placement.width)  # exact size, so exact aspect ratio
    assert box == (placed.x, placed.y, placed.w, placed.h)  # product position exact to the pixel


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(bbox=bboxes, placement=placements, r=ratios, budget=st.sampled_from([20_000, 60_000]))
def test_an_upscaled_placement_keeps_the_product_on_its_box(bbox, placement, r, budget):
    """The canvas has less resolution than the placement (the bilinear warp path): the product's
    edges still land on the placed box, within one pixel. (A product under 4 canvas pixels across
    is a smear whose >= 50% extent is not its box, whatever the filter.)"""
    placed = place_product(*bbox, placement)
    layout = canvas_layout(bucket_for(placed, r), *bbox, budget)
    assume(layout.product_w < placed.w and layout.product_h < placed.h)
    assume(min(layout.product_w, layout.product_h) >= 4)
    shape, box, placed = served_product_box(bbox, placement, r, budget)
    assert shape == (placement.height, placement.width)
    assert all(abs(a - b) <= 1 for a, b in zip(box, (placed.x, placed.y, placed.w, placed.h))), (box, placed)


@settings(max_examples=300, deadline=None)
@given(bbox=bboxes, placement=placements, r=ratios, budget=st.sampled_from([20_000, 250_000, 1_000_000]))
def test_crop_box_maps_the_product_exactly_at_any_resolution(bbox, placement, r, budget):
    """Analytically, also when the canvas is upsampled: the crop box maps the canvas product box
    onto the placed box (to float precision), and stays inside the canvas."""
    placed = place_product(*bbox, placement)
    layout = canvas_layout(bucket_for(placed, r), *bbox, budget)
    x0, y0, x1, y1 = crop_box(layout, placed)
    sx, sy = placement.width / (x1 - x0), placement.height / (y1 - y0)
    assert abs((layout.product_x - x0) * sx - placed.x) < 1e-6
    assert abs((layout.product_y - y0) * sy - placed.y) < 1e-6
    assert abs(layout.product_w * sx - placed.w) < 1e-6 and abs(layout.product_h * sy - placed.h) < 1e-6
    assert 0 <= x0 < x1 <= layout.width and 0 <= y0 < y1 <= layout.height


@settings(max_examples=200, deadline=None)
@given(bbox=bboxes, placement=placements, r=ratios)
def test_bucket_canvas_padding_covers_the_placement(bbox, placement, r):
    placed = place_product(*bbox, placement)
    bucket = bucket_for(placed, r)
    for pad, extent, b in ((placed.pad_top, placed.h, bucket.top), (placed.pad_right, placed.w, bucket.right),
                           (placed.pad_bottom, placed.h, bucket.bottom), (placed.pad_left, placed.w, bucket.left)):
        assert (r**b - 1) * extent >= pad - 1e-9  # B_D = ceil(log_r((P_D + D) / D))
        assert b == 0 or (r ** (b - 1) - 1) * extent < pad  # ... and the smallest such exponent
    x0, y0, x1, y1 = crop_box(canvas_layout(bucket, *bbox, 100_000), placed)
    assert x0 >= 0 and y0 >= 0


@settings(max_examples=100, deadline=None)
@given(bbox=bboxes, base=st.lists(placements, min_size=1, max_size=12), extra=st.lists(placements, max_size=12), r=ratios)
def test_more_placements_never_fewer_buckets(bbox, base, extra, r):
    assert set(plan_buckets(*bbox, base, r)) <= set(plan_buckets(*bbox, base + extra, r))


def test_paper_formula_on_a_worked_example():
    # 200x100 product into 728x90 at fill 0.8 centred: s = 0.8 * min(3.64, 0.9) = 0.72
    placed = place_product(200, 100, Placement(728, 90, 0.8, 0.5, 0.5))
    assert (placed.w, placed.h) == (144, 72)
    assert (placed.pad_left, placed.pad_right, placed.pad_top, placed.pad_bottom) == (292, 292, 9, 9)
    b = bucket_for(placed, 1.2)
    # left: ceil(log_1.2((292 + 144) / 144)) = ceil(6.07) = 7; top: ceil(log_1.2(81 / 72)) = 1
    assert (b.top, b.right, b.bottom, b.left) == (1, 7, 1, 7)
    assert Bucket.from_id(b.id) == b


def test_exact_powers_do_not_round_up():
    assert bucket_exponent(44, 100, 1.2) == 2  # (44 + 100) / 100 = 1.44 = 1.2**2 exactly
    assert bucket_exponent(0, 100, 1.2) == 0


@pytest.mark.parametrize("kwargs", [dict(width=0, height=10), dict(width=10, height=99999), dict(width=10, height=10, fill=0),
                                    dict(width=10, height=10, fill=1.5), dict(width=10, height=10, anchor_x=-0.1)])
def test_bad_placements_are_refused_clearly(kwargs):
    with pytest.raises(GeometryError, match="placement"):
        Placement(**kwargs)


def test_bad_bucket_ids_and_ratios():
    with pytest.raises(GeometryError, match="not a bucket id"):
        Bucket.from_id("../../etc/passwd")
    with pytest.raises(GeometryError, match="r must be > 1"):
        bucket_for(place_product(10, 10, Placement(100, 100)), 1.0)


# -- additions for bucket covers (core/covers.py) ------------------------------------------------
from bggen_assets.core.geometry import (  # noqa: E402
    CoverCanvas,
    bucket_exponent_array,
    canvas_from_id,
    place_product_array,
)


@settings(max_examples=100, deadline=None)
@given(bbox=bboxes, ps=st.lists(placements, min_size=1, max_size=30), r=ratios)
def test_array_geometry_is_the_scalar_geometry(bbox, ps, r):
    boxes = place_product_array(*bbox, ps)
    pads, extents = boxes.sides()
    for i, p in enumerate(ps):
        placed = place_product(*bbox, p)
        assert (boxes.x[i], boxes.y[i], boxes.w[i], boxes.h[i], boxes.canvas_w[i], boxes.canvas_h[i]) == placed
        assert pads[i].tolist() == [placed.pad_top, placed.pad_right, placed.pad_bottom, placed.pad_left]
        assert list(bucket_exponent_array(pads[i], extents[i], r)) == list(bucket_for(placed, r)[:4])


def test_array_exponents_on_exact_powers():
    assert bucket_exponent_array([44, 0, 43, 45], [100, 100, 100, 100], 1.2).tolist() == [2, 0, 2, 3]


@settings(max_examples=200, deadline=None)
@given(bbox=bboxes, placement=placements, extra=st.tuples(*[st.integers(0, 300)] * 4),
       budget=st.sampled_from([20_000, 250_000, 1_000_000]))
def test_a_cover_canvas_that_dominates_a_placement_crops_it_exactly(bbox, placement, extra, budget):
    placed = place_product(*bbox, placement)
    sides = ((placed.pad_top, placed.h), (placed.pad_right, placed.w), (placed.pad_bottom, placed.h),
             (placed.pad_left, placed.w))
    tight = CoverCanvas(*(-(-1000 * p // d) + e for (p, d), e in zip(sides, extra)))
    layout = canvas_layout(tight, *bbox, budget)
    assert layout.product_x == -(-tight.left * layout.product_w // 1000)  # integer paddings, rounded up
    assert layout.width == layout.product_x + layout.product_w + -(-tight.right * layout.product_w // 1000)
    x0, y0, x1, y1 = crop_box(layout, placed)  # raises if the placement did not fit
    sx, sy = placement.width / (x1 - x0), placement.height / (y1 - y0)
    assert abs((layout.product_x - x0) * sx - placed.x) < 1e-6 and abs((layout.product_y - y0) * sy - placed.y) < 1e-6
    assert abs(layout.product_w * sx - placed.w) < 1e-6 and abs(layout.product_h * sy - placed.h) < 1e-6


@settings(max_examples=150, deadline=None)
@given(bbox=bboxes, placement=placements, r=ratios)
def test_the_cover_canvas_inside_a_bucket_serves_from_the_grid_canvas(bbox, placement, r):
    placed = place_product(*bbox, placement)
    bucket = bucket_for(placed, r)
    inside = CoverCanvas.inside_bucket(bucket)
    for v, e in zip(inside, bucket[:4]):
        assert v / 1000 <= r**e - 1 + 1e-12 and (v + 1) / 1000 > r**e - 1
    sides = ((placed.pad_top, placed.h), (placed.pad_right, placed.w), (placed.pad_bottom, placed.h),
             (placed.pad_left, placed.w))
    if all(v * d >= 1000 * p for v, (p, d) in zip(inside, sides)):  # the cover test says it fits
        crop_box(canvas_layout(bucket, *bbox, 100_000), placed)  # and it does, on the grid's canvas


def test_cover_canvas_ids_round_trip_and_stay_apart_from_bucket_ids():
    c = CoverCanvas(125, 3400, 0, 7)
    assert c.id == "c-t125-r3400-b0-l7" and CoverCanvas.from_id(c.id) == c and canvas_from_id(c.id) == c
    b = Bucket(1, 7, 1, 7, 1.2)
    assert canvas_from_id(b.id) == b
    for bad in ("c-t125-r3400-b0", "c-t0125-r1-b1-l1", "c-t-1-r1-b1-l1", "c-t1-r1-b1-l+1", "c-t1_0-r1-b1-l1",
                "c-r1-t1-b1-l1", "x-t1-r1-b1-l1", f"c-t{8192 * 1000 + 1}-r0-b0-l0", b.id, "../../etc/passwd"):
        with pytest.raises(GeometryError, match="not a cover canvas id"):
            CoverCanvas.from_id(bad)
    with pytest.raises(GeometryError, match="not a bucket id"):
        Bucket.from_id(c.id)
    with pytest.raises(GeometryError, match="not a bucket or cover canvas id"):
        canvas_from_id("r1.2-t1")
