"""The YOLO masking logic of core/yolo_masking.py on instances given as arrays and as a real
ultralytics ``Results``: which instance is the product, its refined boundary, the fallback.
(Random YOLO weights find nothing, so the model's own path is tested in tests/core/test_masking.py.)"""
import cv2
import numpy as np
import torch

from bggen_assets.core.yolo_masking import (
    YOLO_WORK_SIDE,
    Instances,
    instances_from_result,
    mask_from_instances,
    yolo_mask,
)


def _scene(h=600, w=800):
    """A red bottle-like product on a near-white studio background, and its true mask."""
    truth = np.zeros((h, w), np.uint8)
    cv2.rectangle(truth, (w // 2 - 60, h // 2 - 120), (w // 2 + 60, h // 2 + 150), 1, -1)
    cv2.ellipse(truth, (w // 2, h // 2 - 120), (60, 40), 0, 180, 360, 1, -1)
    truth = truth.astype(bool)
    img = np.full((h, w, 3), 246, np.uint8)
    img[truth] = (190, 35, 40)
    return img, truth


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def _instances(truth):
    """What a detector returns on the scene: a background-like region (touches all borders), a
    loose mask of the product (6 px too big all round), and a speck in a corner."""
    h, w = truth.shape
    loose = cv2.dilate(truth.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))) > 0
    speck = np.zeros((h, w), bool)
    speck[5:9, 5:9] = True
    return Instances(masks=np.stack([~loose, loose, speck]), confidences=np.array([0.9, 0.6, 0.95]),
                     class_ids=np.array([60, 39, 0]), class_names={0: "person", 39: "bottle", 60: "table"})


def test_the_product_instance_is_chosen_and_its_loose_boundary_tightened():
    img, truth = _scene()
    inst = _instances(truth)
    res = mask_from_instances(img, img, inst, confidence=0.25)
    assert res.method == "yolo" and res.score == 0.6
    assert res.reason.startswith("yolo instance 2 of 3: class 39 (bottle), conf 0.60")
    assert "grabcut refined" in res.reason
    # GrabCut takes back part of the loose band (measured: IoU 0.879 -> 0.920) and no product pixel
    assert _iou(inst.masks[1], truth) < 0.89
    assert _iou(res.mask, truth) > 0.91
    assert not (truth & ~res.mask).any()
    x, y, w, h = res.bbox
    assert res.mask.shape == truth.shape and (w, h) == (res.mask.any(0).sum(), res.mask.any(1).sum())


def test_instances_on_a_downscaled_copy_give_a_mask_at_the_image_size():
    img, truth = _scene(1500, 2000)  # long side over YOLO_WORK_SIDE: the model runs on a smaller copy
    s = YOLO_WORK_SIDE / 2000
    work = cv2.resize(img, (round(2000 * s), round(1500 * s)), interpolation=cv2.INTER_AREA)
    work_truth = cv2.resize(truth.astype(np.uint8), work.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    res = mask_from_instances(img, work, _instances(work_truth), confidence=0.25)
    assert res.method == "yolo" and res.mask.shape == truth.shape
    assert _iou(res.mask, truth) > 0.9  # measured 0.916


def test_no_usable_instance_falls_back_to_the_classical_masker_and_says_why():
    img, truth = _scene()
    inst = _instances(truth)
    only_bad = Instances(inst.masks[[0, 2]], inst.confidences[[0, 2]], inst.class_ids[[0, 2]], inst.class_names)
    res = mask_from_instances(img, img, only_bad, confidence=0.25)
    assert res.method == "classical"
    assert res.reason.startswith("yolo found 2 instance(s) above conf 0.25, none usable "
                                 "(#1 touches 4 borders; #2 covers 0.0%); classical fallback: ")
    assert _iou(res.mask, truth) > 0.97
    none = mask_from_instances(img, img, Instances(np.zeros((0, 600, 800), bool), np.zeros(0), np.zeros(0, int)),
                               confidence=0.4)
    assert none.method == "classical" and none.reason.startswith("yolo found no instance above conf 0.4; ")


def test_an_ultralytics_result_becomes_instances_at_the_work_size():
    from ultralytics.engine.results import Results

    img, truth = _scene()
    inst = _instances(truth)
    boxes = torch.tensor([[0, 0, 800, 600, 0.9, 60], [330, 140, 470, 460, 0.6, 39], [5, 5, 9, 9, 0.95, 0]])
    full = torch.from_numpy(inst.masks.astype(np.float32))
    got = instances_from_result(Results(img[:, :, ::-1], path="scene.png", names=inst.class_names,
                                        boxes=boxes, masks=full), 800, 600)
    assert got.masks.dtype == bool and np.array_equal(got.masks, inst.masks)
    assert np.allclose(got.confidences, [0.9, 0.6, 0.95]) and got.class_ids.tolist() == [60, 39, 0]
    assert got.class_names[39] == "bottle"
    # masks at half resolution, as a model without retina masks returns them: brought to the work size
    half = torch.from_numpy(np.stack([cv2.resize(m.astype(np.uint8), (400, 300), interpolation=cv2.INTER_NEAREST)
                                      for m in inst.masks]).astype(np.float32))
    got = instances_from_result(Results(img[:, :, ::-1], path="scene.png", names=inst.class_names,
                                        boxes=boxes, masks=half), 800, 600)
    assert got.masks.shape == (3, 600, 800) and _iou(got.masks[1], inst.masks[1]) > 0.98
    empty = instances_from_result(Results(img, path="scene.png", names={0: "person"}), 800, 600)
    assert len(empty) == 0 and empty.masks.shape == (0, 600, 800)


def test_a_real_alpha_channel_is_the_mask_without_running_the_model():
    img, truth = _scene()
    rgba = np.dstack([img, np.where(truth, 255, 0).astype(np.uint8)])
    res = yolo_mask(rgba, model=None)  # no model needed: the alpha channel answers first
    assert res.method == "alpha" and np.array_equal(res.mask, truth)
